"""Where a data argument points: file: URIs as local paths, and the folder a glob pattern starts from."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from vae_tables.errors import DataError
from vae_tables.locations import hive_values, local_path, open_dataset, pattern_root


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("file:///data/x.csv", "/data/x.csv"),
        ("FILE:///data/x.csv", "/data/x.csv"),  # the scheme in any case
        ("file:/data/x.csv", "/data/x.csv"),  # RFC 8089's short form (Java's File.toURI())
        ("file://localhost/data/x.csv", "/data/x.csv"),
        ("file:///data/my%20x.csv", "/data/my x.csv"),  # as Path.as_uri() writes a space
        ("file:///data/caf%E9.csv", "/data/caf\udce9.csv"),  # a byte that is not UTF-8, as os.fsdecode keeps it
        ("file://LOCALHOST/data/x.csv", "/data/x.csv"),  # host names in any case
        ("data/x.csv", "data/x.csv"),  # not a URI: as it is, whatever urlsplit would make of it
        ("s3://bucket/x.csv", "s3://bucket/x.csv"),
        ("data/2026-12-01T10:00.csv", "data/2026-12-01T10:00.csv"),
        ("a#1?.csv", "a#1?.csv"),
        ("//[ab/x.csv", "//[ab/x.csv"),
    ],
)
def test_a_file_uri_is_the_local_path_it_names(text: str, path: str) -> None:
    assert local_path(text) == path


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("file://otherhost/data/x.csv", "a file: URI of another host"),  # was ./otherhost/data/x.csv, exit 0
        ("file:///data/out#v2/", "'?' or '#' in a file: URI"),  # was /data/out: another folder, silently
        ("file:///data/p?/a.csv", "'?' or '#' in a file: URI"),
        ("file:///data/x.csv#", "'?' or '#' in a file: URI"),  # an empty fragment is cut away too
        ("file://", "names an absolute path"),  # was the working folder, its partitions named from /
        ("file:x.csv", "names an absolute path"),  # relative forms RFC 8089 does not define
        ("file:////host/share/x.csv", "names an absolute path"),  # a UNC path names a host
        ("file:///data/a%00b.csv", "names an absolute path"),  # a NUL byte: a traceback from the file system
        ("file://[/x.csv", "not a file: URI"),
    ],
)
def test_a_file_uri_that_names_no_local_path_exactly_is_refused(text: str, why: str) -> None:
    with pytest.raises(DataError, match=re.escape(why)):
        local_path(text)


@pytest.mark.parametrize(
    ("pattern", "root"),
    [
        ("data/2026-*/x.csv", "data"),
        ("data/p1*/a.csv", "data"),  # whole segments: not data/p1 (data/p10/a.csv lies outside that)
        ("p*/a.csv", "."),
        ("**/*.parquet", "."),
        ("/srv/data/[ab]/*.csv", "/srv/data"),
    ],
)
def test_a_pattern_starts_from_its_leading_segments_free_of_glob_characters(pattern: str, root: str) -> None:
    assert pattern_root(pattern) == Path(root)


def test_a_pattern_segment_starting_with_an_underscore_or_a_dot_lists_the_names_it_matches(tmp_path: Path) -> None:
    names = (
        "_staging/a.csv",
        "_staging/_x.csv",
        "_staging/.b.csv",
        "_staging/_temporary/0/part-0.csv",  # what Spark leaves while it writes
        "_old/c.csv",
        "d/e.csv",
        "d/_temporary/f.csv",
        ".cache/g.csv",
    )
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n1\n")

    def listed(pattern: str) -> list[str]:
        return [p.relative for p in open_dataset(str(tmp_path / pattern)).partitions]

    assert listed("_stag*") == ["_staging/a.csv"]  # named by the pattern; what lies inside is skipped as in any folder
    assert listed("_*") == ["_old/c.csv", "_staging/a.csv"]
    assert listed("_*/*.csv") == ["_old/c.csv", "_staging/a.csv"]  # a segment names only the part it stands for
    assert listed("_*/**/*.csv") == ["_old/c.csv", "_staging/a.csv"]  # and ** names none
    assert listed("**/*.csv") == ["d/e.csv"]
    assert listed("*") == ["d/e.csv"]  # a pattern that names none of them skips them all, as a folder does
    assert listed(".c*/*.csv") == [".cache/g.csv"]
    assert listed("_staging/_*.csv") == ["_x.csv"]
    assert listed("_staging/.*.csv") == [".b.csv"]
    with pytest.raises(DataError, match="'..' after a glob segment names the same files several ways"):
        listed("*/../_stag*/a.csv")  # _staging/a.csv once for each folder *, each under its own name


@pytest.mark.parametrize(
    ("pattern", "skipped"),
    [("?staging/*.csv", "_staging/a.csv"), ("[_]stag*", "_staging"), ("**/a.csv", "_staging/a.csv")],
)
def test_a_pattern_that_matches_only_through_an_unnamed_underscore_name_says_why_nothing_is_read(
    tmp_path: Path, pattern: str, skipped: str
) -> None:
    (tmp_path / "_staging").mkdir()
    (tmp_path / "_staging" / "a.csv").write_text("x\n1\n")
    with pytest.raises(DataError) as info:  # glob matches _staging, but no segment of the pattern names it
        open_dataset(str(tmp_path / pattern))
    assert str(info.value) == (
        f"{tmp_path / pattern}: no readable files match ({tmp_path / skipped} matches, but a name starting with _ or . "
        "is read only when the pattern's segment for it starts with the same character, as in _staging* or .cache*; "
        "** names none)"
    )
    with pytest.raises(DataError, match=r"no readable files match$"):  # nothing matched at all: nothing to explain
        open_dataset(str(tmp_path / "?other" / "*.csv"))


def test_a_pattern_from_the_working_folder_names_its_partitions_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("_staging/a.csv", "_staging/_temporary/b.csv", "d/e.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n1\n")
    monkeypatch.chdir(tmp_path)
    for pattern, relative in (
        ("_stag*", ["_staging/a.csv"]),
        ("./_stag*", ["_staging/a.csv"]),
        ("**/*.csv", ["d/e.csv"]),
    ):
        assert [p.relative for p in open_dataset(pattern).partitions] == relative


def test_a_pattern_that_misses_a_bracketed_name_says_how_to_write_it(tmp_path: Path) -> None:
    (tmp_path / "run[1]").mkdir()
    (tmp_path / "run[1]" / "a.csv").write_text("x\n1\n")
    with pytest.raises(DataError) as info:
        open_dataset(str(tmp_path / "run[1]" / "*.csv"))  # [1] is a set of characters: run1, which is not there
    assert str(info.value) == (
        f"{tmp_path}/run[1]/*.csv: no readable files match ({tmp_path}/run[1] exists, but [...] in a pattern is a set "
        "of characters: write run[[]1])"
    )
    assert [p.relative for p in open_dataset(str(tmp_path / "run[[]1]" / "*.csv")).partitions] == ["run[1]/a.csv"]
    with pytest.raises(DataError, match=r"no readable files match$"):  # no such name: nothing to hint at
        open_dataset(str(tmp_path / "run[2]" / "*.csv"))


def test_hive_folder_values_are_decoded_as_spark_writes_them_and_its_null_is_none(tmp_path: Path) -> None:
    folder = tmp_path / "ts=2026-01-01 10%3A00%3A00" / "shop=__HIVE_DEFAULT_PARTITION__" / "a%3Db=x%2Fy%25"
    folder.mkdir(parents=True)
    (folder / "part-0.csv").write_text("x\n1\n")
    expected = {"ts": "2026-01-01 10:00:00", "shop": None, "a=b": "x/y%"}  # as pyarrow's HivePartitioning reads them
    assert open_dataset(str(tmp_path)).partitions[0].hive == expected
    assert open_dataset(str(tmp_path / "*")).partitions[0].hive == expected


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_null_hive_value_is_written_as_a_null_cell(tmp_path: Path, suffix: str) -> None:
    # the column is added by the scorer (gaussian_vae/partitions.py) from the values read here
    from gaussian_vae.files import writer_for
    from gaussian_vae.partitions import with_hive

    hive = hive_values("day=1/shop=__HIVE_DEFAULT_PARTITION__/part-0.csv")
    with writer_for(tmp_path / f"out{suffix}", suffix) as write:
        write(with_hive(pa.table({"id": ["a", "b"]}), hive, ["id"]), {"score": np.zeros(2)})
    table = pq.read_table(tmp_path / "out.parquet") if suffix == ".parquet" else pa_csv.read_csv(tmp_path / "out.csv")
    assert table["shop"].null_count == 2 and table.column_names == ["id", "day", "shop", "score"]
