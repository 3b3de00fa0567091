"""Peers: the uvicorn workers of one vae-serve, kept serving the same models.

Each worker holds its own ModelRepository, and a repository request (V2 load or unload) reaches only one of them.
That worker applies it, then records what was asked, per model (the pinned version or none; unloaded or not; or
that a poll dropped a pin with its folder, which the others follow by dropping it too, their polls then following
the disk), in a state file with a generation number, in a folder vae-serve makes for its workers (PEERS_DIR, set
before they start). Every worker checks that file a few times a second and applies a newer state; each then writes the
generation it has applied, and any model it could not load, to its own acknowledgement file. The worker that took
the request answers only when every live worker has acknowledged, so after a 200 every worker serves the same
version, and a model unloaded stays unloaded in all of them. A worker that starts later (uvicorn restarts one
that crashed) applies the state before it serves.

One process (one worker, or an app created in-process) has no folder: then Peers does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypedDict

import orjson

from service.errors import WorkerTimeout
from service.settings import PEERS_DIR

STATE_FILE = "repository.json"
DEFAULT_FILE = "default-model.json"  # the default model the first worker chose (VAE_DEFAULT_MODEL unset)
SERVED_FILE = "served-once"  # a worker has served a model: one that serves nowhere now is not still arriving
CHECK_INTERVAL_S = 0.1  # how often a worker reads the state file (a few hundred bytes)
WAIT_S = 60.0  # how long a repository request waits for the other workers (each may verify and warm up a bundle)


@dataclass(frozen=True)
class Requested:
    """What the last repository request asked of one model."""

    pinned: int | None = None  # the version a load named (None: the newest on disk)
    unloaded: bool = False
    dropped: bool = False  # no request: a worker's poll dropped the pin with its folder (follow the disk, as polls do)
    served: int | None = None  # a load without a version: the version it served where it was made (the others serve
    # that one, not what their own look at the disk finds newest a moment later: a version staged meanwhile)
    at: int = 0  # the generation that recorded it: a worker applies only what is newer than what it has applied


class Ack(TypedDict):
    pid: int
    generation: int
    failures: dict[str, str]  # model -> why this worker could not load it (kept until a later try succeeds)
    failed_at: dict[str, int]  # model -> the generation of the request that failed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


STARTUP_FAILED = "startup-failed-"  # + the worker: why it could not start


class StartupFailure(RuntimeError):
    """A worker cannot start, for a reason its message says in full (a port that cannot be bound): logged as that one
    line, not with a traceback (service/app.py)."""


class Peers:
    def __init__(self, folder: Path | None, me: str | None = None) -> None:
        self.folder = folder
        self.me = me or str(os.getpid())  # names this worker's acknowledgement file

    @classmethod
    def from_env(cls) -> Peers:
        folder = os.environ.get(PEERS_DIR)
        return cls(Path(folder) if folder else None)

    @property
    def shared(self) -> bool:
        return self.folder is not None

    def note_startup_failure(self, reason: str) -> None:
        """Tell vae-serve's parent that this worker could not start: with several workers uvicorn's parent stops
        without a failing exit status of its own, so vae-serve reads this to exit 3 as one worker does."""
        if self.folder is not None:
            with contextlib.suppress(OSError):
                self._path(f"{STARTUP_FAILED}{self.me}").write_text(reason[:500])

    def forget_startup_failures(self) -> None:
        """Remove the workers' start-up failure notes (the parent's, after failures it went on serving through)."""
        if self.folder is not None:
            for path in self.folder.glob(f"{STARTUP_FAILED}*"):
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def told_if_startup_fails(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self.note_startup_failure(f"{type(exc).__name__}: {exc}")
            raise

    def startup_failure(self) -> str | None:
        """The first reason a worker noted for failing to start, or None."""
        if self.folder is None:
            return None
        for path in sorted(self.folder.glob(f"{STARTUP_FAILED}*")):
            with contextlib.suppress(OSError):
                return path.read_text()
        return None

    def mark_served(self) -> None:
        """A model served in this worker (its first): a worker started later is past "not ready yet" too."""
        if self.folder is not None:
            with contextlib.suppress(OSError):  # at worst a later worker answers 503 where the others answer 404
                self._path(SERVED_FILE).touch()

    def served_before(self) -> bool:
        """Whether any worker of this service has served a model."""
        return self.folder is not None and self._path(SERVED_FILE).exists()

    def _path(self, name: str) -> Path:
        assert self.folder is not None
        return self.folder / name

    def read(self) -> tuple[int, dict[str, Requested]]:
        """(generation, what was asked per model); (0, {}) before the first request."""
        if self.folder is None:
            return 0, {}
        try:
            state = orjson.loads(self._path(STATE_FILE).read_bytes())
        except FileNotFoundError:
            return 0, {}
        return state["generation"], {name: Requested(**asked) for name, asked in state["models"].items()}

    def publish(self, name: str, asked: Requested, only_if: Requested | None = None) -> int | None:
        """Record what a request asked of `name`; returns the new generation. With only_if: only while the record of
        `name` still asks that (its pin and unload; None returned otherwise, nothing written). Blocking (a file lock):
        call it in a thread."""
        assert self.folder is not None
        with open(self._path("repository.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read-modify-write across processes
            try:
                state = orjson.loads(self._path(STATE_FILE).read_bytes())
            except FileNotFoundError:
                state = {"generation": 0, "models": {}}
            if only_if is not None:
                found = Requested(**state["models"].get(name, {}))
                if (found.pinned, found.unloaded) != (only_if.pinned, only_if.unloaded):
                    return None
            state["generation"] += 1
            state["models"][name] = asdict(replace(asked, at=state["generation"]))
            _write(self._path(STATE_FILE), state)
            return int(state["generation"])

    def agree_default(self, candidate: str) -> str:
        """The default model every worker serves behind /v1/<op>: the one the first worker to choose named (it
        writes it here), `candidate` for that first one or for a process alone. Blocking: call it in a thread."""
        if self.folder is None:
            return candidate
        with open(self._path("repository.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return str(orjson.loads(self._path(DEFAULT_FILE).read_bytes())["name"])
            except FileNotFoundError:
                _write(self._path(DEFAULT_FILE), {"name": candidate})
                return candidate

    def acknowledge(self, generation: int, failures: dict[str, tuple[int, str]]) -> None:
        """This worker has applied `generation`; `failures`: model -> (the generation of the request that could not
        be done here, why), every such model until a later try succeeds, not only this round's: a requester that
        reads the file after a later round still hears of its request's failure."""
        if self.folder is not None:
            ack: Ack = {
                "pid": os.getpid(),
                "generation": generation,
                "failures": {name: why for name, (_, why) in failures.items()},
                "failed_at": {name: at for name, (at, _) in failures.items()},
            }
            _write(self._path(f"ack-{self.me}.json"), ack)

    def others(self) -> list[Ack]:
        """The acknowledgements of the other live workers (a dead worker's file is removed)."""
        assert self.folder is not None
        acks = []
        for path in self.folder.glob("ack-*.json"):
            if path.name == f"ack-{self.me}.json":
                continue
            with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
                ack: Ack = orjson.loads(path.read_bytes())
                if process_alive(ack["pid"]):
                    acks.append(ack)
                else:
                    path.unlink(missing_ok=True)
        return acks

    async def wait(self, generation: int, name: str, timeout_s: float = WAIT_S) -> list[str]:
        """Wait until every other live worker has applied `generation`; returns why any could not load `name`."""
        deadline = time.monotonic() + timeout_s
        while True:
            acks = await asyncio.to_thread(self.others)
            behind = [a["pid"] for a in acks if a["generation"] < generation]
            if not behind:
                return [
                    f"worker {a['pid']}: {a['failures'][name]}"
                    for a in acks
                    if name in a["failures"] and a.get("failed_at", {}).get(name, generation) >= generation
                ]
            if time.monotonic() > deadline:
                raise WorkerTimeout(
                    f"this worker applied the request, but worker(s) {behind} had not after {timeout_s:g} s"
                )
            await asyncio.sleep(CHECK_INTERVAL_S / 4)


def _write(path: Path, value: object) -> None:
    """Replace a file whole (write a temporary file, then rename), so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(value))
    os.replace(tmp, path)
