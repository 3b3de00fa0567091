"""The one rule for a DataFrame's columns against a model's features (contract/frames.py), duck-typed and pandas."""

from __future__ import annotations

import numpy as np
import pytest

from contract.frames import FrameError, feature_order, frame_rows, is_frame

MODEL = "model 'm' version 2"


class _Frame:
    """The two things the rule uses of a DataFrame."""

    def __init__(self, columns: list[str], values: np.ndarray) -> None:
        self.columns, self._values = columns, values

    def to_numpy(self) -> np.ndarray:
        return self._values


def test_columns_are_matched_by_name_in_any_order() -> None:
    frame = _Frame(["c", "a", "b"], np.array([[3.0, 1.0, 2.0], [6.0, 4.0, 5.0]]))
    values, columns = frame_rows(frame, ["a", "b", "c"], 3, MODEL)
    assert values.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and values.dtype == np.float64
    assert columns == ["a", "b", "c"] and is_frame(frame) and not is_frame(np.zeros((1, 3)))


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (["a", "b"], "missing ['c'], not features []"),
        (["a", "b", "c", "id"], "missing [], not features ['id'] (drop id and label columns first)"),
        (["a", "b", "c", "a"], "not features [], repeated ['a']"),
        (["b", "c", "c"], "missing ['a'], not features [], repeated ['c']"),
    ],
)
def test_missing_extra_and_repeated_columns_are_refused_naming_them(columns: list[str], message: str) -> None:
    with pytest.raises(FrameError) as info:
        feature_order(columns, ["a", "b", "c"], 3, MODEL)
    assert str(info.value).startswith(f"the frame's columns differ from the features of {MODEL}: ")
    assert message in str(info.value)


def test_a_long_list_of_names_is_cut_short() -> None:
    with pytest.raises(FrameError, match=r"not features \['x0', .*'x9'\] and 5 more"):
        feature_order([f"x{j}" for j in range(15)], [], 0, MODEL)


def test_a_model_without_names_takes_its_width_in_order() -> None:
    assert feature_order(["p", "q", "p"], None, 3, MODEL) == [0, 1, 2]
    with pytest.raises(FrameError, match=r"model 'm' version 2 takes 3 features \(unnamed\); the frame has 2 columns"):
        feature_order(["p", "q"], None, 3, MODEL)


def test_pandas_missing_values_become_nan_and_text_is_refused() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"b": pd.array([1.0, None], dtype="Float64"), "a": [1, 2]})
    values, _ = frame_rows(frame, ["a", "b"], 2, MODEL)
    assert values[0].tolist() == [1.0, 1.0] and np.isnan(values[1, 1])
    with pytest.raises(FrameError, match="the frame's columns must hold numbers"):
        frame_rows(pd.DataFrame({"a": ["x"], "b": [1.0]}), ["a", "b"], 2, MODEL)
    with pytest.raises(FrameError, match=r"repeated \['a'\]"):
        frame_rows(pd.DataFrame([[1.0, 2.0, 3.0]], columns=["a", "b", "a"]), ["a", "b"], 2, MODEL)
