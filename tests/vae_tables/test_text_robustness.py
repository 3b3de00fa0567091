"""Text tables as pyarrow cuts them into blocks (quoted line breaks, rows longer than a block; read whole and in
batches), heads Python's csv module reads (cells over its limit, a stray carriage return), and upper-case .GZ names."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from vae_tables.errors import DataError
from vae_tables.frames import iter_frames, read_frame

PLAIN = [f"{i},plain {i},{i * 0.5}" for i in range(4000)]  # ~86 KB: past the 64 KiB head and a batch's block
NOTE = "\n".join(f"line {j}" for j in range(8))  # mostly line ends inside quotes: a block's end falls among them
QUOTED = [f'{i},"{NOTE} of {i}",{i * 0.5}' for i in range(4000, 5000)]


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("id,comment,amount\n" + "\n".join(rows) + "\n")
    return path


def _batched_ids(path: Path, batch_rows: int) -> list[str]:
    return [i for frame in iter_frames(path, delimiter=None, batch_rows=batch_rows) for i in frame["id"].to_pylist()]


def test_quoted_line_breaks_beyond_one_block_are_read_in_batches(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", QUOTED * 3)  # seen in the head: line ends in values from the start
    frames = list(iter_frames(path, delimiter=None, batch_rows=100))
    assert sum(f.num_rows for f in frames) == 3000
    assert frames[-1]["comment"].to_pylist()[-1] == f"{NOTE} of 4999"


def test_a_quoted_line_break_first_seen_past_the_head_resumes_after_the_rows_handed_out(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", PLAIN + QUOTED * 3)  # none in the first 64 KiB: found by pyarrow's refusal
    assert _batched_ids(path, batch_rows=100) == [
        str(i) for i in [*range(5000), *range(4000, 5000), *range(4000, 5000)]
    ]


def test_quoted_line_breaks_beyond_one_block_are_read_whole(tmp_path: Path) -> None:
    # read whole in 1 MiB blocks by several threads: a block starting inside a quoted value was "Expected 3 columns"
    path = _write(tmp_path / "d.csv", QUOTED * 20)  # ~1.4 MB
    table = read_frame(path)
    assert table.num_rows == 20_000 and table["comment"][1].as_py() == f"{NOTE} of 4001"
    late = _write(tmp_path / "late.csv", PLAIN + QUOTED * 20)  # the first quote past the head
    assert read_frame(late).num_rows == 24_000


def test_a_row_longer_than_a_batch_block_is_read(tmp_path: Path) -> None:
    blob = "x" * 200_000  # one row over the 64 KiB a read of one-row batches takes
    path = _write(tmp_path / "d.csv", [f"0,{blob},1", "1,short,2"])
    assert [f.num_rows for f in iter_frames(path, delimiter=None, batch_rows=1)] == [1, 1]


def test_a_row_longer_than_a_block_past_the_head_resumes_after_the_rows_handed_out(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", [*PLAIN, f"4000,{'x' * 300_000},1", "4001,short,2"])
    assert _batched_ids(path, batch_rows=1) == [str(i) for i in range(4002)]


def test_a_cell_over_the_csv_module_field_limit_is_read_and_the_limit_put_back(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    path = _write(tmp_path / "d.csv", [f'{i},"{"y" * 200_000}",{i}' for i in range(3)])  # was _csv.Error, exit 1
    assert read_frame(path).num_rows == 3
    assert sum(f.num_rows for f in iter_frames(path, delimiter=None, batch_rows=2)) == 3
    assert csv.field_size_limit() == limit


def test_a_carriage_return_inside_a_head_line_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(b"id,amount\r0,1\r1,2\r")  # classic Mac line ends: one line to the head, holding \r
    with pytest.raises(DataError, match=r"mac.csv: cannot read its first lines as text .*\\n line ends"):
        read_frame(path)


@pytest.mark.parametrize("name", ["D.CSV.GZ", "d.Csv.Gz"])
def test_an_upper_case_gz_name_is_decompressed(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"id,amount\n0,1\n1,2\n"))
    assert read_frame(path)["amount"].to_pylist() == [1, 2]
    assert _batched_ids(path, batch_rows=1) == ["0", "1"]


def test_a_read_again_counts_the_rows_handed_out_not_lines_so_none_comes_twice(tmp_path: Path) -> None:
    # a blank line, and quoted line breaks read before pyarrow's refusal turned newlines_in_values on, are lines that
    # are no rows: skipping the rows handed out by lines (pyarrow's skip_rows_after_names) handed some out twice
    blank = _write(tmp_path / "blank.csv", [PLAIN[0], "", *PLAIN[1:], *QUOTED * 2])
    assert _batched_ids(blank, batch_rows=100) == [
        str(i) for i in [*range(4000), *range(4000, 5000), *range(4000, 5000)]
    ]
    few = [f'{i},"two\nlines",{i}' for i in range(4000, 4010)]  # read in step, before a row too long for a block
    late = _write(tmp_path / "late.csv", [*PLAIN, *few, f"4010,{'x' * 300_000},1", "4011,short,2"])
    for batch_rows in (1, 100, 1000):
        assert _batched_ids(late, batch_rows) == [str(i) for i in range(4012)], batch_rows
