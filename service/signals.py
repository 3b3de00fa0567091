"""A hook on the stop signals (SIGTERM, SIGINT) that runs before the server's own handler (uvicorn's), which still
runs: how the lifespan hears of a stop that uvicorn only acts on between its own steps."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(hook: Callable[[], object]) -> Callable[[], None]:
    """Run hook() at SIGTERM or SIGINT, then the handler found. Returns what puts the found handlers back. Does
    nothing where no server's handler is set (the default action, or ignored: nothing to hand the signal on to), or
    off the main thread, where signal handlers cannot be set. The hook runs in the main thread between two bytecodes:
    it should only set a flag or schedule work (loop.call_soon_threadsafe)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    found: dict[int, Callable[[int, FrameType | None], Any]] = {}
    for sig in STOP_SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            hook()
            previous(signum, frame)

        found[sig] = previous
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, previous in found.items():
            signal.signal(sig, previous)

    return restore
