"""Reading text and parquet tables for training (tables/ through load_table): every refusal says what to do."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pa = pytest.importorskip("pyarrow")

from training.data import load_table  # noqa: E402
from training.errors import DataError  # noqa: E402
from vae_tables.columns import Features, feature_matrix  # noqa: E402
from vae_tables.frames import iter_frames, read_frame  # noqa: E402


def _write(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


def _features(path: Path, **options: object) -> Features:
    delimiter = options.pop("delimiter", None)
    frame = read_frame(path, delimiter=delimiter)  # type: ignore[arg-type]
    return feature_matrix(frame, columns=None, source=str(path), **options)  # type: ignore[arg-type]


ROWS = "\n".join(f"{i};{i * 2}" for i in range(12))


def test_semicolon_file_without_a_delimiter_is_refused_with_the_option_to_pass(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a;b\n" + ROWS)
    with pytest.raises(DataError, match=r"d.csv: looks semicolon-separated: pass --delimiter ';'"):
        read_frame(path)


def test_semicolon_file_reads_with_its_delimiter(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a;b\n" + ROWS)
    table = load_table(str(path), delimiter=";")
    assert table.feature_names == ["a", "b"] and table.x.shape == (12, 2)
    np.testing.assert_array_equal(table.x[:, 1], np.arange(12) * 2)


def test_tab_separated_csv_gets_the_tab_advice_and_reads_with_backslash_t(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a\tb\n" + ROWS.replace(";", "\t"))
    with pytest.raises(DataError, match=r"looks tab-separated: pass --delimiter '\\t'"):
        read_frame(path)
    assert read_frame(path, delimiter="\\t").column_names == ["a", "b"]


def test_a_delimiter_longer_than_one_character_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="--delimiter must be one character"):
        read_frame(path, delimiter=";;")


def test_tsv_is_read_as_tab_separated(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "a\tb\n" + ROWS.replace(";", "\t"))
    table = load_table(str(path))
    assert table.feature_names == ["a", "b"] and table.x.shape == (12, 2)


@pytest.mark.parametrize("name", ["d.csv.gz", "d.tsv.gz", "d.txt"])
def test_gzip_and_txt_variants_are_read(tmp_path: Path, name: str) -> None:
    sep = "\t" if ".tsv" in name else ","
    path = _write(tmp_path / name, f"a{sep}b\n" + ROWS.replace(";", sep))
    np.testing.assert_array_equal(load_table(str(path)).x[:, 0], np.arange(12))


def test_plain_text_named_gz_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.gz"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"cannot decompress .* not gzip or is cut short; check it with `gzip -t"):
        read_frame(path)


def test_cut_short_gzip_is_refused(tmp_path: Path) -> None:
    rows = "".join(f"{v:.6f},{v * 2:.6f}\n" for v in np.random.default_rng(0).random(20000))
    whole = gzip.compress(("a,b\n" + rows).encode())
    path = tmp_path / "d.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="cannot decompress"):
        read_frame(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(DataError, match="d.csv: empty file"):
        read_frame(_write(tmp_path / "d.csv", text))


@pytest.mark.parametrize("token", ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"])
def test_na_tokens_stop_with_row_column_and_the_option_to_drop(tmp_path: Path, token: str) -> None:
    rows = [f"{i},{i}" for i in range(12)]
    rows[5] = f"5,{token}"
    path = _write(tmp_path / "d.csv", "a,b\n" + "\n".join(rows))
    with pytest.raises(DataError, match=r"1 row has a missing value .*row 5 .*column 'b': pass --na drop"):
        _features(path)


def test_na_drop_leaves_those_rows_out_and_counts_them(tmp_path: Path) -> None:
    rows = [f"{i},{i},k{i}" for i in range(14)]
    rows[2], rows[7] = "2,NA,k2", ",7,k7"
    path = _write(tmp_path / "d.csv", "a,b,label\n" + "\n".join(rows))
    features = feature_matrix(read_frame(path), columns=None, label="label", na="drop", source="d")
    assert features.dropped == 2 and features.x.shape == (12, 2)
    assert 2 not in features.kept and 7 not in features.kept
    assert features.labels is not None and list(features.labels[:3]) == ["k0", "k1", "k3"]
    table = load_table(str(path), label_column="label", na="drop")
    assert table.rows_dropped == 2 and table.x.shape == (12, 2)


def test_an_infinite_value_left_after_na_drop_is_named_by_its_row_in_the_file(tmp_path: Path) -> None:
    rows = [f"{i},{i}" for i in range(14)]
    rows[2], rows[9], rows[11] = "2,NA", "9,inf", "11,1e300"  # 1e300 is finite, but not as float32
    path = _write(tmp_path / "d.csv", "a,b\n" + "\n".join(rows))
    with pytest.raises(DataError, match=r"2 infinite values \(or beyond float32\); the first is in row 9 \(0-based"):
        load_table(str(path), na="drop")


def test_na_drop_that_leaves_no_row_names_the_emptiest_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,b\n" + "\n".join(f"{i}," for i in range(12)))
    with pytest.raises(DataError, match=r"every row has a missing value \(column 'b' has the most\)"):
        _features(path, na="drop")


def test_booleans_become_zero_and_one(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{'true' if i % 2 else 'False'}" for i in range(12))
    path = _write(tmp_path / "d.csv", "a,flag\n" + rows)
    assert read_frame(path).schema.field("flag").type == pa.bool_()
    np.testing.assert_array_equal(_features(path).x[:, 1], np.arange(12) % 2)


def test_id_column_is_left_out_with_exclude_columns(tmp_path: Path) -> None:
    rows = "\n".join(f"C-{i},{i},{i / 2}" for i in range(12))
    path = _write(tmp_path / "d.csv", "customer_id,a,b\n" + rows)
    table = load_table(str(path), exclude_columns=["customer_id"])
    assert table.feature_names == ["a", "b"] and table.x.shape == (12, 2)


def test_non_numeric_column_is_named_with_its_row_and_the_way_out(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},C-{i + 14}" for i in range(12))
    path = _write(tmp_path / "d.csv", "a,customer_id\n" + rows)
    with pytest.raises(
        DataError,
        match=r"column 'customer_id' is not numeric \(row 0, 0-based after any header, holds 'C-14'\): "
        r"leave it out with --exclude-columns customer_id, or choose columns with --columns",
    ):
        _features(path)


def test_decimal_commas_get_a_hint(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a;b\n" + "\n".join(f"{i};{i},5" for i in range(12)))
    with pytest.raises(DataError, match=r"holds '0,5'; a decimal comma\? write numbers with '\.'"):
        _features(path, delimiter=";")


def test_unknown_excluded_column_lists_the_available_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,b\n" + "\n".join("1,2" for _ in range(12)))
    with pytest.raises(DataError, match=r"no column named 'id'; columns are \['a', 'b'\]"):
        load_table(str(path), exclude_columns=["id"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"columns": ["a", "b", "label"], "label_column": "label"},
            r"--label-column 'label' is also in --columns; the model never sees its label",
        ),
    ],
)
def test_a_label_among_the_features_is_refused(tmp_path: Path, options: dict[str, object], message: str) -> None:
    path = _write(tmp_path / "d.csv", "a,b,c,label\n" + "\n".join(f"{i},{i},{i},{i % 2}" for i in range(12)))
    with pytest.raises(DataError, match=message):
        load_table(str(path), **options)  # type: ignore[arg-type]


def test_ragged_line_is_named_by_its_line_in_the_file(tmp_path: Path) -> None:
    lines = ["a,b,c,d,e", *(f"{i},1,2,3,4" for i in range(12))]
    lines[4] = ""  # a blank line: ignored, but still counted as a line of the file
    lines[6] = "5,1,2,3"
    path = _write(tmp_path / "d.csv", "\n".join(lines))
    with pytest.raises(DataError, match=r"line 7 has 4 fields, expected 5 \(like the first line\): '5,1,2,3'; fix or"):
        read_frame(path)


def test_the_reader_hands_pyarrow_no_python_callback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Python invalid_row_handler is released by pyarrow's reader threads, and when that happened while the
    # interpreter exited the process aborted (exit 134 for a data error that must exit 2; intermittent, seen on
    # busy CPUs). So no parse option may carry a Python callable; a ragged line is still named (test above).
    import pyarrow.csv as pa_csv

    given: list[dict[str, object]] = []
    real = pa_csv.ParseOptions

    def recording(**kwargs: object) -> object:
        given.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(pa_csv, "ParseOptions", recording)
    path = _write(tmp_path / "d.csv", "a,b\n" + "\n".join(f"{i},{i}" for i in range(12)))
    read_frame(path)
    list(iter_frames(path, delimiter=None, batch_rows=5))
    assert given and not any(callable(v) for kwargs in given for v in kwargs.values())


def test_numeric_first_line_means_no_header_and_positional_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "\n".join(f"{i},{i + 1},NA" if i == 0 else f"{i},{i + 1},0" for i in range(12)))
    frame = read_frame(path)
    assert frame.column_names == ["column_0", "column_1", "column_2"] and frame.num_rows == 12


def test_whole_numbers_counting_up_on_the_first_line_are_a_header_as_pandas_writes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4))
    pd.DataFrame(x).to_csv(tmp_path / "a.csv", index=False)  # header 0,1,2,3: not a row of the data
    table = load_table(str(tmp_path / "a.csv"))
    assert table.feature_names == ["0", "1", "2", "3"] and np.allclose(table.x, x, atol=1e-6)
    assert "the first line (0, 1, 2, ...) is read as the header" in caplog.text
    pd.DataFrame(x).to_csv(tmp_path / "b.csv")  # ,0,1,2,3 above the row index: the index is warned of as ever
    assert read_frame(tmp_path / "b.csv").column_names == ["column_0", "0", "1", "2", "3"]
    years = "2019,2020,2021\n" + "\n".join(f"{a:.3f},{b:.3f},{c:.3f}" for a, b, c in x[:, :3])
    assert read_frame(_write(tmp_path / "y.csv", years)).column_names == ["2019", "2020", "2021"]
    # rows of data: two columns (0,1 is a pair of flags), numbers that do not count up, or a second line that does
    for body in ("0,1\n1,0\n1,1", "1,2,4\n2,3,5", "1,2,3\n2,3,4\n5,6,7"):
        frame = read_frame(_write(tmp_path / "d.csv", body))
        assert frame.num_rows == body.count("\n") + 1 and frame.column_names[0] == "column_0"


def test_a_first_line_naming_every_feature_is_the_header_for_scoring_even_as_numbers(tmp_path: Path) -> None:
    # a model fitted on a DataFrame with columns 5, 7, 9: its own to_csv() output is scored by those names
    body = "\n".join(f"{i},{i + 1},{i + 2}" for i in range(4))
    for header in ("5,7,9", "9,5,7", "id,5,7,9", ",5,7,9"):  # the last: DataFrame.to_csv() with its index
        extra = header.startswith(("id", ","))  # a first column beside the features
        rows = "\n".join((f"{i}," if extra else "") + f"{i + 1},{i + 2},{i + 3}" for i in range(4))
        path = _write(tmp_path / "d.csv", header + "\n" + rows)
        frame = pa.concat_tables(iter_frames(path, delimiter=None, batch_rows=3, array_names=["5", "7", "9"]))
        named = header.split(",")
        assert frame.column_names == (["column_0", *named[1:]] if header.startswith(",") else named)
        assert frame.num_rows == 4
    frame = pa.concat_tables(
        iter_frames(_write(tmp_path / "e.csv", body), delimiter=None, batch_rows=3, array_names=["5", "7", "9"])
    )
    assert frame.column_names == ["column_0", "column_1", "column_2"] and frame.num_rows == 4  # no header: rows
    # rows that hold the names too: two flags named 0 and 1 (1,0 is a row), or a second line like the first
    for body, names in (("1,0\n0,0\n1,1", ["0", "1"]), ("9,5,7\n5,7,9\n7,9,5", ["5", "7", "9"])):
        frame = pa.concat_tables(
            iter_frames(_write(tmp_path / "f.csv", body), delimiter=None, batch_rows=3, array_names=names)
        )
        assert frame.num_rows == 3 and frame.column_names[0] == "column_0"


def test_a_header_that_is_not_utf8_is_refused_for_a_chosen_column_and_passed_through_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rows = b"\n".join(b"%d,%d,%d" % (i, i, i) for i in range(12))
    path.write_bytes("a,température,id\n".encode("latin-1") + rows)
    with pytest.raises(DataError, match=r"names column 'temp\ufffdrature' in bytes that are not UTF-8; re-save"):
        load_table(str(path))  # a feature: its name must be the one a scoring file's header gives
    assert read_frame(path).column_names == ["a", "temp\ufffdrature", "id"]  # vae-score carries such columns along
    features = feature_matrix(read_frame(path), columns=["a"], source="d")
    assert features.feature_names == ["a"]
    path.write_bytes("a,température,id\n".encode() + rows)
    assert read_frame(path).column_names == ["a", "température", "id"]


def test_pandas_row_index_as_a_first_column_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = "\n".join(f"{i},{i % 3},{i % 5}" for i in range(12))
    load_table(str(_write(tmp_path / "d.csv", ",a,b\n" + body)))  # pandas' to_csv(): an index with no name
    assert "holds 0, 1, 2, ... (pandas' row index)" in caplog.text and "--exclude-columns column_0" in caplog.text
    caplog.clear()
    load_table(str(_write(tmp_path / "e.csv", "i,a,b\n" + body)))  # a named column is the user's choice
    load_table(str(_write(tmp_path / "f.csv", ",a,b\n" + body)), exclude_columns=["column_0"])
    assert "row index" not in caplog.text
    words = ",a\nfalse,1\ntrue,2\n" + "\n".join(f"x{i},{i}" for i in range(10))  # text numpy cannot read
    with pytest.raises(DataError, match="column 'column_0'"):  # the run's own refusal, not the warning's crash
        load_table(str(_write(tmp_path / "g.csv", words)))


def test_a_column_that_varies_only_past_float32s_digits_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = "\n".join(f"{1e6 + i * 1e-3:.4f},{i},{1e6 + i}" for i in range(12))  # c keeps its steps of 1
    features = _features(_write(tmp_path / "d.csv", "a,b,c\n" + body))
    assert np.ptp(features.x[:, 0]) == 0 and np.ptp(features.x[:, 2]) > 0
    assert "column 'a' varies only beyond float32's 7 significant digits (around 1000000)" in caplog.text
    assert "column 'b'" not in caplog.text and "column 'c'" not in caplog.text


def test_a_parquet_column_that_varies_only_past_float32s_digits_is_warned_of_as_a_text_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import pyarrow.parquet as pq

    # streamed into the scratch copy a chunk at a time, several row groups: the range is gathered over all of them
    a = [1e6 + i * 1e-4 for i in range(40)]
    pq.write_table(pa.table({"a": a, "b": list(range(40))}), tmp_path / "d.parquet", row_group_size=7)
    table = load_table(str(tmp_path / "d.parquet"))
    assert np.ptp(np.asarray(table.x)[:, 0]) == 0
    assert "column 'a' varies only beyond float32's 7 significant digits (around 1000000)" in caplog.text
    assert "column 'b'" not in caplog.text


def test_header_after_blank_lines_and_a_byte_order_mark_is_still_the_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf\n\n a , b \n" + b"\n".join(b"%d,%d" % (i, i) for i in range(12)))
    frame = read_frame(path)
    assert frame.column_names == ["a", "b"] and frame.num_rows == 12


def test_parquet_id_column_is_left_out_and_na_drop_is_refused(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"C-{i}" for i in range(12)], "a": list(range(12))}), tmp_path / "d.parquet")
    table = load_table(str(tmp_path / "d.parquet"), exclude_columns=["id"])
    assert table.feature_names == ["a"] and table.x.shape == (12, 1)
    with pytest.raises(DataError, match="leave it out with --exclude-columns id"):
        load_table(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match="--na drop is not available for .parquet"):
        load_table(str(tmp_path / "d.parquet"), exclude_columns=["id"], na="drop")


def test_table_options_are_refused_for_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.ones((12, 2)))
    with pytest.raises(DataError, match=r"--exclude-columns and --na drop apply to table files .* not d.npy"):
        load_table(str(tmp_path / "d.npy"), exclude_columns=["a"], na="drop")
