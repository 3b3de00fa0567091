"""Where data lives: a local file, a folder or glob of partitions, or an object-store URI (s3://bucket/prefix/, also
gs:// and abfs:// as pyarrow provides them), resolved once into a pyarrow filesystem and the partition files under
it, each with its name relative to the dataset's root and the Hive-style values in its path (date=2026-12-01/).

Credentials and endpoints come the standard way, through pyarrow's filesystems: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for an
S3-compatible store (MinIO); `?endpoint_override=...` in the URI works too. A folder or prefix is read whole,
recursively, in sorted order; files whose names start with `.` or `_` (_SUCCESS, _temporary/, .part files) and files
no reader takes are skipped, as Spark and Hive skip them, unless a glob pattern's own segment names them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import itertools
import os
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from vae_tables.errors import DataError
from vae_tables.sources import format_of

GLOB_CHARACTERS = "*?["
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # the folder value Hive and Spark write for a null


@dataclass(frozen=True)
class Partition:
    """One file of a dataset."""

    uri: str  # as a user names it: s3://bucket/prefix/date=2026-12-01/part-0.parquet, or a local path
    relative: str  # under the dataset's root, '/'-separated (the file's own name for a single file)
    hive: dict[str, str | None] = field(default_factory=dict)  # date=2026-12-01/ in `relative`: {"date": "2026-12-01"}


@dataclass(frozen=True)
class Dataset:
    uri: str  # what was asked for
    partitions: list[Partition]
    single_file: bool  # the argument named one file (not a folder, prefix or glob)


def is_uri(text: str) -> bool:
    """s3://..., gs://..., abfs://...: a scheme other than file:// (a Windows drive letter is no scheme)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.lower() != "file"


def local_path(text: str) -> str:
    """A file: URI as the local path it names (file:///data/x.csv, file:/data/x.csv, file://localhost/data/x.csv,
    FILE:///data/my%20x.csv); anything else as it is. A file: URI naming another host is refused (a DataError)."""
    if text[:5].lower() != "file:":  # a plain path, whatever urlsplit would make of it (//[ab/x.csv, C:\x.csv)
        return text
    if "?" in text or "#" in text:  # urlsplit would cut them away, silently naming another file or folder
        raise DataError(f"{text}: '?' or '#' in a file: URI; write them %3F and %23, or give the path")
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:  # file://[/x.csv
        raise DataError(f"{text}: not a file: URI ({exc}); give the path") from None
    if parts.netloc.lower() not in ("", "localhost"):
        raise DataError(f"{text}: a file: URI of another host ({parts.netloc}); give a path on this machine")
    path = os.fsdecode(urllib.parse.unquote_to_bytes(parts.path))  # %E9 as the byte a file name may hold
    if not path.startswith("/") or path.startswith("//") or "\0" in path:  # file:x.csv, file:////host/x, %00
        raise DataError(f"{text}: a file: URI names an absolute path on this machine (file:///data/x.csv)")
    return path


def is_pattern(text: str) -> bool:
    """Whether a local data argument is a glob pattern: it holds glob characters and names no file or folder as it is
    (data[1].csv, run[1]/ are themselves). Only local text is globbed: a URI's * is part of its prefix."""
    return not is_uri(text) and any(c in text for c in GLOB_CHARACTERS) and not Path(text).exists()


def pattern_root(pattern: str) -> Path:
    """The folder a glob pattern starts from: its leading path segments free of glob characters (data/2026-*/x.csv:
    data; p*/a.csv: the working folder). Partitions are named relative to it, and the default output lies beside it."""
    fixed = itertools.takewhile(lambda part: not any(c in part for c in GLOB_CHARACTERS), Path(pattern).parts)
    return Path(*fixed)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a URI or local path, and the path inside it; DataError naming the URI."""
    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, str(path)
    except (OSError, ValueError, TypeError) as exc:  # unknown scheme, no such store, bad options
        raise DataError(f"{uri}: cannot open ({_reason(exc)})") from exc


def open_dataset(text: str) -> Dataset:
    """The partitions a data argument names: DataError when there are none, naming what was looked at."""
    if not text:  # it would list the working folder under names rooted at /
        raise DataError("the input names no file or folder")
    if not is_uri(text) and Path(text).resolve().parent == Path(text).resolve():
        raise DataError(f"{text}: the filesystem root is no data set; name the folder below it that holds the data")
    if is_pattern(text):
        return _local_glob(text)
    fs, path = filesystem(text)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return Dataset(text, [Partition(text, PurePosixPath(path).name)], single_file=True)
        if info.type == pafs.FileType.NotFound:
            bucket = path.split("/")[0]
            if is_uri(text) and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise DataError(f"{text}: no such bucket {bucket!r} (or no permission to see it)")
            raise DataError(f"{text}: no such file, folder or prefix")
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise DataError(f"{text}: cannot list ({_reason(exc)})") from exc
    files = sorted(i.path for i in found if i.type == pafs.FileType.File)
    base = text.rstrip("/")
    partitions = []
    for file in files:
        relative = PurePosixPath(file).relative_to(path.rstrip("/")).as_posix()
        if _readable(relative):
            partitions.append(Partition(f"{base}/{relative}", relative, hive_values(relative)))
    if not partitions:
        raise DataError(f"{text}: no readable partitions (.parquet, .csv, .tsv, .txt, each also .gz, or .npy)")
    return Dataset(text, partitions, single_file=False)


def _local_glob(pattern: str) -> Dataset:
    """The files a pattern matches, and every file under the folders it matches (events/date=2026-12-0*: each day's
    partitions), named relative to the folder the pattern starts from. A `_` or `.` name is skipped, as in a folder,
    unless the pattern's own segment for it starts with the same character (data/_stag*/x.csv); `**` names none, and
    what lies under a matched folder is skipped as in any folder (data/_stag* leaves out _staging/_temporary/)."""
    root = pattern_root(pattern)
    globs = Path(pattern).parts[len(root.parts) :]
    if ".." in globs:  # */../x: each folder * matches names x again, under its own name
        raise DataError(
            f"{pattern}: '..' after a glob segment names the same files several ways; write the path without it"
        )
    found: set[Path] = set()
    skipped: list[Path] = []  # matched by glob, but through a `_` or `.` name the pattern does not name
    for match in map(Path, glob.glob(pattern, recursive=True)):
        if not _named(match.relative_to(root).parts, globs):
            skipped.append(match)
            continue
        if match.is_file():
            found.add(match)
        else:
            found.update(f for f in match.rglob("*") if f.is_file() and not _hidden(f.relative_to(match).parts))
    partitions = [
        Partition(str(f), f.relative_to(root).as_posix(), hive_values(f.relative_to(root).as_posix()))
        for f in sorted(found)
        if _partition_format(f.name)
    ]
    if not partitions:
        raise DataError(f"{pattern}: no readable files match{_bracket_hint(pattern) or _hidden_hint(skipped)}")
    return Dataset(pattern, partitions, single_file=False)


def _hidden_hint(skipped: list[Path]) -> str:
    # data/?staging/*.csv matches data/_staging/a.csv in glob, but a `_` name is read only when named
    if not skipped:
        return ""
    return (
        f" ({min(skipped)} matches, but a name starting with _ or . is read only when the pattern's segment for it"
        " starts with the same character, as in _staging* or .cache*; ** names none)"
    )


def _named(parts: tuple[str, ...], globs: tuple[str, ...]) -> bool:
    """Whether a path the pattern matched (parts relative to its root, glob segments globs; no `..` among them) is
    one it names: every `_` or `.` part matched by a segment starting with the same character, none taken by `**`."""

    def segment(part: str, glob_part: str) -> bool:
        return fnmatch.fnmatchcase(part, glob_part) and (not _hidden((part,)) or glob_part[0] == part[0])

    def match(parts: tuple[str, ...], globs: tuple[str, ...]) -> bool:
        if not globs:
            return not parts
        if globs[0] == "**":
            free = itertools.takewhile(lambda i: i == 0 or not _hidden(parts[i - 1 : i]), range(len(parts) + 1))
            return any(match(parts[i:], globs[1:]) for i in free)
        return bool(parts) and segment(parts[0], globs[0]) and match(parts[1:], globs[1:])

    return match(parts, globs)


def _bracket_hint(pattern: str) -> str:
    # data/run[1]/*.csv with a folder run[1]: in a pattern [1] is a set of characters (run1), so the folder is missed
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if "[" in part and (named := Path(*parts[: i + 1])).exists():
            return f" ({named} exists, but [...] in a pattern is a set of characters: write {glob.escape(part)})"
    return ""


def _hidden(parts: tuple[str, ...]) -> bool:
    # Spark's _SUCCESS and _temporary/, hidden files and folders: not partitions
    return any(p.startswith((".", "_")) for p in parts)


def _partition_format(name: str) -> bool:
    # .npz is no partition format (its arrays have no one table to stream)
    return format_of(Path(name)) not in (None, "npz")


def _readable(relative: str) -> bool:
    """Whether a path relative to a listed folder is a partition: no `_` or `.` name in it, and a readable format."""
    parts = PurePosixPath(relative).parts
    return not _hidden(parts) and _partition_format(parts[-1])


def hive_values(relative: str) -> dict[str, str | None]:
    """key=value folders of a relative path, in order: 'date=2026-12-01/shop=7/part-0.parquet' -> date, shop. Decoded
    as Spark and pyarrow's HivePartitioning read them: %XX escapes undone (Spark writes ts=2026-01-01 10%3A00%3A00),
    and __HIVE_DEFAULT_PARTITION__ is None, a null (a value written as that text would be found in no join)."""
    values: dict[str, str | None] = {}
    for part in PurePosixPath(relative).parts[:-1]:
        key, sep, value = part.partition("=")  # an = in a key or value is written %3D: the first one splits
        if sep and key:
            values[urllib.parse.unquote(key)] = None if value == HIVE_NULL else urllib.parse.unquote(value)
    return values


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return bool(fs.get_file_info(path).type == pafs.FileType.File)
    except OSError as exc:
        raise DataError(f"{uri}: cannot look up ({_reason(exc)})") from exc


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding the file: the file itself when local, else a temporary download (removed after)."""
    if not is_uri(uri):
        yield Path(uri)
        return
    fs, path = filesystem(uri)
    folder = Path(tempfile.mkdtemp(prefix="vae-part-"))
    try:
        local = folder / PurePosixPath(path).name
        try:
            with fs.open_input_stream(path, compression=None) as source, local.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        except OSError as exc:
            raise DataError(f"{uri}: cannot read ({_reason(exc)})") from exc
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(local: Path, uri: str) -> None:
    """Put a finished local file at `uri`, whole or not at all: renamed in place locally; on an object store,
    uploaded under a hidden name and moved into place, so the object appears only once whole."""
    if not is_uri(uri):
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)
        return
    fs, path = filesystem(uri)
    # closing an object store's stream completes its upload, even when the copy into it stopped halfway: upload
    # under a hidden name (skipped by every listing here), then move it, which copies server-side whole
    parent, _, name = path.rpartition("/")
    hidden = f"{parent}/.{name}.part-{uuid.uuid4().hex[:8]}"
    try:
        try:
            with local.open("rb") as source, fs.open_output_stream(hidden, compression=None) as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            fs.move(hidden, path)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.delete_file(hidden)
            raise
    except OSError as exc:
        raise DataError(f"{uri}: cannot write ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).split(" (Request ID")[0]
    if "NO_SUCH_BUCKET" in text:
        return "no such bucket: " + text
    if "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "credentials" in text.lower():
        return "no valid credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE): " + text
    return text
