"""Source records -> rows of the normalised catalog (schema.CATALOG), or a RowError naming the bad column.

Plain Python, no Ray: one `Adapter` per source layout (TMDB 5000, MovieLens, already-normalised, or a column
mapping from the config), each a table of normalised field -> (source column, parser). Parsers raise Problem
with a short reason; the adapter turns it into a RowError that names the source column, because the column is
what somebody has to fix in the file.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from genre_ray.catalog.sources import CatalogError
from genre_ray.schema import NUMERIC_FIELDS

# MovieLens ids are namespaced ("ml:1") so a MovieLens catalog can sit beside a TMDB one without id collisions;
# TMDB ids stay plain because evaluation joins MovieLens links.csv `tmdbId` to them.
MOVIELENS_ID_PREFIX = "ml:"
MOVIELENS_NO_GENRES = "(no genres listed)"
# No film is older; anything past next decade is a typo or a placeholder date, not an announced release.
MIN_YEAR = 1870
MAX_YEARS_AHEAD = 10

Parser = Callable[[Any], Any]


class Problem(ValueError):
    """A value that cannot be parsed. `kind` is stable (counted in the accounting), `detail` names the value."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class RowError(ValueError):
    """One row that cannot enter the catalog: which source column, why, and the kind of problem."""

    def __init__(self, column: str | None, reason: str, kind: str):
        super().__init__(f"{column}: {reason}" if column else reason)
        self.column = column
        self.reason = reason
        self.kind = kind


def movielens_movie_id(movie_id: int | str) -> str:
    """The catalog movie_id of a MovieLens movieId (for joins from ratings.csv to a MovieLens-adapted catalog)."""
    return f"{MOVIELENS_ID_PREFIX}{int(movie_id)}"


# ---- value parsers: raw value (str from CSV, any JSON / Arrow scalar otherwise) -> normalised value ----------


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _check_utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Files are decoded with surrogateescape, so an invalid byte shows up here as a lone surrogate.
        try:
            shown = "byte 0x" + text[err.start].encode("utf-8", "surrogateescape").hex()
        except UnicodeEncodeError:
            shown = f"character U+{ord(text[err.start]):04X}"
        raise Problem("not valid UTF-8", f"{shown} at character {err.start}") from None
    return text


def text(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, (list, dict, bytes)):
        raise Problem("not text", type(value).__name__)
    return _check_utf8(str(value).strip())


def language(value: Any) -> str | None:
    s = text(value)
    return s.lower() if s else None


def _number(value: Any) -> float | None:
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Problem("not a number", f"{value!r:.80}")
    try:
        x = float(value)
    except ValueError:
        raise Problem("not a number", f"{value!r:.80}") from None
    if not math.isfinite(x):
        raise Problem("not a finite number", f"{value!r:.80}")
    if x < 0:
        raise Problem("negative number", f"{value!r:.80}")
    return x


def real(value: Any) -> float | None:
    return _number(value)


def count(value: Any) -> int | None:
    try:
        x = _number(value)
    except Problem as err:
        if err.kind != "not a number":
            raise
        raise Problem("not an integer", f"{value!r:.80}") from None
    if x is None:
        return None
    if x != int(x):
        raise Problem("not an integer", f"{value!r:.80}")
    return int(x)


def unknown_if_zero(value: Any) -> float | None:
    """TMDB writes 0 for an unknown budget, revenue or runtime."""
    x = _number(value)
    return None if x == 0 else x


def integer_id(value: Any) -> str | None:
    if _missing(value):
        return None
    try:
        return str(count(value))
    except Problem:
        raise Problem("not an integer id", f"{value!r:.80}") from None


def _check_year(year: int) -> int:
    latest = dt.date.today().year + MAX_YEARS_AHEAD
    if not MIN_YEAR <= year <= latest:
        raise Problem("impossible year", f"{year} (allowed {MIN_YEAR}..{latest})")
    return year


_DATES = (  # M/D/YYYY is this repo's TMDB copy; ISO is the original Kaggle file and most exports
    re.compile(r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d+)"),
    re.compile(r"(?P<y>\d+)-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?:[T ][\d:.]+Z?)?"),
)


def year_from_date(value: Any) -> int | None:
    if _missing(value):
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return _check_year(value.year)
    s = str(value).strip()
    for pattern in _DATES:
        m = pattern.fullmatch(s)
        if m is None:
            continue
        year = _check_year(int(m["y"]))
        try:
            dt.date(year, int(m["m"]), int(m["d"]))  # regex + date(): strptime is a third of the parse time
        except ValueError:
            raise Problem("not a date", f"{s!r:.80}") from None
        return year
    raise Problem("not a date", f"{s!r:.80}, expected M/D/YYYY or YYYY-MM-DD")


def year(value: Any) -> int | None:
    """A year as a number ("1995", 1995.0) or taken from a date."""
    if _missing(value):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != int(value):
            raise Problem("not a year", f"{value!r:.80}")
        return _check_year(int(value))
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return _check_year(int(value))
    return year_from_date(value)


def _labels(names: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise Problem("label is not text", f"{name!r:.80}")
        s = _check_utf8(name.strip())
        if s and s not in out:  # order kept: the first genre is often the main one
            out.append(s)
    return out


def json_names(value: Any) -> list[str]:
    """TMDB's '[{"id": 28, "name": "Action"}, ...]'; a plain JSON list of strings is accepted too."""
    if _missing(value):
        return []
    items = value
    if isinstance(value, str):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as err:
            raise Problem("not valid JSON", f"{err.msg} at column {err.colno}") from None
    if not isinstance(items, (list, tuple)):
        raise Problem("not a JSON list", type(items).__name__)
    names = [item.get("name") if isinstance(item, dict) else item for item in items]
    return _labels(names)


def split_on(separator: str) -> Parser:
    def parse(value: Any) -> list[str]:
        if _missing(value):
            return []
        if isinstance(value, (list, tuple)):
            return _labels(value)
        s = text(value)
        if s == MOVIELENS_NO_GENRES:
            return []
        return _labels(s.split(separator))

    return parse


def labels(value: Any) -> list[str]:
    """A normalised list column: an Arrow/JSON list, a JSON list in text, or pipe-separated text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        return json_names(value)
    return split_on("|")(value)


def optional_list(parse: Parser) -> Parser:
    def wrapped(value: Any) -> list[str] | None:
        return parse(value) or None

    return wrapped


_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$")


def movielens_title(value: Any) -> str | None:
    s = text(value)
    if s is None:
        return None
    m = _TITLE_YEAR.match(s)
    return m.group("title") if m and m.group("title") else s


def movielens_year(value: Any) -> int | None:
    s = text(value)
    m = _TITLE_YEAR.match(s) if s else None
    return _check_year(int(m.group("year"))) if m else None


def movielens_id(value: Any) -> str | None:
    plain = integer_id(value)
    return None if plain is None else MOVIELENS_ID_PREFIX + plain


# ---- adapters -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_overview_chars: int
    max_title_chars: int


@dataclass(frozen=True)
class Adapter:
    name: str
    # normalised field -> (source column, parser); movie_id first: a row's reject names its first bad field.
    fields: Mapping[str, tuple[str, Parser]]
    # columns whose presence in a header identifies this layout ("auto")
    signature: frozenset[str] = field(default_factory=frozenset)
    finish: Callable[[dict[str, Any]], None] | None = None

    def column_of(self, name: str) -> str | None:
        spec = self.fields.get(name)
        return spec[0] if spec else None

    def check_header(self, header: Sequence[str], path: str) -> None:
        required = {self.fields["movie_id"][0], self.fields["title"][0]}
        missing = sorted(required - set(header))
        if missing:
            raise CatalogError(
                f"{path}: the {self.name} adapter needs column(s) {missing}, the file has {list(header)[:30]}"
            )

    def convert(self, values: Mapping[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, (column, parse) in self.fields.items():
            try:
                row[name] = parse(values.get(column))
            except ValueError as err:
                raise RowError(column, f"{name}: {err}", getattr(err, "kind", "invalid value")) from None
        if self.finish is not None:
            self.finish(row)
        return row

    def normalise(self, values: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
        """A catalog row (without source position, document and hash), or RowError."""
        row = self.convert(values)
        if row.get("movie_id") is None:
            raise RowError(self.column_of("movie_id"), "missing id", "missing id")
        title = row.get("title")
        if title is None:
            raise RowError(self.column_of("title"), "missing title", "missing title")
        if len(title) > limits.max_title_chars:
            raise RowError(
                self.column_of("title"),
                f"title has {len(title):,} characters, over catalog.max_title_chars={limits.max_title_chars:,}",
                "title too long",
            )
        overview = row.get("overview")
        if overview is not None and len(overview) > limits.max_overview_chars:
            raise RowError(
                self.column_of("overview"),
                f"overview has {len(overview):,} characters, "
                f"over catalog.max_overview_chars={limits.max_overview_chars:,}",
                "overview too long",
            )
        row["genres"] = row.get("genres") or []
        row["no_overview"] = overview is None
        row["no_genres"] = not row["genres"]
        return row


def _tmdb_finish(row: dict[str, Any]) -> None:
    # TMDB shows vote_average 0 for a movie nobody rated: that is "unknown", not the worst possible score.
    if row.get("votes") == 0 and row.get("rating") == 0:
        row["rating"] = None


TMDB = Adapter(
    name="tmdb",
    fields={
        "movie_id": ("id", integer_id),
        "title": ("title", text),
        "genres": ("genres", json_names),
        "year": ("release_date", year_from_date),
        "language": ("original_language", language),
        "overview": ("overview", text),
        "tagline": ("tagline", text),
        "keywords": ("keywords", optional_list(json_names)),
        "rating": ("vote_average", real),
        "votes": ("vote_count", count),
        "popularity": ("popularity", real),
        "revenue": ("revenue", unknown_if_zero),
        "budget": ("budget", unknown_if_zero),
        "runtime": ("runtime", unknown_if_zero),
    },
    signature=frozenset({"id", "title", "genres", "release_date", "original_language"}),
    finish=_tmdb_finish,
)

MOVIELENS = Adapter(
    name="movielens",
    fields={
        "movie_id": ("movieId", movielens_id),
        "title": ("title", movielens_title),
        "genres": ("genres", split_on("|")),
        "year": ("title", movielens_year),
    },
    signature=frozenset({"movieId", "title", "genres"}),
)

_MAPPED_PARSERS: dict[str, Parser] = {
    "movie_id": text,
    "title": text,
    "language": language,
    "year": year,
    "overview": text,
    "tagline": text,
    **{name: count if name == "votes" else real for name in NUMERIC_FIELDS},
}

NORMALISED = Adapter(
    name="normalised",
    fields={
        **{name: (name, _MAPPED_PARSERS[name]) for name in ("movie_id", "title")},
        "genres": ("genres", labels),
        **{name: (name, p) for name, p in _MAPPED_PARSERS.items() if name not in ("movie_id", "title")},
        "keywords": ("keywords", optional_list(labels)),
    },
    signature=frozenset({"movie_id", "title"}),
)

MAPPABLE_FIELDS = frozenset({*_MAPPED_PARSERS, "genres", "keywords"})


def mapped(columns: Mapping[str, str], genre_separator: str) -> Adapter:
    """An adapter from `catalog.columns` (normalised field -> source column) and `catalog.genre_separator`."""
    unknown = sorted(set(columns) - MAPPABLE_FIELDS)
    if unknown:
        raise CatalogError(f"catalog.columns: unknown normalised field(s) {unknown}; known: {sorted(MAPPABLE_FIELDS)}")
    missing = sorted({"movie_id", "title"} - set(columns))
    if missing:
        raise CatalogError(f"catalog.columns: the mapped adapter needs {missing} mapped to source columns")
    list_parser = json_names if genre_separator.strip().lower() == "json" else split_on(genre_separator)
    parsers = {**_MAPPED_PARSERS, "genres": list_parser, "keywords": optional_list(list_parser)}
    order = ["movie_id", "title", *sorted(set(columns) - {"movie_id", "title"})]
    return Adapter(name="mapped", fields={name: (columns[name], parsers[name]) for name in order})


BUILTIN = {a.name: a for a in (TMDB, MOVIELENS, NORMALISED)}


def detect(header: Sequence[str], path: str) -> Adapter:
    columns = set(header)
    for adapter in BUILTIN.values():  # most specific signature first
        if adapter.signature <= columns:
            return adapter
    raise CatalogError(
        f"{path}: cannot tell the catalog layout from its columns {list(header)[:30]}; set catalog.adapter "
        "(tmdb, movielens, normalised, or mapped with catalog.columns)"
    )
