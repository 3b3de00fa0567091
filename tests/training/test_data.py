"""Loading and checking user data: every bad input is a DataError that names the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import MIN_ROWS, load_table, split_rows
from training.distributed import Dist
from training.errors import DataError, UnsupportedFormat


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_builtin_digits_is_scaled_to_unit_interval_with_labels_and_image_shape() -> None:
    table = load_table("builtin:digits")
    assert table.x.shape == (1797, 64) and table.x.dtype == np.float32
    assert table.x.min() == 0.0 and table.x.max() == 1.0
    assert table.labels is not None and table.image_shape == (8, 8)


def test_unknown_builtin_is_refused() -> None:
    with pytest.raises(DataError, match="unknown built-in data set 'mnist'"):
        load_table("builtin:mnist")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_table(str(tmp_path / "nope.csv"))


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"x")
    with pytest.raises(UnsupportedFormat, match="unsupported data format"):
        load_table(str(path))


def test_csv_header_is_detected_and_columns_can_be_chosen(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i * 2},{i % 3},k{i % 2}" for i in range(12))
    path = _write_csv(tmp_path / "d.csv", "a,b,c,label\n" + rows + "\n")
    table = load_table(str(path), columns=["a", "c"], label_column="label")
    assert table.feature_names == ["a", "c"]
    np.testing.assert_array_equal(table.x[:, 0], np.arange(12))
    assert table.labels is not None and table.labels[1] == "k1"


def test_csv_without_header_uses_positional_names(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "\n".join(f"{i},{i + 1}" for i in range(12)))
    table = load_table(str(path))
    assert table.feature_names == ["column_0", "column_1"] and table.x.shape == (12, 2)


def test_non_numeric_csv_column_is_named_with_its_row_and_the_way_out(tmp_path: Path) -> None:
    rows = [f"{i},{i}" for i in range(12)]
    rows[4] = "4,oops"
    path = _write_csv(tmp_path / "d.csv", "amount,fee\n" + "\n".join(rows))
    with pytest.raises(DataError, match=r"column 'fee' is not numeric \(row 4, 0-based after any header, holds 'oops'"):
        load_table(str(path))


def test_nan_and_infinite_values_are_counted_with_the_first_row(tmp_path: Path) -> None:
    x = np.ones((20, 3))
    x[5, 1] = np.nan
    x[9, 2] = np.inf
    x[12, 0] = 1e300  # finite as float64, but the model computes in float32: it would turn the loss to NaN
    np.save(tmp_path / "d.npy", x)
    with pytest.raises(DataError, match=r"3 NaN or infinite values \(or beyond float32; .* row 5 .*'column 1'"):
        load_table(str(tmp_path / "d.npy"))


def test_empty_csv_cells_are_reported_as_missing_with_their_row_and_column(tmp_path: Path) -> None:
    rows = [f"{i},{i}" for i in range(12)]
    rows[3] = "3,"
    path = _write_csv(tmp_path / "d.csv", "a,b\n" + "\n".join(rows))
    with pytest.raises(DataError, match=r"1 row has a missing value .* row 3 .*'b': pass --na drop"):
        load_table(str(path))


def test_too_few_rows_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.ones((MIN_ROWS - 1, 3)))
    with pytest.raises(DataError, match=f"{MIN_ROWS - 1} rows; at least {MIN_ROWS}"):
        load_table(str(tmp_path / "d.npy"))


@pytest.mark.parametrize("shape", [(30,), (5, 6, 2)])
def test_arrays_that_are_not_two_dimensional_are_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "d.npy", np.ones(shape))
    with pytest.raises(DataError, match="expected a 2-D array"):
        load_table(str(tmp_path / "d.npy"))


def test_ragged_csv_line_is_named(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "a,b\n1,2\n3\n" + "\n".join("1,2" for _ in range(12)))
    with pytest.raises(DataError, match="line 3 has 1 fields, expected 2"):
        load_table(str(path))


def test_unknown_csv_column_lists_the_available_ones(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "a,b\n" + "\n".join("1,2" for _ in range(12)))
    with pytest.raises(DataError, match=r"no column named 'zz'; columns are \['a', 'b'\]"):
        load_table(str(path), columns=["zz"])


def test_npz_needs_a_key_when_it_holds_several_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", train=np.ones((12, 2)), other=np.zeros((12, 2)))
    with pytest.raises(DataError, match="choose one with --key"):
        load_table(str(tmp_path / "d.npz"))
    with pytest.raises(DataError, match="no array named 'x'"):
        load_table(str(tmp_path / "d.npz"), key="x")
    assert load_table(str(tmp_path / "d.npz"), key="train").x.shape == (12, 2)


def test_non_numeric_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.array([["a", "b"]] * 12))
    with pytest.raises(DataError, match="expected real numbers"):
        load_table(str(tmp_path / "d.npy"))


def test_split_is_deterministic_for_a_seed_and_disjoint() -> None:
    a, b = split_rows(100, 0.1, 0.2, seed=7), split_rows(100, 0.1, 0.2, seed=7)
    np.testing.assert_array_equal(a.train, b.train)
    assert (len(a.val), len(a.test), len(a.train)) == (10, 20, 70)
    assert len(set(a.train) | set(a.val) | set(a.test)) == 100
    assert not np.array_equal(split_rows(100, 0.1, 0.2, seed=8).val, a.val)


def test_a_test_fraction_of_zero_gives_every_row_to_training_and_validation() -> None:
    split = split_rows(100, 0.1, 0.0, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (90, 10, 0)


def test_parquet_columns_are_read_by_name(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"a": list(range(12)), "b": [float(i) / 2 for i in range(12)], "kind": ["x", "y"] * 6})
    pq.write_table(table, tmp_path / "d.parquet")
    loaded = load_table(str(tmp_path / "d.parquet"), label_column="kind")
    assert loaded.feature_names == ["a", "b"] and loaded.x.shape == (12, 2)
    assert loaded.labels is not None and list(loaded.labels[:2]) == ["x", "y"]
    with pytest.raises(DataError, match="column 'kind' is not numeric"):
        load_table(str(tmp_path / "d.parquet"))


def test_npy_files_are_memory_mapped_not_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.ones((20, 3), dtype=np.float64))
    table = load_table(str(tmp_path / "d.npy"))
    assert isinstance(table.x, np.memmap) and table.x.shape == (20, 3)


def test_rank_shares_are_contiguous_disjoint_and_cover_every_row() -> None:
    shares = [Dist(rank=r, world=4).share(10) for r in range(4)]
    assert [(s.start, s.stop) for s in shares] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert Dist().share(10) == slice(0, 10)


def _write_parquet(path: Path, x: np.ndarray, row_group_size: int, **extra: list[object]) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    columns = {f"f{j}": x[:, j] for j in range(x.shape[1])}
    pq.write_table(pa.table({**columns, **extra}), path, row_group_size=row_group_size)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder standing in for $TMPDIR, where the parquet scratch copy goes."""
    import tempfile

    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_parquet_is_copied_row_group_by_row_group_into_a_scratch_file_that_is_then_removed(
    tmp_path: Path, scratch: Path
) -> None:
    x = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)
    _write_parquet(tmp_path / "d.parquet", x, row_group_size=64, kind=[i % 3 for i in range(1000)])
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "d.parquet").metadata.num_row_groups == 16
    table = load_table(str(tmp_path / "d.parquet"), label_column="kind")
    assert isinstance(table.x, np.memmap) and table.x.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(table.x), x)
    assert table.feature_names == ["f0", "f1", "f2"] and list(table.labels[:4]) == [0, 1, 2, 0]  # type: ignore[index]
    assert list(scratch.iterdir()) == []  # unlinked once mapped; the mapping keeps the data until it is dropped


def test_parquet_nulls_are_reported_as_nan_with_their_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    values: list[float | None] = [float(i) for i in range(30)]
    values[17] = None
    pq.write_table(pa.table({"a": values, "b": [1] * 30}), tmp_path / "d.parquet", row_group_size=8)
    with pytest.raises(DataError, match=r"1 NaN or infinite values .* row 17 .*'a'"):
        load_table(str(tmp_path / "d.parquet"))


def test_a_file_that_is_not_parquet_is_refused_with_its_name(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    (tmp_path / "d.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"d.parquet: cannot read as .parquet"):
        load_table(str(tmp_path / "d.parquet"))


def test_a_full_scratch_disk_is_reported_before_the_parquet_copy_starts(
    tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    _write_parquet(tmp_path / "d.parquet", np.ones((100, 3), dtype=np.float32), row_group_size=10)
    with pytest.raises(DataError, match=r"d.parquet: no room for its 0 MiB scratch copy in .*scratch; point TMPDIR"):
        load_table(str(tmp_path / "d.parquet"))
    assert list(scratch.iterdir()) == []


def test_parquet_text_columns_read_by_the_text_rule_and_a_bad_cell_is_named_by_its_row(
    tmp_path: Path, scratch: Path
) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    values = [f" {i}.5 " for i in range(30)]
    pq.write_table(pa.table({"a": values, "b": list(range(30))}), tmp_path / "d.parquet", row_group_size=8)
    np.testing.assert_array_equal(load_table(str(tmp_path / "d.parquet")).x[:, 0], np.arange(30) + 0.5)
    values[19] = "oops"  # in the third row group
    pq.write_table(pa.table({"a": values, "b": list(range(30))}), tmp_path / "d.parquet", row_group_size=8)
    with pytest.raises(DataError, match=r"column 'a' is not numeric \(row 19, 0-based after any header, holds 'oops'"):
        load_table(str(tmp_path / "d.parquet"))
    assert list(scratch.iterdir()) == []


def test_a_file_whose_name_holds_glob_characters_is_read_as_that_file(tmp_path: Path) -> None:
    np.save(tmp_path / "d[1].npy", np.arange(60, dtype=np.float32).reshape(20, 3))
    table = load_table(str(tmp_path / "d[1].npy"))
    assert table.x.shape == (20, 3)
