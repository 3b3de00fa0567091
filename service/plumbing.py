"""What every HTTP endpoint shares: the model a request holds, its body read within limits, JSON parsed, the client's
presence, and the fast plain route. No endpoint is declared here."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import orjson
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Scope

from service.errors import (
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    quoted,
)
from service.inference import Alive, ModelRunner
from service.repository import ModelRepository
from service.schemas import check_json_containers
from service.settings import ServiceSettings

JSON = frozenset({"application/json"})
JSON_OR_BINARY = frozenset({"application/json", "application/octet-stream"})  # V2 infer: the binary tensor form


class BodyBudget:
    """Bytes of request bodies held while they arrive, all requests of a worker together, at most `limit`: slow or
    stalled uploads cannot make the process grow by connections x VAE_MAX_BODY_BYTES."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise Overloaded(
                f"the service is receiving {self.held} bytes of request bodies already (VAE_MAX_BODY_BYTES_IN_FLIGHT "
                f"is {self.limit}); retry shortly"
            )
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


def serving(repo: ModelRepository | None) -> ModelRepository:
    """The repository once it is open; NotReady (retry) before, during start-up."""
    if repo is None:
        raise NotReady("no model is loaded")
    return repo


def using(request: Request, name: str | None, version: int | None = None) -> AbstractAsyncContextManager[ModelRunner]:
    """The runner serving <name> (default model when None), held for the whole request: a version swapped out
    meanwhile is stopped only after this request is done with it."""
    return held(request.app.state.repository, name, version)


@asynccontextmanager
async def held(repository: ModelRepository | None, name: str | None, version: int | None) -> AsyncIterator[ModelRunner]:
    """using() for any face (the gRPC one has no Starlette request)."""
    repo = serving(repository)
    wanted = name if name is not None else repo.default_name or ""
    runner = repo.get(wanted, version)
    if runner is None:
        if not repo.served_once:
            # nothing has served yet (an empty repository, bundles still being copied): worth a retry. Once a model
            # has served, one that does not (unloaded, refused, its folder gone) is ModelNotFound below, even when
            # no other serves: no retry brings it back by itself.
            raise NotReady("no model is loaded")
        loaded = sorted(repo.current)
        if name is None:  # never another model in its place: the caller would not know whose scores it got
            refused = {k: v for k, v in repo.refused.items() if k.split("/")[0] == repo.default_name}
            raise ModelNotFound(
                f"the default model {repo.default_name!r} is not serving"
                + (f" (refused: {refused})" if refused else "")
                + f"; loaded: {loaded}; name one in the path (/v1/models/<name>/...) or set VAE_DEFAULT_MODEL"
            )
        what = quoted(name) if version is None else f"{quoted(name)} version {version}"
        raise ModelNotFound(f"no model {what} is loaded; loaded: {loaded}")
    runner.acquire()
    try:
        yield runner
    finally:
        runner.release()


def check_media_type(request: Request, accepted: frozenset[str]) -> None:
    """415 unless the body's Content-Type is one the endpoint documents. A missing one is taken as JSON (Triton's
    clients send none); a browser page sending one without a Content-Type carries an Origin, refused by
    access.BrowserGuard. text/plain and the form types are what a page can send cross-origin without a preflight."""
    given = request.headers.get("content-type")
    if given is None or given == "application/json":  # the common case, without parsing
        return
    media = given.partition(";")[0].strip().lower()
    if media not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type {media[:80]!r} is not accepted here; send {' or '.join(sorted(accepted))}"
        )


async def read_body(request: Request, accepted: frozenset[str] = JSON) -> bytes:
    """The raw body, refusing a media type the endpoint does not take (415), anything over VAE_MAX_BODY_BYTES before
    reading (or parsing) it all, and any body that has not arrived within VAE_BODY_TIMEOUT_S (408). A gzip
    Content-Encoding is decoded, within the same size limit; any other encoding gets 415."""
    check_media_type(request, accepted)
    settings: ServiceSettings = request.app.state.settings
    limit = settings.max_body_bytes
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {quoted(encoding)} is not supported; send identity or gzip")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} (VAE_MAX_BODY_BYTES)")
    budget: BodyBudget = request.app.state.body_budget
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                if size + len(chunk) > limit:
                    raise PayloadTooLarge(f"body is over the limit of {limit} bytes (VAE_MAX_BODY_BYTES)")
                budget.take(len(chunk))
                size += len(chunk)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {settings.body_timeout_s:g}s ({size} bytes came; VAE_BODY_TIMEOUT_S)"
        ) from None
    finally:
        budget.give_back(size)
    body = b"".join(chunks)
    return gunzip(body, limit) if encoding == "gzip" else body


# A gzip body may inflate to at most this many times its size (or GZIP_FLOOR bytes, whichever is more): numbers in
# JSON compress 3-20x, while 16 KB of gzip inflating to 16 MiB made every request cost the event loop a 16 MiB parse
GZIP_RATIO = 64
GZIP_FLOOR = 1 << 20


def gunzip(data: bytes, limit: int) -> bytes:
    """A gzip body decoded to at most `limit` bytes, and to at most GZIP_RATIO times its own size beyond GZIP_FLOOR
    (a small body must not expand into gigabytes, nor into work out of proportion to what the client sent)."""
    bound = min(limit, max(GZIP_FLOOR, GZIP_RATIO * len(data)))
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, bound + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid gzip ({exc})") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes (VAE_MAX_BODY_BYTES)")
    if len(out) > bound:
        raise PayloadTooLarge(
            f"the gzip body of {len(data)} bytes inflates past {bound} bytes, {GZIP_RATIO} times its size: send it "
            "uncompressed, or in smaller requests"
        )
    if not inflater.eof:
        raise InvalidInput("the gzip body is truncated")
    return out


def max_rows(request: Request) -> int:
    """VAE_MAX_ROWS of the app serving the request."""
    settings: ServiceSettings = request.app.state.settings
    return settings.max_rows


def parse_json(data: bytes, max_rows: int) -> object:
    """A JSON body (InvalidInput when it is not JSON), refused before parsing when it holds more arrays and objects
    than a request of max_rows rows may (check_json_containers)."""
    check_json_containers(data, max_rows)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None


def alive(request: Request) -> Alive:
    """False once the client has closed the connection (checked between the chunks of a big request)."""

    async def check() -> bool:
        return not await request.is_disconnected()

    return check


class PlainRoute(Route):
    """A Starlette route that names itself in the scope when it matches, as FastAPI's routes do (the metrics'
    endpoint label is the matched route's path)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child
