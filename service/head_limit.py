"""A bound on the bytes of a request's head (request line and headers), for the HTTP parser `vae-serve` runs.

uvicorn's h11 parser has one (`h11_max_incomplete_event_size`); its httptools parser, the faster one and the one
`uvicorn[standard]` brings, keeps a head of any size while it arrives: one connection could make a worker hold a
header of hundreds of MiB before the app ever sees the request. `BoundedHttpTools` counts what a connection sends
while a request's head is open and answers 431 and closes past the same setting, so both parsers keep one limit
(`VAE_MAX_HEADER_BYTES`, carried to every worker in uvicorn's own config field).

Counted per `data_received` chunk once the parser has taken it: a head is refused after at most the limit plus one
read (asyncio reads at most 256 KiB at a time), and a chunk that ends a head and starts a body is never counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config

log = logging.getLogger("uvicorn.error")

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 parser, which applies the same limit itself
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


def too_large_message(limit: int) -> str:
    return f"request line and headers over {limit} bytes (VAE_MAX_HEADER_BYTES)"


if HttpToolsProtocol is not None:

    class BoundedHttpTools(HttpToolsProtocol):
        def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self._head_limit = config.h11_max_incomplete_event_size or 0
            self._head_bytes: int | None = None  # bytes received while a request's head is open; None: none open

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            self._head_bytes = None
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_bytes is None or self.transport.is_closing():
                return
            self._head_bytes += len(data)
            if self._head_limit and self._head_bytes > self._head_limit:
                self._refuse_head()

        def _refuse_head(self) -> None:
            msg = too_large_message(self._head_limit)
            log.warning("%s:%d - %s; connection closed", *(self.client or ("?", 0)), msg)
            content = [STATUS_LINE[431]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            body = msg.encode("ascii")
            content.extend(
                [
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
            self.transport.close()
            self._head_bytes = None


def http_protocol() -> type[asyncio.Protocol] | str:
    """What uvicorn's `http` takes: the bounded httptools protocol, or "h11" where httptools is not installed."""
    return "h11" if HttpToolsProtocol is None else BoundedHttpTools
