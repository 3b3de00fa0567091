"""Tables read whole (training) and in batches (vae-score) give the same features on the same rows."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_tables.columns import feature_matrix
from vae_tables.errors import DataError
from vae_tables.frames import iter_frames, read_frame
from vae_tables.missing import Na

ROWS = ["id,a,flag,b", *(f"00{i},{i / 7:.6f},{'true' if i % 3 else 'false'},{i if i % 5 else 'NA'}" for i in range(40))]


def _batched(path: Path, batch_rows: int, na: Na = "drop") -> tuple[np.ndarray, int]:
    xs, dropped, first = [], 0, 0
    for frame in iter_frames(path, delimiter=None, batch_rows=batch_rows):
        found = feature_matrix(frame, columns=["a", "flag", "b"], na=na, source="d", first_row=first, whole=False)
        xs.append(found.x)
        dropped, first = dropped + found.dropped, first + frame.num_rows
    return np.concatenate(xs), dropped


@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz"])
def test_batches_of_text_give_the_numbers_of_the_whole_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    text = "\n".join(ROWS).encode()
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    whole = feature_matrix(read_frame(path), columns=["a", "flag", "b"], na="drop", source="d")
    assert read_frame(path).schema.field("flag").type == pa.bool_()  # typed by pyarrow when read whole...
    batched, dropped = _batched(path, batch_rows=7)  # ...text when read in batches: the same numbers
    np.testing.assert_array_equal(batched, whole.x)
    assert dropped == whole.dropped == 8
    assert next(iter_frames(path, delimiter=None, batch_rows=7)).column("id").to_pylist()[:2] == ["000", "001"]


def test_a_missing_value_in_a_later_batch_is_named_by_its_row_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("\n".join(ROWS))
    with pytest.raises(DataError, match=r"among rows 0-6; the first is row 0 .*column 'b'"):
        _batched(tmp_path / "d.csv", batch_rows=7, na="stop")
    (tmp_path / "e.csv").write_text("\n".join(ROWS[:1] + [r.replace(",NA", ",1") for r in ROWS[1:19]] + ROWS[19:]))
    with pytest.raises(DataError, match=r"among rows 14-20; the first is row 20 "):
        _batched(tmp_path / "e.csv", batch_rows=7, na="stop")


def test_a_ragged_line_in_a_batch_is_named_by_its_line(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("\n".join([*ROWS[:30], "1,2", *ROWS[30:]]))
    with pytest.raises(DataError, match=r"line 31 has 2 fields, expected 4"):
        list(iter_frames(tmp_path / "d.csv", delimiter=None, batch_rows=7))


def test_npy_and_parquet_batches(tmp_path: Path) -> None:
    x = np.arange(30.0).reshape(10, 3)
    np.save(tmp_path / "d.npy", x)
    frames = list(iter_frames(tmp_path / "d.npy", delimiter=None, batch_rows=4, array_names=["p", "q", "r"]))
    assert [f.num_rows for f in frames] == [4, 4, 2] and frames[0].column_names == ["p", "q", "r"]
    with pytest.raises(DataError, match="d.npy: 3 columns; 2 are needed"):
        list(iter_frames(tmp_path / "d.npy", delimiter=None, batch_rows=4, array_names=["p", "q"]))
    pq.write_table(pa.table({"a": x[:, 0]}), tmp_path / "d.parquet", row_group_size=3)
    assert sum(f.num_rows for f in iter_frames(tmp_path / "d.parquet", delimiter=None, batch_rows=4)) == 10


def test_files_no_reader_takes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(DataError, match=r"d.json: cannot read .json; use .parquet, .npy or .csv"):
        list(iter_frames(tmp_path / "d.json", delimiter=None, batch_rows=4))
    (tmp_path / "e.parquet").write_text("a,b\n")
    with pytest.raises(DataError, match="e.parquet: cannot read as .parquet"):
        list(iter_frames(tmp_path / "e.parquet", delimiter=None, batch_rows=4))
