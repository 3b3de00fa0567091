"""Offline scoring of partitioned data: vae-score in one process, with --workers 2, and on a two-worker Dask cluster,
beside the in-process limit (the bundle runtime scoring the same rows in this process, no I/O), in one run.

    .venv/bin/python benchmarks/batch_scoring.py [--bundle models/digits/1] [--rows 1000000] [--partitions 16]
        [--out benchmarks/results/batch_scoring.json]

Synthetic rows of the bundle's width (uniform in [0, 1), float32) in Parquet partitions under a temporary folder.
Each configuration scores every partition into a fresh output folder; rows/s counts rows over wall time from the
command's start to its end (process start-up and bundle loading included). Peak RSS: the high-water mark of each
process of the run (vae-score and its workers, read while they run; the Dask workers' own), the largest reported
and the largest worker's beside it. The --workers 2 run is repeated on a quarter of the partitions, so its peak RSS per
worker can be compared across dataset sizes. Writes JSON with machine, versions and git sha.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import machine_record  # benchmarks/ is on sys.path: the folder of the script run

ROOT = Path(__file__).resolve().parents[1]


def write_partitions(folder: Path, rows: int, partitions: int, width: int, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    per = rows // partitions
    for i in range(partitions):
        x = rng.random((per, width), dtype=np.float32)
        table = pa.table({"row_id": np.arange(i * per, (i + 1) * per), **{n: x[:, j] for j, n in enumerate(names)}})
        pq.write_table(table, folder / f"part-{i:03d}.parquet", row_group_size=65536)


def vae_score(bundle: Path, data: Path, out: Path, *extra: str) -> dict[str, Any]:
    """Run vae-score to completion: rows/s over its wall time, and the peak RSS of each of its processes (the
    high-water marks of the process and its workers, read every 0.1 s while they run)."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "gaussian_vae.cli", str(bundle), str(data), "-o", str(out), "--quiet"]
    proc = subprocess.Popen([*cmd, "--device", "cpu", *extra], cwd=ROOT)
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            peaks[pid] = max(peaks.get(pid, 0.0), _peak_rss_mib(pid))
        time.sleep(0.1)
    if proc.returncode:
        raise RuntimeError(f"vae-score exited {proc.returncode}")
    seconds = time.perf_counter() - started
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in out.rglob("*.parquet"))
    workers = [v for pid, v in peaks.items() if pid != proc.pid]
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "peak_rss_mib": max(peaks.values()),
        "main_process_peak_rss_mib": peaks.get(proc.pid, 0.0),
        "worker_peak_rss_mib": max(workers) if workers else None,
    }


def _descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    children = [int(p) for p in found]
    return children + [d for c in children for d in _descendants(c)]


def dask_run(bundle: Path, data: Path, out: Path) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.run(lambda: None)  # the workers are up before the clock starts
            started = time.perf_counter()
            cmd = [sys.executable, "-m", "gaussian_vae.cli", str(bundle), str(data), "-o", str(out), "--quiet"]
            subprocess.run([*cmd, "--device", "cpu", "--scheduler", cluster.scheduler_address], check=True, cwd=ROOT)
            seconds = time.perf_counter() - started
            peaks = client.run(_peak_rss_mib)  # each worker's own high-water mark
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in out.rglob("*.parquet"))
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mib": max(peaks.values())}


def _peak_rss_mib(pid: int | str = "self") -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # ended meanwhile
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), 0.0)


def in_process(bundle: Path, rows: int, width: int) -> dict[str, Any]:
    """The bundle runtime on the same kind of rows in this process, 65,536 at a time, onnxruntime's threads."""
    from runtime import open_bundle

    model = open_bundle(bundle, "cpu")
    x = np.random.default_rng(1).random((65536, width), dtype=np.float32)
    model.score(x[:1024])  # warm
    started, done = time.perf_counter(), 0
    while done < rows:
        model.score(x)
        done += len(x)
    seconds = time.perf_counter() - started
    return {"rows": done, "seconds": seconds, "rows_per_s": done / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: train the digits model first)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_scoring.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batch-scoring-") as tmp_name:
        tmp = Path(tmp_name)
        bundle = args.bundle or _train(tmp)
        manifest = json.loads((bundle / "manifest.json").read_text())
        width = manifest["input_dim"]
        names = manifest["feature_names"] or [f"column_{j}" for j in range(width)]
        data, quarter = tmp / "data", tmp / "quarter"
        data.mkdir()
        quarter.mkdir()
        write_partitions(data, args.rows, args.partitions, width, names)
        for p in sorted(data.glob("*.parquet"))[: max(1, args.partitions // 4)]:
            os.link(p, quarter / p.name)
        results: dict[str, Any] = {"in-process limit": in_process(bundle, args.rows // 4, width)}
        print(f"in-process limit: {results['in-process limit']['rows_per_s']:,.0f} rows/s", flush=True)
        for label, run in (
            ("vae-score, 1 process", lambda: vae_score(bundle, data, tmp / "o1", "--workers", "1")),
            (
                "vae-score, 1 process, 1 thread",
                lambda: vae_score(bundle, data, tmp / "o0", "--workers", "1", "--threads", "1"),
            ),
            ("vae-score --workers 2", lambda: vae_score(bundle, data, tmp / "o2", "--workers", "2")),
            (
                "vae-score --workers 2, 1/4 of the rows",
                lambda: vae_score(bundle, quarter, tmp / "o3", "--workers", "2"),
            ),
            ("Dask cluster, 2 workers", lambda: dask_run(bundle, data, tmp / "o4")),
        ):
            results[label] = run()
            r = results[label]
            peak = f"peak RSS {r['peak_rss_mib']:.0f} MiB"
            if r.get("worker_peak_rss_mib"):
                peak += f" (largest worker {r['worker_peak_rss_mib']:.0f} MiB)"
            print(f"{label:<34} {r['rows']:>9} rows {r['rows_per_s']:>10,.0f} rows/s {peak}", flush=True)
    one = results["vae-score, 1 process"]["rows_per_s"]
    summary = {
        "workers_2_vs_1_process": results["vae-score --workers 2"]["rows_per_s"] / one,
        "workers_2_vs_1_process_1_thread": results["vae-score --workers 2"]["rows_per_s"]
        / results["vae-score, 1 process, 1 thread"]["rows_per_s"],
        "dask_vs_1_process": results["Dask cluster, 2 workers"]["rows_per_s"] / one,
        "1_process_vs_limit": one / results["in-process limit"]["rows_per_s"],
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_record(), "rows": args.rows, "partitions": args.partitions, "results": results}
    args.out.write_text(json.dumps(record | {"summary": summary}, indent=2))
    print(f"wrote {args.out}")


def _train(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "training", "--data", "builtin:digits", "--name", "digits", "--out", str(tmp / "m")]
    subprocess.run([*cmd, "--quiet"], check=True, cwd=ROOT)
    return tmp / "m" / "digits" / "1"


if __name__ == "__main__":
    main()
