"""A DataFrame's columns against a model's features: one rule for every Python face (the HTTP client and the Python
API). Duck-typed on `.columns` and `.to_numpy()` (pandas, polars and the like) or on `.column_names` and `.column()`
(a pyarrow Table or RecordBatch), so they work and none is imported.

The rule: a model trained with feature names takes a frame whose columns are exactly those names, each once, in any
order (missing, extra and repeated columns are refused, naming them); a model trained without names takes a frame
with as many columns as it has features, in order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


class FrameError(ValueError):
    """The frame's columns do not fit the model's features, or do not hold numbers."""


def is_frame(x: Any) -> bool:
    return _is_arrow(x) or (hasattr(x, "columns") and hasattr(x, "to_numpy"))  # pandas, polars, ...: no import needed


def _is_arrow(x: Any) -> bool:
    return hasattr(x, "column_names") and hasattr(x, "column")  # pyarrow's Table and RecordBatch


def listed(names: Sequence[str]) -> str:
    return repr(list(names)) if len(names) <= 10 else f"{list(names[:10])!r} and {len(names) - 10} more"


def feature_order(columns: Sequence[str], features: Sequence[str] | None, width: int, model: str) -> list[int]:
    """The positions of the model's features among `columns`, in the model's order; `model` names the model in the
    error ("model 'digits' version 3")."""
    if features is None:
        if len(columns) != width:
            raise FrameError(f"{model} takes {width} features (unnamed); the frame has {len(columns)} columns")
        return list(range(width))
    present, wanted = set(columns), set(features)  # sets: a frame of thousands of columns is checked at each batch
    missing = [n for n in features if n not in present]
    extra = [c for c in columns if c not in wanted]
    repeated = sorted(c for c, k in Counter(columns).items() if k > 1)
    if missing or extra or repeated:
        raise FrameError(
            f"the frame's columns differ from the features of {model}: missing {listed(missing)}, not features "
            f"{listed(extra)}"
            + (f", repeated {listed(repeated)}" if repeated else "")
            + (" (drop id and label columns first)" if extra else "")
        )
    position = {c: j for j, c in enumerate(columns)}  # each once (checked above)
    return [position[n] for n in features]


def dated_columns(frame: Any, columns: Sequence[str]) -> list[str]:
    """Those of the frame's columns (`columns`: its names, in its order) that hold dates or durations (pandas, numpy,
    polars and pyarrow types): they convert to (nano)seconds without complaint, and would be read as such numbers."""
    schema = getattr(frame, "schema", None) if _is_arrow(frame) else None
    dtypes = [f.type for f in schema] if schema is not None else getattr(frame, "dtypes", None)
    dated = []
    for name, given in zip(columns, dtypes if isinstance(dtypes, Iterable) else [], strict=False):
        # what a categorical (pandas) or dictionary-encoded (pyarrow) column holds: its categories' or values' type
        categories = getattr(given, "categories", None)
        dtype = getattr(categories, "dtype", None) or getattr(given, "value_type", None) or given
        temporal = getattr(dtype, "is_temporal", None)  # polars
        if (
            getattr(dtype, "kind", "") in ("m", "M")  # pandas, numpy
            or (callable(temporal) and temporal())
            or str(dtype).startswith(("timestamp", "date", "time", "duration"))  # pyarrow
        ):
            dated.append(name)
    return dated


def frame_rows(frame: Any, features: Sequence[str] | None, width: int, model: str) -> tuple[np.ndarray, list[str]]:
    """The frame's values as float64 (n, D) in the model's feature order (a missing value is NaN, for the finite
    check to name), and its column names in that order."""
    arrow = _is_arrow(frame)
    columns = [str(c) for c in (frame.column_names if arrow else frame.columns)]
    order = feature_order(columns, features, width, model)
    features_used = {columns[j] for j in order}
    dated = [name for name in dated_columns(frame, columns) if name in features_used]
    if dated:
        raise FrameError(
            f"the frame's column(s) {listed(dated)} hold dates or durations, not numbers: convert them as the model's "
            "training rows were, or leave them out"
        )
    try:
        if arrow:  # the features' columns only; a null becomes NaN
            picked = [np.asarray(frame.column(j).to_numpy(zero_copy_only=False), dtype=np.float64) for j in order]
            return np.column_stack(picked).reshape(-1, len(order)), [columns[j] for j in order]
        try:
            values = frame.to_numpy(dtype=np.float64, na_value=np.nan)  # pandas: a missing value becomes NaN
        except TypeError:
            values = frame.to_numpy()
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FrameError(f"the frame's columns must hold numbers: {exc}") from None
    return values[:, order], [columns[j] for j in order]
