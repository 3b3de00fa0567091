"""Which reader a data source goes to: by the suffix of its name, decided here once for every tool.

No pyarrow here: a caller that only reads .npy files needs none. Only local files are read today; a remote URI
(s3://, gs://, ...) would be told apart here, before any suffix is looked at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from vae_tables.errors import DataError

Format = Literal["text", "parquet", "npy", "npz"]
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
FORMATS: dict[str, Format] = {
    ".parquet": "parquet",
    ".npy": "npy",
    ".npz": "npz",
    **dict.fromkeys(TEXT_SUFFIXES, "text"),
}


def unnamed_columns(count: int) -> list[str]:
    """The names of columns that have none (an array's, a file's without a header): column_0, column_1, ... A model
    trained on such columns has these as its feature names, and takes its features by position."""
    return [f"column_{j}" for j in range(count)]


def suffix_of(path: Path) -> str:
    """'.csv', '.csv.gz', '.parquet', ...: the last suffix, or the last two when the name ends in .gz."""
    suffixes = [s.lower() for s in path.suffixes]
    return "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else "".join(suffixes[-1:])


def format_of(path: Path) -> Format | None:
    """The reader for this file name, or None when no reader takes it (each tool words that refusal itself)."""
    return FORMATS.get(suffix_of(path))


def existing_file(path: Path) -> Path:
    """The path, once it is known to be a file: a missing file or a folder is named before any reader opens it."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path
