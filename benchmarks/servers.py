"""Servers under load for the benchmarks: start one and wait until it answers, load it with wrk (HTTP/1.1) or h2load
(gRPC over h2c), and check out another revision to serve side by side (serving.py, gpu.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "benchmarks" / "wrk_post.lua"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        label: str,
        argv: list[str],
        env: dict[str, str],
        paths: dict[str, str],
        port: int,
        cwd: Path = ROOT,
        grpc_port: int = 0,
    ) -> None:
        self.label, self.paths, self.port, self.grpc_port = label, paths, port, grpc_port
        self.log = Path(tempfile.mkstemp(prefix="serving-", suffix=".log")[1])  # shown if the server fails
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not start; its log ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def peak_rss_mib(self) -> float:
        pids = [self.proc.pid, *_children(self.proc.pid)]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        return total / 1024

    def cpu_s(self) -> float:
        """CPU seconds (user + system, every thread) the server and its workers have used so far."""
        total = 0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def run_wrk(
    url: str, body_file: Path, header_length: int | None, connections: int, seconds: int, method: str = "POST"
) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    env = {**os.environ, "WRK_BODY": str(body_file), "WRK_HEADER_LENGTH": str(header_length or "")}
    env["WRK_METHOD"] = method
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    return json.loads(line[len("WRKJSON ") :])


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, big-endian length, the serialised protobuf."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def run_h2load(url: str, body_file: Path, connections: int, seconds: int, tmp: Path) -> dict[str, Any]:
    """POST the gRPC frame in body_file over `connections` h2c connections, one call at a time each (as wrk sends
    one request at a time per connection), for `seconds`: run_wrk's figures. h2load counts HTTP statuses; a gRPC
    error travels in the trailers of a 200, so the caller counts those from the server's own metrics."""
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to its log
    cmd = ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{seconds}", "-d", str(body_file), "--log-file", str(log)]
    for header in GRPC_HEADERS:
        cmd += ["-H", header]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    finished = next(ln for ln in out.splitlines() if ln.startswith("finished in"))  # "finished in 5.00s, ..."
    duration_s = float(finished.split()[2].rstrip("s,"))
    counts = next(ln for ln in out.splitlines() if ln.startswith("requests:")).replace(",", "").split()
    failed, errored, timed_out = (int(counts[counts.index(word) - 1]) for word in ("failed", "errored", "timeout"))
    # each line: start time (us), HTTP status, elapsed (us)
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2)
    elapsed = rows[rows[:, 1] == 200, 2]
    return {
        "requests": int(elapsed.size),
        "duration_us": int(duration_s * 1e6),
        "socket_errors": errored + timed_out,
        "non2xx": failed,
        "p50_us": float(np.percentile(elapsed, 50)) if elapsed.size else 0.0,
        "p99_us": float(np.percentile(elapsed, 99)) if elapsed.size else 0.0,
    }


@contextmanager
def checkout(rev: str | None, tmp: Path) -> Iterator[Path | None]:
    """A detached git worktree of `rev` under tmp (named after the commit), removed afterwards; None for None."""
    if rev is None:
        yield None
        return
    sha = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=ROOT, check=True)
    folder = tmp / sha.stdout.strip()
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(folder), rev], cwd=ROOT, check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, check=False)
