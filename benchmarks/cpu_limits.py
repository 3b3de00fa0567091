"""Thread pools sized from the CPUs a process may use, against a thread per host core, on a busy machine.

A process held to fewer CPUs than the host has runs next to a second CPU-bound process. The limit is a cgroup CPU
quota of one CPU (what `docker run --cpus 1` or a Kubernetes CPU limit of 1 sets) when this script may create a
cgroup (root, cgroup v1 cpu controller or v2), else a pin to one core with taskset (a cpuset); runtime/cpus.py
reads both. Side by side, alternating, in one run:

- training: `vae-train --threads N` (N = the host's core count: what torch did before) against `--threads 0`
  (auto: the usable CPUs), wall time of the whole run (train, evaluate, export, parity);
- scoring in-process: runtime.local.open_bundle(intra_op_threads=N) against 0 (auto), 1024 rows a call.

    .venv/bin/python benchmarks/cpu_limits.py [--epochs 20] [--repeats 2] [--out benchmarks/results/cpu_limits.json]

Needs a host with at least 2 cores, and root for the quota (else taskset, util-linux). Prints a table and writes
JSON (machine, versions, git sha). Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hogs import cpu_hogs  # benchmarks/: the folder of the script run
from machine import machine_record

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CORE = "0"  # without a cgroup: the one core both the measured process and the competitor may use
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")

SCORE = """
import sys, time
import numpy as np
from runtime.local import open_bundle
from training.data import load_table
model = open_bundle(sys.argv[1], device="cpu", intra_op_threads=int(sys.argv[2]))
x = load_table("builtin:digits").x[:1024]
model.score(x)
started, calls = time.perf_counter(), 0
while time.perf_counter() - started < float(sys.argv[3]):
    model.score(x)
    calls += 1
print(calls * 1024 / (time.perf_counter() - started))
"""


@contextmanager
def one_cpu() -> Iterator[tuple[str, list[str]]]:
    """(description, command prefix) that runs a command held to one CPU: in a cgroup with a quota of one CPU
    when one can be made here, else pinned to one core."""
    folder = None
    for root, files in ((CGROUP_V1, ("cpu.cfs_quota_us", "100000")), (CGROUP_V2, ("cpu.max", "100000 100000"))):
        if (root / files[0]).exists() or (root / "cgroup.procs").exists():
            try:
                folder = root / f"vae-cpu-limits-{os.getpid()}"
                folder.mkdir()
                (folder / files[0]).write_text(files[1])
                break
            except OSError:
                if folder is not None and folder.exists():
                    folder.rmdir()
                folder = None
    if folder is None:
        yield f"pinned to core {CORE} (taskset)", ["taskset", "-c", CORE]
        return
    try:
        enter = f'echo $$ > {folder / "cgroup.procs"} && exec "$@"'
        yield "in a cgroup with a CPU quota of 1 (both cores visible)", ["sh", "-c", enter, "sh"]
    finally:
        time.sleep(0.2)
        folder.rmdir()


def train_seconds(limit: list[str], threads: int, epochs: int, repo: Path, name: str) -> float:
    command = [
        *limit, str(BIN / "vae-train"), "--data", "builtin:digits", "--name", name, "--out", str(repo),
        "--epochs", str(epochs), "--threads", str(threads), "--checkpoint-every", "0", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def score_rows_per_s(limit: list[str], bundle: Path, threads: int, seconds: float) -> float:
    command = [*limit, sys.executable, "-c", SCORE, str(bundle), str(threads), str(seconds)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--score-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_limits.json")
    args = parser.parse_args()
    host = os.cpu_count() or 1
    if host < 2:
        print("cpu_limits.py: this host has one core; nothing to compare")
        return 0
    cases = {f"{host} threads (one per host core)": host, "auto (usable CPUs: 1)": 0}
    train: dict[str, list[float]] = {c: [] for c in cases}
    score: dict[str, list[float]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        subprocess.run(
            [str(BIN / "vae-train"), "--data", "builtin:digits", "--name", "scorer", "--out", str(repo)]
            + ["--epochs", "5", "--quiet", "--device", "cpu"],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        with one_cpu() as (limit_text, limit), cpu_hogs(1, ["taskset", "-c", CORE] if limit[0] == "taskset" else []):
            for r in range(args.repeats):
                for case, threads in cases.items():
                    train[case].append(train_seconds(limit, threads, args.epochs, repo, f"t{r}-{threads}"))
                    score[case].append(score_rows_per_s(limit, repo / "scorer" / "1", threads, args.score_seconds))
    slow, auto = list(cases)
    rows = {
        case: {
            "train_seconds_median": statistics.median(train[case]),
            "train_seconds": train[case],
            "score_rows_per_s_median": statistics.median(score[case]),
            "score_rows_per_s": score[case],
        }
        for case in cases
    }
    print(f"{limit_text}, beside a CPU-bound process; {args.epochs} epochs; score 1024 rows a call")
    print("| threads | training wall s (median) | score rows/s (median) |")
    print("| --- | ---: | ---: |")
    for case, r in rows.items():
        print(f"| {case} | {r['train_seconds_median']:.1f} | {r['score_rows_per_s_median']:,.0f} |")
    speedup = rows[slow]["train_seconds_median"] / rows[auto]["train_seconds_median"]
    score_gain = rows[auto]["score_rows_per_s_median"] / rows[slow]["score_rows_per_s_median"]
    print(f"auto vs a thread per host core: training {speedup:.2f}x faster, scoring {score_gain:.2f}x the rows/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_record(), "limit": limit_text, "cases": rows, "epochs": args.epochs}
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
