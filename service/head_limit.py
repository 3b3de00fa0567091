"""A bound on the bytes of a request's head (request line and headers), for the HTTP parser `vae-serve` runs.

uvicorn's h11 parser has one (`h11_max_incomplete_event_size`, answered 400); its httptools parser, the faster one
and the one `uvicorn[standard]` brings, keeps a head of any size while it arrives: one connection could make a
worker hold a header of hundreds of MiB before the app ever sees the request. `BoundedHttpTools` answers 431 and
closes the connection once a head passes `VAE_MAX_HEADER_BYTES`, which reaches every worker in uvicorn's own config
field (`h11_max_incomplete_event_size`). Two counts, as the parser only hands a header over whole:

- while a head arrives: the bytes of each read taken entirely inside one open head (a read in which the head
  began, after a body of the request before it say, is not counted), so a header that never ends is refused after
  at most the limit plus one read;
- when the head ends: its size as the parser hands it over, so a head that ends inside a read is refused too, before
  the app sees it.

With requests pipelined on the connection, the 431 waits for the answers to the requests before it (HTTP/1.1
answers in order), reading nothing more meanwhile. After it, what still arrives is read and dropped for LINGER_S
before the connection closes (a lingering close, as nginx's): closed at once, the unread rest of the head would
reset the connection, and the client could lose the answer.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.errors import HeadersTooLarge, error_body

log = logging.getLogger("uvicorn.error")
STATUS = 431
LINGER_S = 2.0  # how long a refused connection's remaining bytes are read and dropped before it is closed
LINE_OVERHEAD = 4  # ": " and CRLF around each header, as counted towards the head


class BoundedHttpTools(HttpToolsProtocol):
    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._limit = config.h11_max_incomplete_event_size or 0  # 0: no bound
        self._messages = 0  # requests begun on this connection
        self._open = False  # a request's head is arriving
        self._read_bytes = 0  # bytes of the reads taken entirely inside the open head
        self._over = False  # a callback found the head past the limit (and stopped the parser)
        self._waiting = False  # refused, the answer waiting for the answers to the requests before it
        self._answered = False  # refused and answered: the connection closes after LINGER_S

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._messages += 1
        self._open, self._read_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._open = False
        if self._limit and self._head_size() > self._limit:
            self._over = True
            raise OverflowError("request head over its limit")  # stops the parser; answered in send_400_response
        super().on_headers_complete()

    def _head_size(self) -> int:
        # the request target and headers as the parser handed them over (counted once, at the head's end: a count
        # per header would add a Python call to each)
        return len(self.url) + sum(len(name) + len(value) + LINE_OVERHEAD for name, value in self.headers)

    def data_received(self, data: bytes) -> None:
        if self._waiting or self._answered:  # refused: what still arrives is read and dropped
            return
        inside, message = self._open, self._messages
        super().data_received(data)
        if inside and self._open and message == self._messages and not self.transport.is_closing():
            self._read_bytes += len(data)
            if self._limit and self._read_bytes > self._limit:
                self._refuse()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a parser error, among them the one on_headers_complete raises to stop the parser
        if self._over:
            self._refuse()
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting and not self._busy():
            self._answer()

    def _busy(self) -> bool:
        # an earlier request of the connection not yet answered, or queued behind one
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse(self) -> None:
        self._over, self._open = False, False
        if self._busy():
            self._waiting = True
            self.flow.pause_reading()
        else:
            self._answer()

    def _answer(self) -> None:
        self._waiting = False
        exc = HeadersTooLarge(f"request line and headers over {self._limit} bytes (VAE_MAX_HEADER_BYTES)")
        log.warning("%s:%d - %s; connection closed", *(self.client or ("?", 0)), exc)
        body = error_body("", exc)
        content = [STATUS_LINE[STATUS]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        # A close with the rest of the head unread would reset the connection, and the client could lose the answer
        # before reading it: end the writing side, drop what still arrives, and close after LINGER_S (a client that
        # read the answer closes first).
        self._answered = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
