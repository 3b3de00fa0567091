"""benchmarks/gpu.py on a machine without CUDA: one line saying what is missing, exit 0, nothing measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run the benchmark")
def test_gpu_benchmark_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu.py: no usable CUDA here"), done.stdout
    assert "torch" in lines[0] or "onnxruntime" in lines[0]  # it names which side lacks CUDA
    assert not out.exists()
