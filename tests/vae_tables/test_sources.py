"""Which reader a file goes to, decided once by its suffix."""

from __future__ import annotations

from pathlib import Path

import pytest

from vae_tables.errors import DataError
from vae_tables.sources import existing_file, format_of, suffix_of


@pytest.mark.parametrize(
    ("name", "suffix", "kind"),
    [
        ("d.csv", ".csv", "text"),
        ("D.TSV.GZ", ".tsv.gz", "text"),
        ("my.data.txt", ".txt", "text"),
        ("d.parquet", ".parquet", "parquet"),
        ("d.npy", ".npy", "npy"),
        ("d.npz", ".npz", "npz"),
        ("d.json.gz", ".json.gz", None),
        ("d", "", None),
    ],
)
def test_suffix_and_format(name: str, suffix: str, kind: str | None) -> None:
    assert suffix_of(Path(name)) == suffix and format_of(Path(name)) == kind


def test_a_missing_file_and_a_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="d.csv: no such file"):
        existing_file(tmp_path / "d.csv")
    with pytest.raises(DataError, match="not a file"):
        existing_file(tmp_path)
