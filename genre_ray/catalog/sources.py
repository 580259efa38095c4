"""Catalog files -> raw records, each with the position it came from.

This layer knows file formats, not movies: it turns CSV / JSON Lines / Parquet (local paths or any fsspec URI,
compressed or not) into `Record`s of column -> value. A record that cannot be parsed at all (broken CSV quoting,
invalid JSON) still comes out, as a `Record` with an `error`, so the caller can count it and reject it.

Row numbers (`Record.row`), the `source_row` of the catalog and of the rejects:
- CSV and JSON Lines: the 1-based physical line on which the record starts (a CSV header is line 1), so
  `sed -n '<row>p' file` shows it even when earlier records span several lines.
- Parquet: the 0-based row index in the file (`pq.read_table(f).slice(row, 1)`).
- A JSON file whose top level is an array (`[{...}, {...}]`, any .json/.jsonl name): the 0-based element index
  (`jq '.[<row>]' file`).

A big file is read by several tasks, each one part (`split_parquet`, `split_text`), with the same records, row
numbers and errors as one task reading it whole. Text parts (uncompressed CSV and JSON Lines) are byte ranges cut
just after a newline; each knows the line number it starts on (counted beforehand, `count_lines`) and reads the
file's header from the file's start. A part owns the records that start in its range and reads past its end to
finish the last one. A CSV record can span lines (a quoted field with a newline): if one spans a cut, the next part
started inside it, so the part that owns it raises `RecordCrossesCut` at its end and the caller re-reads the
whole file in one task. JSON Lines records are one line each, so their cuts are always safe. Compressed files and
JSON arrays are never split (they cannot be entered in the middle).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import fsspec
import ijson
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from genre_ray.errors import CatalogError

Format = Literal["csv", "parquet", "jsonl"]

RAW_MAX_CHARS = 2_000
_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_GLOB_CHARS = frozenset("*?[")
_PEEK_BYTES = 4096
# elements of a JSON array whose keys make up its header
_HEADER_SAMPLE = 100


@dataclass(frozen=True)
class SourceFile:
    index: int  # position in the deterministic file order: duplicates keep the row from the lowest index
    path: str  # a local path or a URI with its protocol
    format: Format
    # A part of a big Parquet file read by its own task: row groups [start, stop), whose first row is `first_row`.
    # None: the whole file.
    row_groups: tuple[int, int] | None = None
    # A part of a big CSV / JSON Lines file: bytes [start, stop), starting on the 0-based line `first_row`.
    byte_range: tuple[int, int] | None = None
    first_row: int = 0


def split_parquet(src: SourceFile, rows_per_task: int) -> list[SourceFile]:
    """A Parquet file as parts of whole row groups with about `rows_per_task` rows each, so one big file is read by
    several tasks; rows keep their file-wide index, so order, duplicates and rejects are as for one task."""
    if src.format != "parquet":
        return [src]
    try:
        with fsspec.open(src.path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
    except Exception:  # a corrupt file: its one task reports it, naming the file
        return [src]
    parts: list[SourceFile] = []
    start = first = rows = 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= rows_per_task or g == meta.num_row_groups - 1:
            parts.append(replace(src, row_groups=(start, g + 1), first_row=first))
            start, first, rows = g + 1, first + rows, 0
    return parts if len(parts) > 1 else [src]


class RecordCrossesCut(Exception):
    """A CSV part's last record runs past the part's end: the next part began inside it, so its records are wrong
    and the file must be read by one task. Raised after every record the part owns has been yielded."""


# One read of a file for planning its parts.
_SCAN_BYTES = 1 << 20


def _is_compressed(path: str) -> bool:
    return path.lower().endswith(_COMPRESSION)


def text_cuts(src: SourceFile, bytes_per_task: int) -> list[int] | None:
    """Byte offsets [0, cut, ..., size] splitting an uncompressed CSV / JSON Lines file into parts of about
    `bytes_per_task` bytes, each cut just after a newline (so never inside a \\r\\n or a UTF-8 character) and, for a
    CSV, after its header line. None: read the file as one part (small, compressed, a JSON array, one long line)."""
    if src.format not in ("csv", "jsonl") or src.byte_range is not None or _is_compressed(src.path):
        return None
    fs, path = fsspec.core.url_to_fs(src.path)
    size = fs.size(path)
    if size <= bytes_per_task or (src.format == "jsonl" and _first_char(src.path) == "["):
        return None
    floor = _csv_header_end(src.path) if src.format == "csv" else 0
    with fs.open(path, "rb") as f:
        cuts = [0]
        for nominal in range(bytes_per_task, size, bytes_per_task):
            cut = _next_line_start(f, max(nominal, floor, cuts[-1] + 1))
            if cut is None or cut >= size:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
    return [*cuts, size] if len(cuts) > 1 else None


def _csv_header_end(path: str) -> int:
    """The byte offset just after a CSV's header, its first non-blank line (0 if there is none)."""
    with fsspec.open(path, "rb") as f:
        offset = 3 if f.read(3) == b"\xef\xbb\xbf" else 0  # the UTF-8 BOM _lines_from drops
    for line in _lines_from(path, 0):
        offset += len(line.encode("utf-8", "surrogateescape"))
        if line.strip():
            return offset
    return 0


def _next_line_start(f: Any, at: int) -> int | None:
    """The first offset >= `at` right after a \\n, or None if there is none before the end of the file."""
    f.seek(at - 1)
    pos = at - 1
    while chunk := f.read(_SCAN_BYTES):
        found = chunk.find(b"\n")
        if found >= 0:
            return pos + found + 1
        pos += len(chunk)
    return None


def count_lines(path: str, start: int, stop: int) -> int:
    """Lines in bytes [start, stop) of a file as `io.StringIO(newline="")` splits them (\\n, \\r\\n and \\r end a
    line), for a range that ends just after a newline: what a part adds to the line numbers of the parts after it."""
    n = 0
    last = b""
    with fsspec.open(path, "rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0 and (chunk := f.read(min(_SCAN_BYTES, left))):
            left -= len(chunk)
            n += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            n -= last == b"\r" and chunk[:1] == b"\n"  # a \r\n split between two reads is one line end
            last = chunk[-1:]
    return n


def split_text(
    src: SourceFile, bytes_per_task: int, count: Callable[[str, list[tuple[int, int]]], list[int]] | None = None
) -> list[SourceFile]:
    """A big uncompressed CSV / JSON Lines file as byte-range parts (see the module docstring); others as is.

    `count` maps the ranges to their line counts (the stage counts them in parallel tasks); default: here, in turn.
    """
    cuts = text_cuts(src, bytes_per_task)
    if cuts is None:
        return [src]
    ranges = list(itertools.pairwise(cuts))
    counted = count(src.path, ranges[:-1]) if count else [count_lines(src.path, a, b) for a, b in ranges[:-1]]
    firsts = [0, *itertools.accumulate(counted)]
    return [replace(src, byte_range=r, first_row=first) for r, first in zip(ranges, firsts, strict=True)]


@dataclass
class Record:
    row: int
    values: dict[str, Any] | None  # None: the record could not be parsed, see `error`
    error: str | None = None
    error_kind: str | None = None  # stable category of `error`, counted in the accounting
    _raw: str | None = None

    @property
    def raw(self) -> str:
        """The record as text, truncated; invalid UTF-8 bytes shown as \\xNN so it can be stored as Arrow utf8."""
        text = self._raw if self._raw is not None else json.dumps(self.values, default=str, ensure_ascii=False)
        return printable(text[:RAW_MAX_CHARS])


def printable(text: str) -> str:
    # Text was decoded with surrogateescape: turn the escaped bytes back into bytes, then show them as \xNN.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def format_of(path: str) -> Format | None:
    name = path.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def expand_paths(paths: Sequence[str], fmt: Format | Literal["auto"] = "auto") -> tuple[list[SourceFile], list[str]]:
    """Paths, globs and directories -> files in a deterministic order, plus warnings about skipped files.

    Order: as listed in `paths`; within a glob or directory, sorted by path. Raises CatalogError naming the path
    for anything that matches nothing or has no known format.
    """
    files: list[str] = []
    warnings: list[str] = []
    for given in paths:
        try:
            fs, root = fsspec.core.url_to_fs(given)
        except (ImportError, ValueError) as err:
            raise CatalogError(f"{given}: cannot open this location: {err}") from None
        local = isinstance(fs, LocalFileSystem)

        def shown(p: str, fs: fsspec.AbstractFileSystem = fs, local: bool = local) -> str:
            return p if local else fs.unstrip_protocol(p)

        if _GLOB_CHARS & set(root):
            found = sorted(p for p in fs.glob(root) if fs.isfile(p))
            if not found:
                raise CatalogError(f"{given}: no files match this pattern")
        elif fs.isdir(root):
            found = []
            for p in sorted(fs.find(root)):
                name = p.rsplit("/", 1)[-1]
                if name.startswith((".", "_")):
                    continue  # hidden files and writer markers (_SUCCESS, _common_metadata)
                if fmt == "auto" and format_of(p) is None:
                    warnings.append(f"{shown(p)}: skipped, not a catalog file extension")
                    continue
                found.append(p)
            if not found:
                raise CatalogError(f"{given}: directory holds no catalog files (.csv, .parquet, .jsonl)")
        elif fs.isfile(root):
            found = [root]
        else:
            raise CatalogError(f"{given}: no such file or directory")
        files.extend(shown(p) for p in found)

    sources = []
    for i, path in enumerate(files):
        file_fmt = format_of(path) if fmt == "auto" else fmt
        if file_fmt is None:
            raise CatalogError(f"{path}: unknown catalog format (use .csv, .parquet or .jsonl, or set catalog.format)")
        sources.append(SourceFile(index=i, path=path, format=file_fmt))
    return sources, warnings


def read_records(src: SourceFile) -> tuple[list[str], Iterator[Record]]:
    """The file's column names and an iterator over its records."""
    if src.format == "parquet":
        return _parquet_records(src.path, src.row_groups, src.first_row)
    if src.byte_range is not None:
        return _text_part_records(src)
    if src.format == "jsonl" and _first_char(src.path) == "[":
        return _json_array_records(src.path)
    with fsspec.open(src.path, "rb", compression="infer") as f:
        data = f.read()
    # surrogateescape: invalid bytes survive decoding and are reported per row and field, not per file.
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    if src.format == "csv":
        return _csv_records(text)
    return _jsonl_records(text, src.path)


def _text_part_records(src: SourceFile) -> tuple[list[str], Iterator[Record]]:
    """The records of one byte-range part, numbered as in the whole file; the header comes from the file's start."""
    assert src.byte_range is not None
    start, stop = src.byte_range
    with fsspec.open(src.path, "rb") as f:
        f.seek(start)
        data = f.read(stop - start)
    text = data.decode("utf-8", "surrogateescape")
    if start == 0:
        text = text.removeprefix("\ufeff")
    lines = io.StringIO(text, newline="").readlines()
    if src.format == "csv":
        # part 0 holds the header (text_cuts cuts after it); the others read it from the file's start
        header_at = _header_index(lines, default=len(lines)) if start == 0 else -1
        header = _csv_header(iter(lines[header_at:]) if start == 0 else _lines_from(src.path, 0))
        more = _lines_from(src.path, stop)
        return header, _csv_body(lines, header, header_at + 1, row0=src.first_row, own=len(lines), more=more)
    header = _jsonl_header(_lines_from(src.path, 0), src.path)
    return header, _jsonl_body(lines, row0=src.first_row)


def _lines_from(path: str, start: int) -> Iterator[str]:
    """The file's lines from byte `start` (a line start) on, read lazily; decoded as a whole-file read decodes them."""
    with fsspec.open(path, "rb") as f:
        f.seek(start)
        rest = b""
        first = start == 0
        while True:
            chunk = f.read(_SCAN_BYTES)
            data = rest + chunk
            # up to the last \n: never inside a \r\n or a UTF-8 character; at the end of the file, everything
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            if cut:
                text = data[:cut].decode("utf-8", "surrogateescape")
                if first:
                    text, first = text.removeprefix("\ufeff"), False
                yield from io.StringIO(text, newline="").readlines()
            rest = data[cut:]
            if not chunk:
                return


def _header_index(lines: Sequence[str], default: int | None = None) -> int | None:
    """Where a CSV's header is: its first non-blank line."""
    return next((i for i, line in enumerate(lines) if line.strip()), default)


def _csv_header(lines: Iterator[str]) -> list[str]:
    """The column names on the first non-blank line ([] if there is none)."""
    for line in lines:
        if line.strip():
            return [h.strip() for h in next(csv.reader([line]))]
    return []


def _first_char(path: str) -> str:
    """The first non-blank character of a (possibly compressed) file, "" if it has none: "[" means a JSON array."""
    with fsspec.open(path, "rb", compression="infer") as f:
        while chunk := f.read(_PEEK_BYTES):
            rest = chunk.decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")
            if rest:
                return rest[0]
    return ""


class _LineCursor:
    """Feeds physical lines to csv.reader and knows where it stopped, so a bad record can be re-read.

    `more`: the lines after `lines` (a part's continuation past its end), appended to `lines` only when a record
    needs them.
    """

    def __init__(self, lines: list[str], pos: int, more: Iterator[str] | None = None):
        self.lines = lines
        self.pos = pos
        self.more = more

    def __iter__(self) -> _LineCursor:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            line = next(self.more, None) if self.more is not None else None
            if line is None:
                raise StopIteration
            self.lines.append(line)
        self.pos += 1
        return self.lines[self.pos - 1]


def _csv_records(text: str) -> tuple[list[str], Iterator[Record]]:
    # newline="": split on \n, \r\n and \r, the terminators csv itself recognises, and keep them.
    lines = io.StringIO(text, newline="").readlines()
    header_at = _header_index(lines)
    if header_at is None:
        return [], iter(())
    header = _csv_header(iter(lines[header_at:]))
    return header, _csv_body(lines, header, header_at + 1)


def _csv_body(
    lines: list[str],
    header: list[str],
    first: int,
    row0: int = 0,
    own: int | None = None,
    more: Iterator[str] | None = None,
) -> Iterator[Record]:
    """Records starting on lines[first:own] (all of them by default); `row0` is the file line of lines[0]."""
    own = len(lines) if own is None else own
    cursor = _LineCursor(lines, first, more)
    reader = csv.reader(cursor, strict=True)
    kind: str | None
    while cursor.pos < own:
        start = cursor.pos
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            # strict=True: an unclosed quote that runs to the end of the file (or past the field size limit) is an
            # error here, instead of silently becoming one giant last field with the right number of columns.
            too_big = "field larger than field limit" in str(err)
            kind = "CSV field too large" if too_big else "bad CSV quoting"
            problem = f"{kind}: {err}"
        else:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a blank line is not a record
            kind = problem = None
            if len(fields) != len(header):
                span = cursor.pos - start
                where = f" in a record spanning {span} lines (an unclosed quote?)" if span > 1 else ""
                kind = "wrong number of CSV fields"
                problem = f"{kind}: expected {len(header)}, got {len(fields)}{where}"
        if problem is not None:
            # Reject only the line the broken record starts on and re-read everything after it: an unclosed quote
            # swallows the following lines into one field, and they are good rows of their own.
            yield Record(row=row0 + start + 1, values=None, error=problem, error_kind=kind, _raw=lines[start])
            cursor.pos = start + 1
            reader = csv.reader(cursor, strict=True)
            continue
        yield Record(
            row=row0 + start + 1,
            values=dict(zip(header, fields, strict=True)),
            _raw="".join(lines[start : cursor.pos]),
        )
    if cursor.pos > own:
        raise RecordCrossesCut(f"a record runs past line {row0 + own} (a quoted field with a newline)")


def _jsonl_records(text: str, path: str) -> tuple[list[str], Iterator[Record]]:
    lines = io.StringIO(text, newline="").readlines()
    return _jsonl_header(iter(lines), path), _jsonl_body(lines)


def _jsonl_header(lines: Iterator[str], path: str) -> list[str]:
    """The keys of the file's first JSON object (read only as far as that object); a file-level error if the file
    is one multi-line object or holds no object at all."""
    header: list[str] = []
    first: str | None = None
    for line in lines:
        if first is None and line.strip():
            first = line.strip()
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            header = list(obj)
            break
    if first == "{":
        raise CatalogError(
            f"{path}: the top level is one JSON object spread over several lines; a catalog is an array of "
            "objects or JSON Lines (one object per line). If the records sit under a key, extract them, "
            "e.g. jq '.movies' file.json"
        )
    if first is not None and not header:
        raise CatalogError(
            f"{path}: no JSON object found: the top level must be an array of objects or JSON Lines "
            f"(one object per line); the file starts with {first[:40]!r}"
        )
    return header


def _jsonl_body(lines: list[str], row0: int = 0) -> Iterator[Record]:
    for i, line in enumerate(lines, start=row0):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            error = f"invalid JSON: {err.msg} at column {err.colno}"
            yield Record(row=i + 1, values=None, error=error, error_kind="invalid JSON", _raw=line)
            continue
        if not isinstance(obj, dict):
            error = f"not a JSON object: {type(obj).__name__}"
            yield Record(row=i + 1, values=None, error=error, error_kind="not a JSON object", _raw=line)
            continue
        yield Record(row=i + 1, values=obj, _raw=line)


def _json_array_records(path: str) -> tuple[list[str], Iterator[Record]]:
    """A file whose top level is a JSON array: each element is a record, `row` = its 0-based index.

    Streamed (ijson), so a multi-GB array never sits in memory as one string. The header is the keys of the first
    objects, so a key that an export leaves out when null still counts as a column.
    """
    f = fsspec.open(path, "rb", compression="infer").open()
    items = _json_array_items(path, f)
    head: list[Any] = []
    header: dict[str, None] = {}
    for element in items:
        head.append(element)
        if isinstance(element, dict):
            header.update(dict.fromkeys(element))
        if len(head) == _HEADER_SAMPLE:
            break
    if head and not header:
        f.close()
        raise CatalogError(f"{path}: the top-level JSON array holds no objects (first element: {head[0]!r:.80})")
    return list(header), _json_array_body(head, items)


def _json_array_items(path: str, f: Any) -> Iterator[Any]:
    n = 0
    try:
        for element in ijson.items(f, "item", use_float=True):
            yield element
            n += 1
    except ijson.JSONError as err:
        # The stream cannot be resynchronised after a syntax error (or invalid UTF-8): the file is unusable.
        detail = str(err).splitlines()[0].removeprefix("b'").rstrip("'")
        raise CatalogError(f"{path}: invalid JSON after array element {n}: {detail}") from None
    finally:
        f.close()


def _json_array_body(head: list[Any], rest: Iterator[Any]) -> Iterator[Record]:
    for row, element in enumerate(itertools.chain(head, rest)):
        if isinstance(element, dict):
            yield Record(row=row, values=element)
        else:
            error = f"not a JSON object: {type(element).__name__}"
            raw = json.dumps(element, ensure_ascii=False, default=str)
            yield Record(row=row, values=None, error=error, error_kind="not a JSON object", _raw=raw)


def _parquet_records(
    path: str, row_groups: tuple[int, int] | None = None, first_row: int = 0
) -> tuple[list[str], Iterator[Record]]:
    f = fsspec.open(path, "rb").open()
    try:
        pf = pq.ParquetFile(f)
    except Exception as err:  # pyarrow raises several types for a corrupt file; all mean "not usable"
        f.close()
        raise CatalogError(f"{path}: not a readable Parquet file: {err}") from None
    groups = range(*row_groups) if row_groups is not None else None
    return list(pf.schema_arrow.names), _parquet_body(pf, f, groups, first_row)


def _parquet_body(pf: pq.ParquetFile, f: Any, groups: range | None, first_row: int) -> Iterator[Record]:
    row = first_row
    try:
        # Batches bound memory on large files; Python rows because validation is per value anyway.
        for batch in pf.iter_batches(batch_size=16_384, row_groups=groups):
            for values in batch.to_pylist():
                yield Record(row=row, values=values)
                row += 1
    finally:
        f.close()
