"""CPU-bound competitors for the benchmarks that measure a busy machine (serving.py --busy, cpu_limits.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


@contextmanager
def cpu_hogs(count: int, prefix: Sequence[str] = ()) -> Iterator[None]:
    """`count` processes spinning in pure Python for the duration, each started as prefix + python (e.g. a taskset
    pin); killed on exit, even when the body raises."""
    procs = [subprocess.Popen([*prefix, sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        if procs:
            time.sleep(0.5)  # running, and seen by the scheduler, before the first measurement
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
