"""A .npy (memory-mapped) or .parquet (streamed by row groups) larger than the memory budget trains without
being loaded whole."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Runs vae-train and samples the process's anonymous resident memory (RssAnon: heap, not the file's pages in the
# page cache, which the kernel can drop at will) every 20 ms; prints the peak.
WRAPPER = """
import sys, threading, time
peak = [0]
def sample():
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
from training.cli import main
code = main(sys.argv[1:])
print("PEAK_ANON_KIB", peak[0])
sys.exit(code)
"""
ARGS = [
    "--decorrelate",  # one training, not both (--decorrelate auto): this test is about something else
    "off",
    "--refine-steps",  # the refinement reads memory-mapped rows too: a few steps of it here, under the same budget
    "5",
    "--epochs",
    "1",
    "--warmup-epochs",
    "0",
    # the refinement's step holds about ten rows per batch row in its autograd graph: at 4096 a spike of ~200 MiB
    # whose size and timing varied the two peaks by -26 to +153 MiB; at 1024, +15 to +44
    "--batch-size",
    "1024",
    "--hidden",
    "16",
    "--latent-dim",
    "2",
    "--val-fraction",
    "0.005",
    "--test-fraction",
    "0.005",
    "--eval-samples",
    "2",
    "--score-samples",
    "2",
    "--checkpoint-every",
    "0",
    # one torch thread each: two trainings side by side with a thread per CPU each wait on one another's CPUs at
    # every parallel op (measured: 122 s for this file's npy test on 2 busy cores, against about 20 s)
    "--threads",
    "1",
    "--quiet",
]


def _write(path: Path, rows: int, features: int = 64) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((2, features)).astype(np.float32)
    for start in range(0, rows, 262144):
        n = min(262144, rows - start)
        out[start : start + n] = rng.standard_normal((n, 2), dtype=np.float32) @ basis
    out.flush()
    del out


def _write_parquet(path: Path, rows: int, features: int = 64) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((2, features)).astype(np.float32)
    with pq.ParquetWriter(path, pa.schema([(f"f{j}", pa.float32()) for j in range(features)])) as writer:
        for start in range(0, rows, 131072):  # row groups of 131,072 rows (32 MiB of float32)
            x = rng.standard_normal((min(131072, rows - start), 2), dtype=np.float32) @ basis
            writer.write_table(pa.table({f"f{j}": x[:, j] for j in range(features)}))


def _peaks_anon_mib(*tables: Path, out: Path) -> list[float]:
    """Train on each table in a process of its own, side by side (each process's peak is its own; running them
    at once only shares the CPUs); the peak anonymous memory of each, in MiB."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "--data", str(data), "--out", str(out), *ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for data in tables
    ]
    peaks = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-2000:]
        peaks.append(int(re.search(r"PEAK_ANON_KIB (\d+)", stdout).group(1)) / 1024)  # type: ignore[union-attr]
    return peaks


def test_memory_mapped_npy_larger_than_the_budget_trains_without_loading_whole(tmp_path: Path) -> None:
    big, small = tmp_path / "big.npy", tmp_path / "small.npy"
    _write(big, 1_000_000)  # 244 MiB of float32
    _write(small, 20_000)  # 5 MiB
    assert big.stat().st_size > 240 * 2**20
    baseline, peak = _peaks_anon_mib(small, big, out=tmp_path / "m")
    assert peak - baseline < 100, (baseline, peak)  # loading the table whole would add 244 MiB (488 as float64)
    assert (tmp_path / "m" / "big" / "1" / "manifest.json").is_file()


def test_parquet_larger_than_the_budget_trains_from_row_groups_without_loading_whole(tmp_path: Path) -> None:
    # Reading a row group costs memory in proportion to the row group (Arrow decodes it, ~100 MiB here), so the
    # baseline has full row groups too; what must not happen is memory growing with the number of row groups.
    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    _write_parquet(big, 524_288)  # 4 row groups, 128 MiB as float32 rows
    _write_parquet(small, 131_072)  # 1 row group
    baseline, peak = _peaks_anon_mib(small, big, out=tmp_path / "m")
    # Reading the table whole would add 96 MiB of Arrow buffers at least, and 96 MiB more of the (N, D) matrix built
    # from them (measured: 13 MiB less than the baseline's peak, which has its one row group whole too).
    assert peak - baseline < 100, (baseline, peak)
    assert (tmp_path / "m" / "big" / "1" / "manifest.json").is_file()


def test_mapped_rows_read_positions_and_slices_standardised_in_the_asked_order(tmp_path: Path) -> None:
    import torch

    from training.rows import MappedRows

    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "d.npy", x)
    rows = np.array([7, 2, 19, 0, 11])
    mean, std = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 8.0])
    mapped = MappedRows(np.load(tmp_path / "d.npy", mmap_mode="r"), rows, mean, std, torch.device("cpu"))
    expected = torch.from_numpy(((x[rows] - mean) / std).astype(np.float32))
    assert mapped.shape == (5, 3)
    torch.testing.assert_close(mapped[torch.tensor([4, 0, 2])], expected[[4, 0, 2]])
    torch.testing.assert_close(mapped[1:4], expected[1:4])
    torch.testing.assert_close(mapped[::2], expected[::2])
