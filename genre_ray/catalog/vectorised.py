"""The TMDB adapter and the document builder on Arrow kernels, for the records whose values they handle exactly.

The per-row parser (`adapters.TMDB.normalise`, `text.DocumentBuilder`, `text.content_hash`) is the reference: this
module reproduces it column by column for the common, clean shapes of each value (a plain integer id, M/D/YYYY or
ISO dates, plain decimals, TMDB's JSON lists as json.dumps writes them, valid UTF-8 text) and hands every other
record back to the reference, which parses it, rejects it or warns about it with its own messages. A record that
would be rejected or warned about is therefore never handled here, and `parse_chunk` returns only kept rows whose
every column equals what the reference makes of them (tests/test_catalog_vectorised.py runs both).

Only the content hash stays a Python loop (hashlib has no Arrow kernel); everything else is one kernel call per
column and chunk. The stage (`stage.parse_file`) picks this parser with `catalog.parser`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from collections.abc import Callable, Sequence
from string import Template
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genre_ray.catalog.adapters import (
    _TMDB_LANGUAGES,
    MAX_YEARS_AHEAD,
    MIN_YEAR,
    TMDB,
    Adapter,
    Limits,
    english_language_name,
)
from genre_ray.catalog.sources import Record, SourceFile
from genre_ray.text import LABEL_FIELDS, DocumentBuilder, _money, _other_title

# What str.strip() and str.split() strip (Python's Unicode whitespace), as an Arrow trim set and an RE2 class:
# Arrow's own whitespace kernels use a smaller set, and a different strip would change a title or a document.
_PY_SPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
_SPACE_RUN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE) + "]+"

# A JSON string TMDB's export writes without escapes or control characters (json.loads returns it unchanged),
# and one that may hold escapes (for values only checked for shape, never used as text).
_PLAIN = r'"[^"\\\x00-\x1f]*"'
_ESCAPED = r'"(?:[^"\\\x00-\x1f]|\\[\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_ID = r"[0-9]+"


def _list_of(item: str) -> str:
    return rf"^\[(?:{item}(?:, {item})*)?\]$"


# column -> (the whole value's pattern, quotes per item, index of the label's token when split on '"'). The
# patterns leave no '"' inside a token, so splitting on '"' finds every item's label at a fixed stride.
_JSON_LISTS: dict[str, tuple[str, int, int]] = {
    "genres": (_list_of(rf'\{{"id": {_ID}, "name": {_PLAIN}\}}'), 6, 5),
    "keywords": (_list_of(rf'\{{"id": {_ID}, "name": {_PLAIN}\}}'), 6, 5),
    "production_companies": (_list_of(rf'\{{"name": {_PLAIN}, "id": {_ID}\}}'), 6, 3),
    "production_countries": (_list_of(rf'\{{"iso_3166_1": {_PLAIN}, "name": {_PLAIN}\}}'), 8, 7),
    # the label is the code's English name (adapters.json_languages), so TMDB's own name may hold escapes
    "spoken_languages": (_list_of(rf'\{{"iso_639_1": {_PLAIN}, "name": {_ESCAPED}\}}'), 8, 3),
}
_INTEGER = r"^[0-9]{1,15}$"  # exact through float(), as the reference parses it
_DECIMAL = r"^[0-9]+(?:\.[0-9]+)?$"
_DATES = (
    (r"^(?P<m>[0-9]{1,2})/(?P<d>[0-9]{1,2})/(?P<y>[0-9]{4})$", "m", "d"),
    (r"^(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})$", "m", "d"),
)
_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def supports(adapter: Adapter) -> bool:
    """Whether this parser reproduces `adapter` (the TMDB layout, any date form: not a catalog.date_format)."""
    return adapter is TMDB


class VectorParser:
    """`parse_chunk` for one file: the adapter's limits, the document parts and the encoder id are fixed."""

    def __init__(self, limits: Limits, build: DocumentBuilder, enc_id: str, schema: pa.Schema):
        self.limits = limits
        self.documents = _Documents(build)
        self.hash_prefix = hashlib.sha256(enc_id.encode("utf-8") + b"\x00")
        self.schema = schema  # the stage's catalog schema plus its order key

    def parse_chunk(self, records: Sequence[Record], src: SourceFile, order_bits: int) -> tuple[pa.Table, list[int]]:
        """The catalog rows (with the order key) of the records this parser handles exactly, and the positions in
        `records` of the others, which the caller gives to the reference parser."""
        n = len(records)
        hard = np.zeros(n, dtype=bool)
        for i, rec in enumerate(records):
            if rec.values is None:
                hard[i] = True
        values = [rec.values or {} for rec in records]
        raw = {column: _strings([v.get(column) for v in values], hard) for column, _ in TMDB.fields.values()}
        rows = np.fromiter((rec.row for rec in records), dtype=np.int64, count=n)
        cols, bad = self._columns(raw)
        hard |= bad
        keep = pa.array(~hard)
        table = {name: col.filter(keep) for name, col in cols.items()}
        kept_rows = pa.array(rows[~hard])
        table["source_file"] = pa.repeat(pa.scalar(src.path, pa.string()), len(kept_rows))
        table["source_row"] = kept_rows
        table["no_overview"] = table["overview"].is_null()
        table["no_genres"] = pc.equal(pc.list_value_length(table["genres"]), 0)
        table["tags"] = pa.nulls(len(kept_rows), pa.list_(pa.string()))
        table["_order"] = pc.bit_wise_or(kept_rows, pa.scalar(src.index << order_bits, pa.int64()))
        docs = self.documents(table)
        table["document"] = docs
        table["content_hash"] = pa.array(self._hashes(docs), pa.string())
        out = pa.table({f.name: table[f.name] for f in self.schema}).cast(self.schema)
        return out, np.flatnonzero(hard).tolist()

    def _hashes(self, docs: pa.Array) -> list[str]:
        prefix = self.hash_prefix
        out = []
        for doc in docs.to_pylist():
            h = prefix.copy()
            h.update(doc.encode("utf-8"))
            out.append(h.hexdigest()[:32])
        return out

    def _columns(self, raw: dict[str, pa.Array]) -> tuple[dict[str, pa.Array], np.ndarray]:
        """Every TMDB field as an Arrow column, and the rows some field of which needs the reference."""
        n = len(next(iter(raw.values())))
        bad = np.zeros(n, dtype=bool)
        cols: dict[str, pa.Array] = {}
        for name, (column, _) in TMDB.fields.items():
            value = raw[column]
            if name == "movie_id":
                col, hard = _integer(value)
                hard |= _null(col)  # a missing id rejects the row
                col = pc.cast(col, pa.string())
            elif name in ("title", "overview", "tagline", "original_title", "language"):
                col, hard = _text(value, lower=name == "language")
                if name == "title":
                    hard |= _null(col) | _longer(col, self.limits.max_title_chars)
                elif name == "overview":
                    hard |= _longer(col, self.limits.max_overview_chars)  # a warning, with the reference's words
            elif name == "year":
                col, hard = _year(value)
            elif name in ("genres", "keywords", "studios", "countries", "spoken_languages"):
                col, hard = _labels(value, column)
                if name != "genres":  # optional_list: an empty list is None
                    col = pc.if_else(pc.equal(pc.list_value_length(col), 0), pa.scalar(None, col.type), col)
            elif name == "votes":
                col, hard = _integer(value)
            elif name in ("rating", "popularity"):
                col, hard = _decimal(value)
            else:  # revenue, budget, runtime: TMDB's 0 means unknown
                col, hard = _decimal(value)
                col = pc.if_else(pc.equal(col, 0.0), pa.scalar(None, pa.float64()), col)
            cols[name] = col
            bad |= hard
        # adapters._tmdb_finish: a rating of 0 from 0 votes is "unknown"
        unrated = pc.and_kleene(pc.equal(cols["votes"], 0), pc.equal(cols["rating"], 0.0))
        cols["rating"] = pc.if_else(pc.fill_null(unrated, False), pa.scalar(None, pa.float64()), cols["rating"])
        cols["genres"] = pc.fill_null(cols["genres"], pa.scalar([], pa.list_(pa.string())))
        return cols, bad


# ---- columns: each returns (values, rows that need the reference); values of those rows are unspecified -------


def _strings(values: list[Any], hard: np.ndarray) -> pa.Array:
    """A source column as an Arrow string array. Values that are not text (JSON numbers, lists) or not valid UTF-8
    (lone surrogates from surrogateescape) become null here and their rows go to the reference."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid, UnicodeEncodeError):
        for i, v in enumerate(values):
            if v is not None and not (isinstance(v, str) and _encodable(v)):
                hard[i] = True
                values[i] = None
        return pa.array(values, pa.string())


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _null(col: pa.Array) -> np.ndarray:
    return _np(col.is_null())


def _longer(col: pa.Array, limit: int) -> np.ndarray:
    return _np(pc.greater(pc.utf8_length(col), limit))


def _blank(value: pa.Array) -> pa.Array:
    """adapters._missing for text: null, or nothing but whitespace."""
    return pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim(value, _PY_SPACE)), 0), True)


def _where(mask: pa.Array, value: pa.Array) -> pa.Array:
    return pc.if_else(mask, value, pa.scalar(None, value.type))


def _matching(value: pa.Array, pattern: str) -> tuple[pa.Array, np.ndarray]:
    """(mask of values matching `pattern`, rows whose value is neither that nor missing)."""
    ok = pc.fill_null(pc.match_substring_regex(value, pattern), False)
    return ok, _np(pc.invert(pc.or_(ok, _blank(value))))


def _text(value: pa.Array, lower: bool = False) -> tuple[pa.Array, np.ndarray]:
    col = _where(pc.invert(_blank(value)), pc.utf8_trim(value, _PY_SPACE))
    if not lower:
        return col, np.zeros(len(value), dtype=bool)
    # str.lower() and Arrow's utf8_lower differ outside ASCII; language codes are ASCII
    return pc.ascii_lower(col), _np(pc.invert(pc.string_is_ascii(col)))


def _integer(value: pa.Array) -> tuple[pa.Array, np.ndarray]:
    ok, hard = _matching(value, _INTEGER)
    return pc.cast(_where(ok, value), pa.int64()), hard


def _decimal(value: pa.Array) -> tuple[pa.Array, np.ndarray]:
    ok, hard = _matching(value, _DECIMAL)
    return pc.cast(_where(ok, value), pa.float64()), hard  # Arrow's string -> double rounds as float() does


def _year(value: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """YearOrDate for M/D/YYYY and ISO dates that are real days in allowed years; any other form goes to the
    reference (dateutil, Excel serials, bare years, impossible years and their warnings)."""
    n = len(value)
    year = np.zeros(n, dtype=np.int64)
    found = np.zeros(n, dtype=bool)
    for pattern, _, _ in _DATES:
        parts = pc.extract_regex(_where(pc.invert(pa.array(found)), value), pattern)
        valid = pc.fill_null(parts.is_valid(), False)  # a non-match's fields are "", not null
        matched = _np(valid)
        if not matched.any():
            continue
        y, m, d = (
            np.asarray(pc.cast(pc.if_else(valid, parts.field(k), "0"), pa.int64()).to_numpy(), dtype=np.int64)
            for k in ("y", "m", "d")
        )
        leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
        days = _DAYS[np.clip(m, 0, 12)] + ((m == 2) & leap)
        real = matched & (m >= 1) & (m <= 12) & (d >= 1) & (d <= days)
        year = np.where(real, y, year)
        found |= real
    latest = dt.date.today().year + MAX_YEARS_AHEAD
    found &= (year >= MIN_YEAR) & (year <= latest)
    hard = ~found & ~_np(_blank(value))
    return pa.array(year, pa.int32(), mask=~found), hard


def _labels(value: pa.Array, column: str) -> tuple[pa.Array, np.ndarray]:
    """adapters.json_names / json_languages for TMDB's lists: labels stripped, in order. A list with an empty or
    repeated label (which the reference drops) or of another shape goes to the reference."""
    pattern, quotes, at = _JSON_LISTS[column]
    ok, hard = _matching(value, pattern)
    tokens = pc.split_pattern(_where(ok, value), '"')
    counts = np.asarray(pc.fill_null(pc.list_value_length(tokens), 1).to_numpy(), dtype=np.int64)
    items = (counts - 1) // quotes
    starts = np.asarray(tokens.offsets.to_numpy(), dtype=np.int64)[:-1]
    first = np.repeat(starts + at, items)
    within = np.arange(items.sum()) - np.repeat(np.cumsum(items) - items, items)
    flat = tokens.values.take(pa.array(first + within * quotes))
    if column == "spoken_languages":
        flat, unknown = _language_names(flat)
        hard |= _rows_of(unknown, items)
    flat = pc.utf8_trim(flat, _PY_SPACE)
    offsets = np.concatenate([[0], np.cumsum(items)])
    hard |= _rows_of(_np(pc.equal(pc.utf8_length(flat), 0)), items)
    hard |= _repeated(flat, items)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat), hard


def _language_names(codes: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """ISO codes -> English names (adapters._language_label), looked up once per distinct code; codes with no
    name (TMDB's own name would be the label) are marked."""
    distinct = pc.unique(codes)
    names: list[str | None] = []
    for code in distinct.to_pylist():
        named = english_language_name(code)
        names.append(named if named is not None else ("" if code.strip().lower() in _TMDB_LANGUAGES else None))
    looked_up = pc.take(pa.array(names, pa.string()), pc.index_in(codes, value_set=distinct))
    return pc.fill_null(looked_up, ""), _null(looked_up)


def _rows_of(item_mask: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Rows with at least one marked item."""
    row_of = np.repeat(np.arange(len(items)), items)
    out = np.zeros(len(items), dtype=bool)
    out[row_of[item_mask]] = True
    return out


def _repeated(flat: pa.Array, items: np.ndarray) -> np.ndarray:
    """Rows whose list names one label twice."""
    if not len(flat):
        return np.zeros(len(items), dtype=bool)
    row_of = np.repeat(np.arange(len(items)), items)
    pairs = pa.table({"row": row_of, "label": flat}).group_by(["row", "label"], use_threads=False)
    counted = pairs.aggregate([("label", "count")])
    twice = pc.filter(counted["row"], pc.greater(counted["label_count"], 1))
    out = np.zeros(len(items), dtype=bool)
    out[np.asarray(twice.to_numpy(), dtype=np.int64)] = True
    return out


# ---- documents -------------------------------------------------------------------------------------------------


class _Documents:
    """DocumentBuilder on columns: each part's literal text and rendered fields joined by kernels."""

    def __init__(self, build: DocumentBuilder):
        self.include_genres = build.include_genres
        self.parts = [_segments(template) for template, _ in build.parts]
        self.fields = [fields for _, fields in build.parts]

    def __call__(self, table: dict[str, pa.Array]) -> pa.Array:
        n = len(table["movie_id"])
        rendered: dict[str, pa.Array] = {}
        parts: list[pa.Array] = []
        for segments, fields in zip(self.parts, self.fields, strict=True):
            if len(set(fields)) < len(fields):
                continue  # DocumentBuilder counts present fields by name: a repeated field never fills its part
            pieces: list[pa.Array | pa.Scalar] = []
            for literal, name in segments:
                pieces.append(pa.scalar(literal, pa.string()))
                if name is not None:
                    if name not in rendered:
                        rendered[name] = self._render(name, table, n)
                    pieces.append(rendered[name])
            if len(pieces) == 1:
                parts.append(pa.array(np.full(n, pieces[0].as_py(), dtype=object), pa.string()))
            else:
                parts.append(pc.binary_join_element_wise(*pieces, "", null_handling="emit_null"))
        if not parts:
            return pa.array(np.full(n, "", dtype=object), pa.string())
        doc = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, " ", null_handling="skip")
        doc = pc.replace_substring_regex(pc.fill_null(doc, ""), _SPACE_RUN, " ")
        return pc.utf8_trim(doc, " ")

    def _render(self, name: str, table: dict[str, pa.Array], n: int) -> pa.Array:
        """text._render of a field where text._present holds, null elsewhere."""
        if name in LABEL_FIELDS and not self.include_genres:
            return pa.nulls(n, pa.string())
        if name in ("budget_text", "revenue_text"):
            return _python(_money, table[name.removesuffix("_text")])
        if name == "original_title_text":
            return _other_titles(table["original_title"], table["title"])
        col = table.get(name)
        if col is None:
            return pa.nulls(n, pa.string())
        typ = col.type
        if pa.types.is_string(typ):
            trimmed = pc.utf8_trim(col, _PY_SPACE)
            return _where(pc.greater(pc.utf8_length(trimmed), 0), trimmed)
        if pa.types.is_list(typ):
            return _where(pc.greater(pc.list_value_length(col), 0), pc.binary_join(col, ", "))
        if pa.types.is_boolean(typ):
            return pc.if_else(col, "True", "False")
        if pa.types.is_integer(typ):
            return pc.cast(col, pa.string())
        return _floats(col)


def _segments(template: Template) -> list[tuple[str, str | None]]:
    """A template as (literal text, field after it or None): what safe_substitute puts where."""
    out: list[tuple[str, str | None]] = []
    text, last = template.template, 0
    literal = ""
    for m in template.pattern.finditer(text):
        literal += text[last : m.start()]
        last = m.end()
        if m.group("escaped") is not None:
            literal += template.delimiter
        elif m.group("named") or m.group("braced"):
            out.append((literal, m.group("named") or m.group("braced")))
            literal = ""
        else:  # an invalid placeholder stays as written
            literal += m.group(0)
    out.append((literal + text[last:], None))
    return out


def _floats(col: pa.Array) -> pa.Array:
    """f"{v:g}": integral values under a million print as integers; others go through Python's formatting."""
    present = pc.and_(col.is_valid(), pc.invert(pc.is_nan(col)))
    whole = pc.and_(present, pc.and_(pc.equal(pc.floor(col), col), pc.less(pc.abs(col), 1e6)))
    whole = pc.fill_null(whole, False)
    as_int = pc.cast(pc.cast(_where(whole, col), pa.int64()), pa.string())
    rest = pc.and_(present, pc.invert(whole))
    if not pc.any(rest).as_py():
        return as_int
    other = _python(lambda v: f"{v:g}", _where(rest, col))
    return pc.coalesce(as_int, other)


def _python(func: Callable[[Any], str | None], col: pa.Array) -> pa.Array:
    """`func` of each non-null value (a Python loop over those values only)."""
    values = col.to_pylist()
    return pa.array([None if v is None else func(v) for v in values], pa.string())


def _other_titles(original: pa.Array, title: pa.Array) -> pa.Array:
    """text._other_title: Python's casefold only for the rows whose original title differs from the title."""
    differs = pa.array(np.flatnonzero(_np(pc.not_equal(original, title))))
    out: list[str | None] = [None] * len(original)
    pairs = zip(original.take(differs).to_pylist(), title.take(differs).to_pylist(), strict=True)
    for i, (other, same) in zip(differs.to_pylist(), pairs, strict=True):
        out[i] = _other_title(other, same)
    return pa.array(out, pa.string())
