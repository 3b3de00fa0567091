"""Every benchmark script starts: its imports resolve (benchmarks/ and the packages share names such as
`training`) and its arguments parse. What each measures is run by hand (README); here only that it can run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


SCRIPTS = [
    "serving.py",
    "cpu_limits.py",
    "training.py",
    "quality.py",
    "gpu.py",
    "batch_scoring.py",
    "prior.py",
    "gap.py",
    "head_limit.py",
    "export.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_script_imports_and_prints_its_usage(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout


def test_cpu_hogs_run_for_the_block_and_are_gone_after_it_even_when_it_raises() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from hogs import cpu_hogs
    finally:
        sys.path.remove(str(BENCHMARKS))
    seen: set[int] = set()
    with pytest.raises(RuntimeError), cpu_hogs(2):
        seen = _hogs()
        raise RuntimeError("the block failed")
    assert len(seen) == 2 and not seen & _hogs()


def _hogs() -> set[int]:
    """This process's children spinning in `while True: pass` (other tests' servers are left out)."""
    found = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "while True: pass"], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


def test_compare_checks_out_a_revision_and_removes_it_afterwards(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from servers import checkout
    finally:
        sys.path.remove(str(BENCHMARKS))
    with checkout("HEAD", tmp_path) as folder:
        assert folder is not None and (folder / "service" / "batcher.py").is_file()
    assert not folder.exists()
    listed = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=BENCHMARKS.parent)
    assert str(folder) not in listed.stdout
    with checkout(None, tmp_path) as nothing:
        assert nothing is None
