"""Answers within bounds: how many numbers one answer may hold (VAE_MAX_ANSWER_VALUES), and big answers serialised
off the event loop, in slices, so a health check or a 1-row request is not held up while one is built.

orjson holds the GIL for a whole call (about 125 ns a value here: 130 ms for 2^20 values). Serialised in slices of
SLICE_VALUES on a worker thread, the event loop gets the GIL back between slices (Python's switch interval), so it
waits a few milliseconds at most, whatever the answer's size. The bytes are those of one orjson.dumps call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from runtime.operations import AnswerSize
from service.errors import PayloadTooLarge

NUMPY = orjson.OPT_SERIALIZE_NUMPY
INLINE_VALUES = 1 << 14  # up to here an answer is finished and serialised on the event loop (about 2 ms)
SLICE_VALUES = 1 << 14  # numbers serialised per orjson call off the loop
BINARY_FACTOR = 4  # JSON spends up to 16 bytes a float32 value, V2's binary outputs 4
T = TypeVar("T")


@dataclass(frozen=True)
class AnswerForms:
    """How a face names its answers' two forms, and how its client asks for raw bytes: what a size refusal says."""

    typed: str
    raw: str
    ask_raw: str


REST_FORMS = AnswerForms("JSON answer", "V2 binary-output answer", "ask for V2 binary outputs")
GRPC_FORMS = AnswerForms(
    "answer in typed contents",
    "answer in raw contents",
    "ask for raw contents with the request parameter binary_data_output: true",
)


def check_answer_size(
    size: AnswerSize, limit: int, binary: bool, max_rows: int, forms: AnswerForms = REST_FORMS
) -> None:
    """PayloadTooLarge, before any work, when an answer would hold more numbers than allowed (its hint never names
    more rows than max_rows, VAE_MAX_ROWS, allows, and names the face's remedy: `forms`)."""
    allowed = limit * BINARY_FACTOR if binary else limit
    if size.values <= allowed:
        return
    fits = max(1, min(max_rows, (allowed - size.scalars) // max(size.per_row, 1)))
    form = forms.raw if binary else forms.typed
    hint = f"send at most {fits} rows per request" if size.rows > fits else "ask for fewer draws per row"
    more = "" if binary else f", or {forms.ask_raw} (up to {limit * BINARY_FACTOR} numbers)"
    raise PayloadTooLarge(
        f"this answer would hold {size.values} numbers ({size.rows} rows x {size.per_row}); one {form} holds "
        f"at most {allowed} (VAE_MAX_ANSWER_VALUES): {hint}{more}"
    )


async def off_loop(values: int, work: Callable[..., T], *args: Any) -> T:
    """work(*args) on the event loop when the answer is small, else on a worker thread."""
    if values <= INLINE_VALUES:
        return work(*args)
    return await asyncio.to_thread(work, *args)


def render(payload: Any, values: int) -> bytes:
    """The JSON bytes of an answer of `values` numbers: one orjson call when small, else a slice at a time."""
    return orjson.dumps(payload, option=NUMPY) if values <= INLINE_VALUES else dumps(payload)


def dumps(value: Any) -> bytes:
    """orjson.dumps(value, OPT_SERIALIZE_NUMPY), with big numpy arrays serialised a slice of rows at a time."""
    if isinstance(value, np.ndarray) and value.size > SLICE_VALUES and value.ndim >= 1:
        step = max(1, SLICE_VALUES * value.shape[0] // value.size)  # rows per slice
        parts = [orjson.dumps(value[i : i + step], option=NUMPY)[1:-1] for i in range(0, value.shape[0], step)]
        return b"[" + b",".join(parts) + b"]"
    if isinstance(value, dict):
        return b"{" + b",".join(orjson.dumps(str(k)) + b":" + dumps(v) for k, v in value.items()) + b"}"
    if isinstance(value, list | tuple) and any(isinstance(v, dict | np.ndarray) for v in value):
        return b"[" + b",".join(dumps(v) for v in value) + b"]"
    return orjson.dumps(value, option=NUMPY)
