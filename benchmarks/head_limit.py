"""What vae-serve's bound on request heads costs (service/head_limit.py): the parse of a typical request head by
uvicorn's HttpToolsProtocol and by BoundedHttpTools, interleaved in 30 rounds of 2,000 heads each, no app, no socket.

    .venv/bin/python benchmarks/head_limit.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.head_limit import BoundedHttpTools  # noqa: E402

HEADS = 2000
HEAD = (
    b"POST /v1/models/digits/score HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: python-httpx/0.28\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: Any) -> None:
        """Answers are dropped: only the parse is timed."""

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        """No socket to pause: every head is handed over by the loop in seconds_per_head."""

    def resume_reading(self) -> None:
        """No socket to resume (see pause_reading)."""

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Nothing is buffered: write drops the answers."""


def seconds_per_head(cls: type[HttpToolsProtocol], config: Config) -> float:
    protocol = cls(config, ServerState(), {})
    protocol.connection_made(_Transport())
    protocol._start_asgi_task = lambda cycle, app: None  # type: ignore[method-assign]  # the parse only
    started = time.perf_counter()
    for _ in range(HEADS):
        protocol.cycle = None  # type: ignore[assignment]  # each head a new request, none in flight
        protocol.data_received(HEAD)
    return (time.perf_counter() - started) / HEADS


async def main(rounds: int) -> None:
    config = Config(lambda: None, h11_max_incomplete_event_size=65536, log_level="critical")
    config.load()
    ratios, plain = [], []
    for _ in range(rounds):
        base = seconds_per_head(HttpToolsProtocol, config)
        ratios.append(seconds_per_head(BoundedHttpTools, config) / base)
        plain.append(base)
    print(
        f"per head: uvicorn's {statistics.median(plain) * 1e6:.2f} us; bounded / uvicorn's: median "
        f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) over {rounds} rounds"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds of 2,000 heads each")
    asyncio.run(main(parser.parse_args().rounds))
