"""The client's flows, written once for VAEClient and AsyncVAEClient: a flow is a generator that yields HTTP
requests to send (and seconds to sleep before a retry) and returns the answer, so chunking, retries, feature names
and the checks live here, and service/client.py only drives them (blocking or async). Imports only httpx, numpy,
the contract (the operation table, the DataFrame rule) and the client's exceptions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias, TypeVar

import httpx
import numpy as np

from contract.frames import FrameError, frame_rows, is_frame
from contract.operations import ARRAY_OUTPUTS, OPERATIONS, values_per_row
from service.client_errors import InvalidInput, ModelChanged, ModelNotFound, ServiceUnavailable, error_for

T = TypeVar("T")


_ARRAYS = ARRAY_OUTPUTS  # per-row fields of the answers, from the operation table (contract/operations.py)
_DRAWS_PER_ROW = {"encode": "samples", "score": "importance_samples"}  # the parameter that bounds a chunk's rows


class _Request(NamedTuple):
    method: str
    path: str
    body: dict[str, Any] | None = None


Step: TypeAlias = _Request | float  # a request to send, or seconds to sleep before the next step
Flow: TypeAlias = Generator[Step, httpx.Response | None, T]  # sent: the response to a request, None after a sleep


@dataclass(frozen=True)
class _Features:
    model: str
    version: int
    names: list[str] | None  # None: the bundle was trained without names (.npy)
    width: int


@dataclass(frozen=True)
class _Dims:
    input_dim: int
    latent_dim: int
    full: bool


@dataclass
class _Context:
    """One client's limits and retry policy, and what it has learnt about the service's models."""

    max_rows: int
    max_draws: int
    retries: int
    max_retry_wait_s: float
    max_values: int = 1 << 20  # numbers in one answer (the service's VAE_MAX_ANSWER_VALUES)
    features: dict[str, _Features] = field(default_factory=dict)  # model name -> the newest version seen
    dims: dict[str, _Dims] = field(default_factory=dict)  # model name -> its sizes, from GET /v1/models
    default_model: str | None = None

    def __post_init__(self) -> None:
        if min(self.max_rows, self.max_draws, self.max_values) < 1 or self.retries < 0 or self.max_retry_wait_s < 0:
            raise ValueError(
                "max_rows/max_draws/max_values_per_request must be >= 1, retries and max_retry_wait_s >= 0"
            )


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        kind, detail = str(body.get("error", "")), str(body.get("detail", response.text))
    except ValueError:
        kind, detail = "", response.text
    error = error_for(response.status_code, kind, detail)
    if isinstance(error, ServiceUnavailable) and "retry-after" in response.headers:
        error.retry_after = _seconds(response.headers["retry-after"])
    raise error


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:  # an HTTP date: the service never sends one
        return None
    return max(seconds, 0.0) if np.isfinite(seconds) else None


def _decode(response: httpx.Response) -> dict[str, Any]:
    _raise_for_error(response)
    body: dict[str, Any] = response.json()
    return {k: (np.asarray(v) if k in _ARRAYS else v) for k, v in body.items()}


def _invalid(detail: str) -> InvalidInput:
    return InvalidInput(422, "InvalidInput", detail)  # what the service would answer


def _path(model: str | None, op: str) -> str:
    return f"/v1/{op}" if model is None else f"/v1/models/{model}/{op}"


def _sent(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """The fields of a request body besides its rows: fresh_noise only when asked; score leaves out what is None
    (absent fields take the service's defaults)."""
    sent = {k: v for k, v in params.items() if k != "fresh_noise" or v}
    return {k: v for k, v in sent.items() if v is not None} if op == "score" else sent


def _chunk_seed(seed: int | None, chunk: int) -> int | None:
    # chunk 0 keeps the request's seed; chunk i > 0 draws from a seed derived from (seed, i), never repeating a
    # stream (seed None is the service's default seed 0); in [0, 2^63 - 1] like every seed the service takes
    if chunk == 0:
        return seed
    return int(np.random.SeedSequence([seed or 0, chunk]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _send(ctx: _Context, request: _Request) -> Flow[httpx.Response]:
    """Send; on 503 (QueueFull, NotReady) sleep Retry-After seconds (capped) and send again, `retries` times."""
    for attempt in range(ctx.retries + 1):
        response = yield request
        assert response is not None
        if response.status_code != 503 or attempt == ctx.retries:
            return response
        wait = _seconds(response.headers.get("retry-after", "1"))
        yield min(1.0 if wait is None else wait, ctx.max_retry_wait_s)
    raise AssertionError("unreachable")


def _get(ctx: _Context, path: str) -> Flow[dict[str, Any]]:
    response = yield from _send(ctx, _Request("GET", path))
    _raise_for_error(response)
    body: dict[str, Any] = response.json()
    return body


def _features(ctx: _Context, name: str, version: int | None = None) -> Flow[_Features]:
    """The model's feature names and width (GET /v1/models/{name}), cached per name and version."""
    known = ctx.features.get(name)
    if known is None or (version is not None and known.version != version):
        info = yield from _get(ctx, f"/v1/models/{name}")
        known = _Features(name, int(info["version"]), info["manifest"].get("feature_names"), int(info["input_dim"]))
        ctx.features[name] = known
    return known


def _default_model(ctx: _Context) -> Flow[str]:
    if ctx.default_model is None:
        yield from _list_models(ctx)
    if ctx.default_model is None:
        raise ModelNotFound(404, "ModelNotFound", "the service has no default model; name one with model=")
    return ctx.default_model


def _list_models(ctx: _Context) -> Flow[None]:
    """GET /v1/models: the default model's name and every loaded model's sizes."""
    listing = yield from _get(ctx, "/v1/models")
    default = listing.get("default_model")
    ctx.default_model = None if default is None else str(default)
    for m in listing.get("models", []):
        ctx.dims[str(m["name"])] = _Dims(int(m["input_dim"]), int(m["latent_dim"]), m["covariance"] == "full")


def _rows_per_answer(ctx: _Context, model: str | None, op: str, params: dict[str, Any], width: int) -> Flow[int]:
    """Rows whose answer fits the service's bound on an answer's numbers. Score's answer depends on the width of
    its rows alone; the others need the model's sizes (one GET /v1/models, cached)."""
    if op == "score":
        dims = _Dims(width, 0, False)
    else:
        name = model if model is not None else (yield from _default_model(ctx))
        if name not in ctx.dims:
            yield from _list_models(ctx)
        if name not in ctx.dims:
            return ctx.max_rows  # not loaded: the service says so
        dims = ctx.dims[name]
    per_row = values_per_row(op, params, dims.input_dim, dims.latent_dim, dims.full)
    return max(1, (ctx.max_values - len(OPERATIONS[op].scalars)) // max(per_row, 1))


def _frame_rows(frame: Any, f: _Features) -> tuple[np.ndarray, list[str]]:
    """A DataFrame's values (n, D) in the model's feature order, and its column names in that order."""
    try:
        return frame_rows(frame, f.names, f.width, f"model {f.model!r} version {f.version}")
    except FrameError as exc:
        raise _invalid(str(exc)) from None


def _matrix(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    return arr[None, :] if arr.ndim == 1 else arr


def _check_finite(arr: np.ndarray, field: str, columns: list[str] | None) -> None:
    # the service's own check (runtime/rows.py), made before sending: JSON cannot carry NaN or inf
    if arr.ndim != 2:
        return  # the service names the shape problem
    with np.errstate(over="ignore"):  # beyond float32 is inf for the service too
        bad = ~np.isfinite(arr.astype(np.float32))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        where = f"; column {columns[col]!r}" if columns else ""
        raise _invalid(f"{field}[{row}][{col}] is not a finite float32 number ({int(bad.sum())} such values){where}")


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' answers as one: array columns concatenated in order, scalars equal in every chunk."""
    first = parts[0]
    for part in parts[1:]:
        if (part.get("model"), part.get("version")) != (first.get("model"), first.get("version")):
            raise ModelChanged(
                409,
                "ModelChanged",
                f"model {first.get('model')!r} answered with version {first.get('version')}, then "
                f"{part.get('model')!r} version {part.get('version')} within one call (a new version was swapped "
                "in between its chunks); call again",
            )
        differ = [k for k, v in part.items() if k not in _ARRAYS and v != first.get(k)]
        if differ:
            raise ModelChanged(409, "ModelChanged", f"the chunks of one call disagree on {differ}; call again")
    return {k: (np.concatenate([p[k] for p in parts]) if k in _ARRAYS else v) for k, v in first.items()}


def _operate(ctx: _Context, model: str | None, op: str, x: Any, options: dict[str, Any]) -> Flow[dict[str, Any]]:
    """encode/decode/score: rows checked, sent in chunks of at most max_rows (and max_draws / draws per row) rows,
    answers merged; with a DataFrame or explain, checked against the model's feature names."""
    field, params = OPERATIONS[op].rows, _sent(op, options)
    assert field is not None
    draws_per_row = int(options.get(_DRAWS_PER_ROW.get(op, ""), 0) or 1)
    features, columns = None, None
    if is_frame(x):
        name = model if model is not None else (yield from _default_model(ctx))
        features = yield from _features(ctx, name)
        arr, columns = _frame_rows(x, features)
    else:
        arr = _matrix(x)
    _check_finite(arr, field, columns)
    fits = yield from _rows_per_answer(ctx, model, op, params, arr.shape[1] if arr.ndim == 2 else 0)
    size = max(1, min(ctx.max_rows, ctx.max_draws // max(draws_per_row, 1), fits))
    parts = []
    for i, start in enumerate(range(0, max(len(arr), 1), size)):
        body = {field: arr[start : start + size].tolist(), **params}
        if op != "score" and not params.get("fresh_noise"):  # score's noise: one block shared by all rows
            body["seed"] = _chunk_seed(params["seed"], i)
        parts.append(_decode((yield from _send(ctx, _Request("POST", _path(model, op), body)))))
    out = _merge(parts)
    if features is not None or options.get("explain"):
        yield from _name_features(ctx, out, features, model is None)
    return out


def _name_features(ctx: _Context, out: dict[str, Any], used: _Features | None, default: bool) -> Flow[None]:
    """Check that the frame was ordered for the model that answered; add feature_contributions to an explanation."""
    answered = yield from _features(ctx, str(out["model"]), int(out["version"]))
    stale = answered.version != out["version"]
    if used is not None and (used.model, used.names, used.width) != (answered.model, answered.names, answered.width):
        stale = True
    if stale:
        ctx.features.clear()
        if default:
            ctx.default_model = None
        raise ModelChanged(
            409,
            "ModelChanged",
            f"model {out['model']!r} version {out['version']} answered, but the feature names read were for "
            f"model {(used or answered).model!r} version {(used or answered).version}; call again",
        )
    if "feature_nll" in out:
        names = answered.names or [f"feature_{j}" for j in range(answered.width)]
        out["feature_contributions"] = {name: out["feature_nll"][:, j] for j, name in enumerate(names)}


def _sample(ctx: _Context, model: str | None, options: dict[str, Any]) -> Flow[dict[str, Any]]:
    params = _sent("sample", options)
    n = params.pop("n")
    parts, start = [], 0
    step = min(ctx.max_rows, (yield from _rows_per_answer(ctx, model, "sample", params, 0)))
    for i in range(max(1, -(-n // step))):  # ceil(n / step) requests, each its own stream
        count = min(step, n - start) if n > 0 else n
        body = {"n": count, **params}
        if not params.get("fresh_noise"):
            body["seed"] = _chunk_seed(params["seed"], i)
        parts.append(_decode((yield from _send(ctx, _Request("POST", _path(model, "sample"), body)))))
        start += count
    return _merge(parts)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _drive(flow: Flow[T], send: Callable[[_Request], httpx.Response]) -> T:
    try:
        step = next(flow)
        while True:
            if isinstance(step, _Request):
                step = flow.send(send(step))
            else:
                time.sleep(step)
                step = flow.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def _adrive(flow: Flow[T], send: Callable[[_Request], Coroutine[Any, Any, httpx.Response]]) -> T:
    try:
        step = next(flow)
        while True:
            if isinstance(step, _Request):
                step = flow.send(await send(step))
            else:
                await asyncio.sleep(step)
                step = flow.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
