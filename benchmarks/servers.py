"""Servers under load for the benchmarks: start one and wait until it answers, load it with wrk, and check out
another revision to serve side by side (serving.py, gpu.py)."""

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

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "benchmarks" / "wrk_post.lua"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self, label: str, argv: list[str], env: dict[str, str], paths: dict[str, str], port: int, cwd: Path = ROOT
    ) -> None:
        self.label, self.paths, self.port = label, paths, port
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

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def run_wrk(url: str, body_file: Path, header_length: int | None, connections: int, seconds: int) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    env = {**os.environ, "WRK_BODY": str(body_file), "WRK_HEADER_LENGTH": str(header_length or "")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    return json.loads(line[len("WRKJSON ") :])


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
