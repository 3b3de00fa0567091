"""HTTP bodies: JSON rows to numpy (checked before they are queued, so one bad input never reaches a batch that
other requests share), the request parameter models (from contract/requests.py) parsed from JSON. What the
endpoints answer is documented in service/responses.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from contract.requests import describe
from runtime.rows import check_rows, taking
from service.errors import InvalidInput, PayloadTooLarge

T = TypeVar("T", bound=BaseModel)
Hint = Callable[[], bool] | None  # a cheap test that may rule out booleans among the rows (None: it cannot)


def parse_body(model: type[T], body: object) -> T:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(describe(exc)) from None


def to_matrix(
    value: object, field: str, width: int, max_rows: int, model: str = "", may_hold_bool: Hint = None
) -> np.ndarray:
    """A JSON array of rows -> float32 (n, width), or InvalidInput naming the field, row and column (and, for a
    wrong width, the model that answered: `model`, e.g. "digits version 3"). may_hold_bool (e.g. a call of
    rows_may_hold_bool): asked only when the rows hold an exact 0 or 1; False skips the scan for booleans."""
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be an array of rows")
    if not value:
        raise InvalidInput(f"{field} is empty; send at least one row")
    if len(value) > max_rows:
        raise PayloadTooLarge(f"{field} has {len(value)} rows; the limit is {max_rows} (VAE_MAX_ROWS)")
    if any(type(row) is not list or len(row) != width for row in value):
        # found before numpy reads the values: one row of 8M numbers (16 KB of gzip) cost the loop 0.3 s to refuse
        raise InvalidInput(_diagnose(value, field, width, model))
    try:
        arr = np.array(value)
    except ValueError:
        arr = np.empty(0, dtype=object)  # ragged: fall through to the row-by-row diagnosis
    if arr.ndim != 2 or arr.dtype.kind not in "iuf" or holds_bool(arr, value, may_hold_bool):
        raise InvalidInput(_diagnose(value, field, width, model))
    return check_rows(arr, field, width, max_rows, model)


def holds_bool(arr: np.ndarray, data: object, may_hold_bool: Hint = None) -> bool:
    """Whether nested lists `data`, read by numpy as `arr`, hold a JSON boolean among numbers (may_hold_bool: a
    cheaper test that can rule it out, asked only when the array holds an exact 0 or 1)."""
    # numpy reads [true, 1.5] as [1.0, 1.5]: a boolean among numbers leaves no trace in the array. Checking the
    # type of every value costs about as much as np.asarray itself (1.6 ms against 1.7 ms for 1024 x 64 floats),
    # so it runs only when some value is exactly 0 or 1, what a boolean becomes; that test costs 0.03 ms. Data
    # full of exact zeros (digit images) asks the hint (0.15 ms of token counting for 1024 x 64 floats in JSON)
    # and pays for the scan when it cannot rule booleans out; continuous features pay for neither.
    if not np.count_nonzero((arr == 0) | (arr == 1)):
        return False
    if may_hold_bool is not None and not may_hold_bool():
        return False
    leaves: Iterable[Any] = [data]
    for _ in range(arr.ndim):  # the array is regular, so every leaf sits at depth ndim
        leaves = chain.from_iterable(leaves)
    return bool in set(map(type, leaves))


def rows_may_hold_bool(body: bytes, params: BaseModel) -> bool:
    """Whether a JSON body may hold a boolean among its rows: more `true`/`false` tokens than the request's own
    boolean fields given in the body. A flat request model (no nested objects) holds one token per boolean field,
    so no more tokens than that proves the rows have none; a string containing "true" only makes it a cautious yes.
    Counting costs 0.15 ms for 1024 x 64 floats; the scan it spares costs as much as parsing the rows (holds_bool)."""
    tokens = count_words(body, b"true") + count_words(body, b"false")
    given = sum(isinstance(getattr(params, name), bool) for name in params.model_fields_set)  # not the defaults
    return tokens > given


# numpy's fixed cost (about 25 us a call) beats bytes.count only from about 24 KB of JSON numbers on; a 1-row body of
# digits (400 bytes) counts in 0.6 us with bytes.count, against 24 us
NUMPY_FROM_BYTES = 16 * 1024


def count_words(data: bytes, word: bytes, numpy_from: int = NUMPY_FROM_BYTES) -> int:
    """Occurrences of `word` in `data` (non-overlapping, as bytes.count: the words counted here cannot overlap
    themselves). From `numpy_from` bytes on, numpy finds the candidates by their first byte, then checks the rest
    of each at once, 3x faster than bytes.count over 100 KB of numbers, where the first byte is rare."""
    if len(data) < numpy_from or len(word) == 1:  # one byte: bytes.count scans with memchr, no index array
        return data.count(word)
    b = np.frombuffer(data, dtype=np.uint8)
    at = np.flatnonzero(b[: max(b.size - len(word) + 1, 0)] == word[0])
    match = np.ones(at.size, dtype=bool)
    for k in range(1, len(word)):
        match &= b[at + k] == word[k]
    return int(np.count_nonzero(match))


JSON_CONTAINER_ROOM = 1024  # arrays and objects a request may hold beside one per row: parameters, shapes, outputs
# Object keys a request may hold: its fields and, in V2, its tensors' fields and up to 64 parameters (about 100 in
# all), many times over (rows are arrays, never objects). Counted by colons: one inside a string counts too.
JSON_KEY_ROOM = 4096


def check_json_containers(data: bytes, max_rows: int) -> None:
    """PayloadTooLarge, before parsing, when a JSON body holds more arrays and objects than one per row allowed
    (VAE_MAX_ROWS) and JSON_CONTAINER_ROOM more. orjson parses numbers fast (8M in 0.15 s here) but not containers:
    it allocates an object for each, and the garbage collector runs over them as they come, so a 16 MiB body of
    empty arrays held the event loop (and the interpreter's lock) for 1 to 4 s. Counting the brackets first takes a
    few milliseconds; one inside a string counts too, which only a request with over a thousand of them notices.
    Object keys cost orjson as much (16 MiB of them held the loop about 2 s): more than JSON_KEY_ROOM are refused."""
    allowed = max_rows + JSON_CONTAINER_ROOM
    if len(data) > allowed:  # else too short to hold more
        found = count_words(data, b"[") + count_words(data, b"{")
        if found > allowed:
            raise PayloadTooLarge(
                f"the body holds {found} JSON arrays and objects; a request may hold one per row, at most {max_rows} "
                f"rows (VAE_MAX_ROWS), and {JSON_CONTAINER_ROOM} more: send fewer rows per request"
            )
    if len(data) > JSON_KEY_ROOM and (keys := count_words(data, b":")) > JSON_KEY_ROOM:
        raise PayloadTooLarge(
            f"the body holds {keys} colons, each counted as a JSON object key (inside strings too); a request holds "
            f"at most {JSON_KEY_ROOM}"
        )


def _diagnose(rows: list[Any], field: str, width: int, model: str = "") -> str:
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"{field}[{i}] must be an array of numbers, got {type(row).__name__}"
        if len(row) != width:
            return f"{field} rows must have {width} values; row {i} has {len(row)}{taking(model, width)}"
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return f"{field}[{i}][{j}] must be a number, got {_json_type(v)}"
    return f"{field} must be an array of rows of numbers"


def _json_type(v: object) -> str:
    names = {type(None): "null", bool: "boolean", str: "string", list: "array", dict: "object"}
    return names.get(type(v), type(v).__name__)
