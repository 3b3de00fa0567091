"""Text tables (.csv/.tsv/.txt, each also .gz) parsed by pyarrow.csv: the layout (delimiter, header, lines to skip)
found once from the first lines, then the rows read whole or in batches by that layout.

Every problem is a DataError that names the file and the line, and says what to do. Lines are counted from 1, as
an editor does; rows from 0, after any header.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import shlex
import threading
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.csv as pa_csv

from vae_tables.errors import DataError
from vae_tables.numeric import NA_TOKENS
from vae_tables.sources import suffix_of, unnamed_columns

log = logging.getLogger(__name__)
NOT_UTF8 = "\ufffd"  # what a header byte that is not UTF-8 reads as
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe", " ": "space"}  # tried in this order
_HEAD_BYTES = 1 << 16  # the head read to choose the delimiter and the header: 64 KiB...
_HEAD_MAX_BYTES = 1 << 24  # ...or more, up to 16 MiB, until it holds two whole lines
_HEAD_LINES = 50
_MAX_BLOCK = 1 << 28  # bytes per pyarrow read at most (ReadOptions.block_size is an int32): rows up to 256 MiB
_FIELD_LIMIT = _HEAD_MAX_BYTES  # for Python's csv: no cell of the head is longer; _ragged's scan of the whole
# file stops there too, not holding the rest of a file in memory as the value of a quote left open
_FIELD_LIMIT_LOCK = threading.Lock()  # see _long_fields


class _Head(NamedTuple):
    lines: list[str]  # the first whole lines
    multiline: bool  # a line with an odd number of double quotes: a quoted value holds a line break
    longest: int  # bytes of the longest line read


class _Layout(NamedTuple):
    sep: str
    names: list[str]
    skip: int  # lines before the rows: blank ones, then the header
    head: _Head


@dataclass(frozen=True)
class _Parsing:
    """How pyarrow cuts the text into blocks: line ends inside quoted values, and the bytes per block."""

    multiline: bool
    block: int

    def options(self, sep: str) -> pa_csv.ParseOptions:
        return pa_csv.ParseOptions(delimiter=sep, newlines_in_values=self.multiline)


def read_text(path: Path, delimiter: str | None = None) -> pa.Table:
    """The whole table, typed by pyarrow: numbers, bool (true/false), strings; NA_TOKENS and empty cells as null."""
    layout = _layout(path, delimiter)
    parsing = _parsing(layout, 1 << 20)  # pyarrow's own block size for a whole read
    with _refusals(path, layout.sep, len(layout.names)):
        while True:
            try:
                with _opened(path) as source:
                    return pa_csv.read_csv(
                        source,
                        read_options=pa_csv.ReadOptions(
                            column_names=layout.names, skip_rows=layout.skip, block_size=parsing.block
                        ),
                        parse_options=parsing.options(layout.sep),
                        convert_options=_conversion(None),
                    )
            except pa.ArrowInvalid as exc:
                again = _recovered(parsing, exc)
                if again is None:
                    raise
                parsing = again


def iter_text(
    path: Path, delimiter: str | None, batch_rows: int, header_names: Sequence[str] | None = None
) -> Iterator[pa.Table]:
    """The table in batches of at most batch_rows rows, every column as text (null where missing): a later batch
    cannot change a column's type, an id such as 007 keeps its zeros, and features are read by vae_tables/numeric.py.
    header_names: a first line holding every one of them is the header, even when they are numbers (a model's
    features named 5, 7, 9 by a DataFrame's columns)."""
    layout = _layout(path, delimiter, header_names)
    parsing = _parsing(layout, min(1 << 26, batch_rows * 64 * max(1, len(layout.names))))  # ~batch_rows rows a read
    handed = 0  # rows yielded: a read again after a refusal the parsing explains resumes after them
    with _refusals(path, layout.sep, len(layout.names)):
        batches = _batches(path, layout, parsing, handed)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                if handed == 0:  # a header and no rows: one batch of none, with the header's columns
                    yield pa.table({name: pa.array([], pa.string()) for name in layout.names})
                return
            except pa.ArrowInvalid as exc:
                again = _recovered(parsing, exc)
                if again is None:
                    raise
                parsing = again
                batches = _batches(path, layout, parsing, handed)
                continue
            table = pa.Table.from_batches([batch])
            for start in range(0, table.num_rows, batch_rows):
                piece = table.slice(start, batch_rows)
                handed += piece.num_rows
                yield piece


def _batches(path: Path, layout: _Layout, parsing: _Parsing, handed: int) -> Iterator[pa.RecordBatch]:
    # The rows from the start, less the first `handed` (a read again after a refusal: those went out already). They
    # are counted as the parser gives rows, not skipped by pyarrow's skip_rows_after_names, which counts lines: a
    # blank line, or a quoted line break read without newlines_in_values, would make it skip too few and hand rows
    # out twice.
    with _opened(path) as source:
        reader = pa_csv.open_csv(
            source,
            read_options=pa_csv.ReadOptions(column_names=layout.names, skip_rows=layout.skip, block_size=parsing.block),
            parse_options=parsing.options(layout.sep),
            # only an empty cell is null: "NA" in a column carried along as text is a value (Namibia's code, a name),
            # kept as written; in a feature, vae_tables/numeric.py reads the NA_TOKENS as missing itself
            convert_options=_conversion(dict.fromkeys(layout.names, pa.string()), null_values=("",)),
        )
        for batch in reader:
            if handed >= batch.num_rows:
                handed -= batch.num_rows
                continue
            yield batch.slice(handed) if handed else batch
            handed = 0


def _parsing(layout: _Layout, block: int) -> _Parsing:
    # Line ends in quoted values when the head shows one (else only after pyarrow's refusal, _recovered): pyarrow then
    # finds where a block may end by lexing every byte in one thread, which cost a whole read by two threads ~30% of
    # its time (batches 0-6%). A block holds four of the head's longest lines: pyarrow refuses a row longer than one.
    return _Parsing(layout.head.multiline, min(_MAX_BLOCK, max(1 << 16, block, 4 * layout.head.longest)))


def _recovered(parsing: _Parsing, exc: pa.ArrowInvalid) -> _Parsing | None:
    # The parsing to read the file again with after pyarrow refused it, or None when nothing is left to change. A
    # quoted line break past the head, cut at a block's end: "out of sync with chunker" (in batches), "Expected N
    # columns" (a whole read's threads); a row longer than the block: "straddles", "larger than block size". The
    # rows before the refusal were parsed in step, so a read in batches resumes after those it handed out.
    text = str(exc)
    if ("straddl" in text or "larger than block size" in text) and parsing.block < _MAX_BLOCK:
        return replace(parsing, block=min(_MAX_BLOCK, 4 * parsing.block))
    if ("out of sync" in text or " columns, got " in text) and not parsing.multiline:
        return replace(parsing, multiline=True)
    return None


def _opened(path: Path) -> pa.NativeFile:
    # pyarrow would guess the compression from the name, case-sensitively: DATA.CSV.GZ parsed as gzip's bytes
    return pa.input_stream(str(path), compression="gzip" if suffix_of(path).endswith(".gz") else None)


@contextmanager
def _refusals(path: Path, sep: str, fields: int) -> Iterator[None]:
    # pyarrow's failures as DataErrors: a line with the wrong number of fields named by its line, a .gz that is
    # corrupt or cut short (an OSError) with what to check. No Python invalid_row_handler: pyarrow's reader threads
    # may drop their last reference to it while the interpreter exits, which aborted the process (exit 134, not 2).
    try:
        yield
    except pa.ArrowInvalid as exc:
        ragged = _ragged(path, sep, fields)
        if ragged is not None:
            raise ragged from None
        hint = f"; text tables are read as UTF-8: {_to_utf8(path)}" if "invalid UTF8" in str(exc) else ""
        raise DataError(f"{path}: cannot read ({exc}){hint}") from exc
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _to_utf8(path: Path) -> str:
    # A file saved in another encoding is Windows-1252 most often (Excel's; Latin-1 with quotes and € in 0x80-0x9F).
    # Placeholder names: `path` may be a local copy of an object-store partition, gone once the error is seen.
    suffix = suffix_of(path)
    if suffix.endswith(".gz"):
        return f"convert it, e.g. `gzip -dc IN{suffix} | iconv -f cp1252 -t utf-8 | gzip > OUT{suffix}`"
    return f"convert it, e.g. `iconv -f cp1252 -t utf-8 IN{suffix} > OUT{suffix}`"


def _conversion(
    types: dict[str, pa.DataType] | None, null_values: tuple[str, ...] = NA_TOKENS
) -> pa_csv.ConvertOptions:
    return pa_csv.ConvertOptions(null_values=list(null_values), strings_can_be_null=True, column_types=types)


def text_layout(
    path: Path, delimiter: str | None = None, header_names: Sequence[str] | None = None
) -> tuple[str, list[str], int]:
    """(delimiter, column names, lines to skip before the rows) of a text table, from its first lines; a first line
    that holds every one of header_names (a model's features) is the header, numbers or not."""
    layout = _layout(path, delimiter, header_names)
    return layout.sep, layout.names, layout.skip


def _layout(path: Path, delimiter: str | None, header_names: Sequence[str] | None = None) -> _Layout:
    head = _head_lines(path)
    content = [line for line in head.lines if line.strip()]
    if not content:
        raise DataError(f"{path}: empty file (no header and no rows)")
    with _sniffing(path):
        sep = _choose_delimiter(path, content, delimiter)
        first, *rest = csv.reader(content[:2], delimiter=sep)
    named = _names_every(first, header_names) and not (rest and _names_every(rest[0], header_names))
    has_header = named or not _is_data_row(first) or (_counts_up(first) and not (rest and _counts_up(rest[0])))
    names = _header_names(path, first) if has_header else unnamed_columns(len(first))
    _say_header(path, first, has_header, named)
    skip = next(i for i, line in enumerate(head.lines) if line.strip()) + has_header  # blank lines, then the header
    return _Layout(sep, names, skip, head)


def _say_header(path: Path, first: list[str], has_header: bool, named: bool) -> None:
    if has_header and _is_data_row(first) and named:
        log.warning(
            "%s: the first line (%s, ...) is read as the header: it names the model's %d features",
            path,
            ", ".join(cell.strip() for cell in first[:3]),
            len(first),
        )
    elif has_header and _is_data_row(first):  # a decision that may cost a row of data: said
        log.warning(
            "%s: the first line (%s, ...) is read as the header, as whole numbers counting up by one, the names "
            "pandas' to_csv gives unnamed columns (or years); the columns are named by them",
            path,
            ", ".join(cell.strip() for cell in first[:3]),
        )
    elif not has_header:
        log.info(
            "%s: no header (the first line holds numbers only): columns column_0 to column_%d", path, len(first) - 1
        )


def _head_lines(path: Path) -> _Head:
    # The whole lines at the start of the (decompressed) file; a last line cut by the read is left out.
    size = _HEAD_BYTES
    while True:
        try:
            with gzip.open(path) if suffix_of(path).endswith(".gz") else path.open("rb") as f:
                raw = f.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise _unreadable(path, exc) from exc
        whole = len(raw) < size
        # bytes that are not UTF-8 kept as lone surrogates, so that a header holding them is refused by name
        lines = [line.rstrip("\r") for line in raw.decode("utf-8-sig", errors="surrogateescape").split("\n")]
        lines = lines if whole else lines[:-1]
        if whole or sum(1 for line in lines if line.strip()) >= 2 or size >= _HEAD_MAX_BYTES:
            cut = raw.split(b"\n")
            multiline = any(line.count(b'"') % 2 for line in (cut if whole else cut[:-1]))  # "" is an escaped "
            return _Head(lines[:_HEAD_LINES], multiline, max(map(len, cut)))
        size *= 4


@contextmanager
def _sniffing(path: Path) -> Iterator[None]:
    # The head read by Python's csv module, with room for a long cell; what it still refuses, in one line. Lines are
    # cut at \n, so a \r left inside one is a line end of its own (classic Mac) or a stray one in a value.
    try:
        with _long_fields():
            yield
    except csv.Error as exc:
        hint = "; save it with \\n line ends" if "new-line" in str(exc) else ""
        raise DataError(f"{path}: cannot read its first lines as text ({exc}){hint}") from None


@contextmanager
def _long_fields() -> Iterator[None]:
    # Python's csv refuses a field over 128 KiB, and a JSON or HTML payload column is ordinary: its limit raised
    # while this module reads and put back after, under a lock so that two threads reading at once never put it
    # back under the other (anyone else's csv meanwhile only meets a higher limit)
    with _FIELD_LIMIT_LOCK:
        previous = csv.field_size_limit()
        csv.field_size_limit(max(previous, _FIELD_LIMIT))  # never lower: the program may have raised it further
        try:
            yield
        finally:
            csv.field_size_limit(previous)


def _choose_delimiter(path: Path, head: list[str], delimiter: str | None) -> str:
    # The one given, else tab for .tsv and comma for the rest; never silently another one, but name it when it
    # (unlike the expected one) splits every line of the head into the same number (> 1) of fields.
    expected = _one_character(delimiter) if delimiter is not None else "\t" if ".tsv" in suffix_of(path) else ","
    if _splits_evenly(head, expected):
        return expected
    for sep, name in DELIMITERS.items():
        if sep != expected and _splits_evenly(head, sep):
            raise DataError(f"{path}: looks {name}-separated: pass --delimiter {_shown(sep)}")
    return expected


def _splits_evenly(lines: list[str], sep: str) -> bool:
    counts = {len(row) for row in csv.reader(lines, delimiter=sep)}  # quotes respected, as pyarrow does
    return len(counts) == 1 and counts.pop() > 1


def _one_character(delimiter: str) -> str:
    sep = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
    if len(sep) != 1 or sep in '"\r\n':
        raise DataError(f"--delimiter must be one character, such as ',' ';' '|' or '\\t' (tab), not {delimiter!r}")
    return sep


def _shown(sep: str) -> str:
    return "'\\t'" if sep == "\t" else repr(sep)


def _is_data_row(cells: list[str]) -> bool:
    # A first line of numbers (missing values allowed) is data, not a header: columns are then column_0, ...
    stripped = [cell.strip() for cell in cells]
    return all(cell in NA_TOKENS or _is_number(cell) for cell in stripped) and any(map(_is_number, stripped))


def _names_every(cells: list[str], names: Sequence[str] | None) -> bool:
    # A line holding every one of the model's feature names. When it holds numbers only (features named 0, 5, 7, ...
    # by a DataFrame's columns) a row of data could too: then it must be those names exactly, each once, and three
    # at least (a row 1,0 of a model with features 0 and 1 is data, not its header).
    if not names:
        return False
    stripped = [cell.strip() for cell in cells]
    if not set(names) <= set(stripped):
        return False
    named = stripped[1:] if stripped[0] == "" else stripped  # after pandas' unnamed index column, when written
    return not _is_data_row(cells) or (len(set(names)) >= 3 and sorted(named) == sorted(set(names)))


def _counts_up(cells: list[str]) -> bool:
    # 0,1,2,...: the header pandas writes for a frame's unnamed columns (to_csv of DataFrame(array)), after an empty
    # cell for its row index unless index=False, or years. Three at least: a row of data 0,1 (two flags) is common;
    # one of three or more whole numbers counting up is not.
    stripped = [cell.strip() for cell in cells]
    stripped = stripped[1:] if stripped and stripped[0] == "" else stripped
    if len(stripped) < 3 or not all(cell.isascii() and cell.isdigit() for cell in stripped):
        return False
    values = [int(cell) for cell in stripped]
    return values == list(range(values[0], values[0] + len(values)))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _header_names(path: Path, cells: list[str]) -> list[str]:
    names = [cell.strip() or f"column_{j}" for j, cell in enumerate(cells)]  # pandas' index column has no name
    # a byte that is not UTF-8 (kept by _head_lines as a lone surrogate) becomes U+FFFD, which a column passed
    # through may keep and a chosen column may not (vae_tables/columns.py)
    names = [re.sub("[\udc80-\udcff]", NOT_UTF8, name) for name in names]
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise DataError(f"{path}: the header names {repeated} more than once; give every column its own name")
    return names


def _ragged(path: Path, sep: str, expected: int) -> DataError | None:
    # The first line with another number of fields than the header's, found with the csv module (pyarrow counts
    # rows, not lines; only on an error path); None when every line has them all (the error was another one).
    opener = gzip.open if suffix_of(path).endswith(".gz") else open
    try:
        with _long_fields(), opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=sep)
            for cells in reader:
                if cells and len(cells) != expected:
                    return DataError(
                        f"{path}: line {reader.line_num} has {len(cells)} fields, expected {expected} (like the "
                        f"first line): {sep.join(cells)[:80]!r}; fix or remove that line (a value holding "
                        f"{_shown(sep)} must be in double quotes)"
                    )
    except (OSError, EOFError, zlib.error, csv.Error):
        return None
    return None


def _unreadable(path: Path, exc: BaseException) -> DataError:
    if suffix_of(path).endswith(".gz"):
        return DataError(
            f"{path}: cannot decompress ({exc}): the file is not gzip or is cut short; check it with "
            f"`gzip -t {shlex.quote(str(path))}`, or drop .gz from the name if it is plain text"
        )
    return DataError(f"{path}: cannot read ({exc})")
