"""Source records -> rows of the normalised catalog (schema.CATALOG), or a RowError naming the bad column.

Plain Python, no Ray: one `Adapter` per source layout (TMDB 5000, MovieLens, already-normalised, or a column
mapping from the config), each a table of normalised field -> (source column, parser). Parsers raise Problem
with a short reason; the adapter turns it into a RowError that names the source column, because the column is
what somebody has to fix in the file.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pycountry
from dateutil import parser as dateutil_parser

from genre_ray.catalog.sources import CatalogError
from genre_ray.schema import NUMERIC_FIELDS

# MovieLens ids are namespaced ("ml:1") so a MovieLens catalog can sit beside a TMDB one without id collisions;
# TMDB ids stay plain because evaluation joins MovieLens links.csv `tmdbId` to them.
MOVIELENS_ID_PREFIX = "ml:"
# ids derived from title + year when a mapped catalog has no id column
DERIVED_ID_PREFIX = "ty:"
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

    def __init__(self, column: str | None, reason: str, kind: str, value: Any = None):
        super().__init__(f"{column}: {reason}" if column else reason)
        self.column = column
        self.reason = reason
        self.kind = kind
        self.value = value  # the offending source value, for examples in messages


@dataclass(frozen=True)
class FieldWarning:
    """An optional field that could not be parsed: the row is kept with the field empty, and this is recorded."""

    column: str
    reason: str  # "<field>: <problem>: <detail>", as a reject's reason would read
    kind: str
    value: Any


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


# Fast paths for the two layouts most exports use (M/D/YYYY: this repo's TMDB copy; ISO: the Kaggle original and
# most tools): regex + date() is ~20x cheaper than a general parser. Anything else goes to dateutil.
_FAST_DATES = (
    re.compile(r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})"),
    re.compile(r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?:[T ][\d:.]+Z?)?"),
)
# Excel stores a date as days since 1899-12-30; five digits cover 1927-2173, so 5-digit numbers in a date or year
# column are Excel serials, never years (a year has four digits).
_EXCEL_EPOCH = dt.date(1899, 12, 30)
_EXCEL_SERIALS = (10_000, 99_999)
# dateutil fills a missing year from `default`; year 1 cannot pass _check_year, so it marks "no year in the text".
_NO_YEAR = dt.datetime(1, 1, 1)
_INTEGER = re.compile(r"-?\d{1,5}")


def _excel_year(serial: float) -> int:
    return _check_year((_EXCEL_EPOCH + dt.timedelta(days=int(serial))).year)


def _number_year(value: float, shown: str) -> int:
    if not math.isfinite(value):
        raise Problem("not a year", shown)
    if _EXCEL_SERIALS[0] <= value <= _EXCEL_SERIALS[1]:
        return _excel_year(value)
    if value != int(value):
        raise Problem("not a year", shown)
    return _check_year(int(value))


@dataclass(frozen=True)
class YearOrDate:
    """A year from a year ("1998", 1998.0), a date in any common written form, or an Excel serial date.

    Accepted: ISO (1998-06-12, with or without a time), M/D/YYYY, D.M.YYYY, "Jun 12 1998", "12 June 1998",
    "June 1998", YYYYMMDD, a bare year, and 5-digit Excel serials (35958). Day/month order does not matter here:
    only the year is kept, and it is the same either way. `date_format` (strptime) forces one format instead.
    """

    date_format: str | None = None

    def __call__(self, value: Any) -> int | None:
        if _missing(value):
            return None
        if isinstance(value, (dt.date, dt.datetime)):
            return _check_year(value.year)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise Problem("not a date", f"{value!r:.80}")
        if isinstance(value, (int, float)):
            return _number_year(value, f"{value!r:.80}")
        s = value.strip()
        if self.date_format is not None:
            try:
                return _check_year(dt.datetime.strptime(s, self.date_format).year)
            except ValueError:
                raise Problem("not a date", f"{s!r:.80}, expected catalog.date_format {self.date_format!r}") from None
        if _INTEGER.fullmatch(s):
            return _number_year(int(s), f"{s!r:.80}")
        for pattern in _FAST_DATES:
            m = pattern.fullmatch(s)
            if m is None:
                continue
            year = _check_year(int(m["y"]))
            try:
                dt.date(year, int(m["m"]), int(m["d"]))
                return year
            except ValueError:
                break  # e.g. 13/12/1998 is D/M/YYYY: let dateutil decide
        try:
            parsed = dateutil_parser.parse(s, default=_NO_YEAR)
        except (ValueError, OverflowError):
            raise Problem("not a date", f"{s!r:.80}") from None
        if parsed.year == _NO_YEAR.year:
            raise Problem("not a date", f"{s!r:.80} has no year")
        return _check_year(parsed.year)


# A TMDB release date and a mapped year column take the same values: a year, a date or an Excel serial.
year_from_date = YearOrDate()
year = YearOrDate()


def _labels(names: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise Problem("label is not text", f"{name!r:.80}")
        s = _check_utf8(name.strip())
        if s and s not in out:  # order kept: the first genre is often the main one
            out.append(s)
    return out


def _json_list(value: Any) -> list[Any]:
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
    return list(items)


def json_names(value: Any) -> list[str]:
    """TMDB's '[{"id": 28, "name": "Action"}, ...]'; a plain JSON list of strings is accepted too."""
    return _labels(item.get("name") if isinstance(item, dict) else item for item in _json_list(value))


# TMDB's language codes that are not ISO 639-1: "cn" is its code for Cantonese, "xx" means "no language".
_TMDB_LANGUAGES: dict[str, str | None] = {"cn": "Cantonese", "xx": None}
_QUALIFIER = re.compile(r"\s*\([^)]*\)$")


@functools.lru_cache(maxsize=1024)
def english_language_name(code: str) -> str | None:
    """The English name of an ISO 639-1/-3 code ("fr" -> "French"), or None for a code that is not one."""
    key = code.strip().lower()
    if key in _TMDB_LANGUAGES:
        return _TMDB_LANGUAGES[key]
    if not 2 <= len(key) <= 3 or not key.isalpha():
        return None
    found = pycountry.languages.get(**{"alpha_2" if len(key) == 2 else "alpha_3": key})
    if found is None:
        return None
    # ISO's qualifiers ("Modern Greek (1453-)", "Swahili (macrolanguage)") are noise in a document
    return _QUALIFIER.sub("", getattr(found, "common_name", None) or found.name) or found.name


def _language_label(item: Any) -> Any:
    if isinstance(item, dict):
        # TMDB names a language in itself ("Français", "日本語", sometimes ""); the encoder reads English.
        code = item.get("iso_639_1")
        named = english_language_name(code) if isinstance(code, str) else None
        if named is not None or (isinstance(code, str) and code.strip().lower() in _TMDB_LANGUAGES):
            return named or ""
        return item.get("name") or ""
    if isinstance(item, str):
        return english_language_name(item) or item
    return item


def json_languages(value: Any) -> list[str]:
    """TMDB's '[{"iso_639_1": "fr", "name": "Français"}, ...]' as English names (["French"]); unknown codes keep
    TMDB's name, entries with neither are dropped. A JSON list of codes or names is accepted too."""
    return _labels(_language_label(item) for item in _json_list(value))


def language_labels(parse: Parser) -> Parser:
    """`parse`'s labels with ISO language codes replaced by English names ("fr" -> "French")."""

    def wrapped(value: Any) -> list[str]:
        return _labels(_language_label(name) for name in parse(value))

    return wrapped


def split_on(separators: str | Sequence[str]) -> Parser:
    """A parser for labels in one text field, separated by any of `separators` (or already a list)."""
    seps = [separators] if isinstance(separators, str) else list(separators)
    pattern = re.compile("|".join(re.escape(sep) for sep in seps))

    def parse(value: Any) -> list[str]:
        if _missing(value):
            return []
        if isinstance(value, (list, tuple)):
            return _labels(value)
        s = text(value)
        return [] if s == MOVIELENS_NO_GENRES else _labels(pattern.split(s))

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


# Only these make a row unusable; any other field that fails to parse is left empty and warned about.
REQUIRED_FIELDS = frozenset({"movie_id", "title"})
_EMPTY: dict[str, Any] = {"genres": []}


def derived_id(title: str, year: int | None) -> str:
    """A stable movie_id for catalogs without one: title (case and spacing folded) + year, hashed.

    Two rows with the same title and year get the same id, so the second is rejected as a duplicate, as any
    repeated id would be.
    """
    key = " ".join(title.casefold().split()) + "\x1f" + ("" if year is None else str(year))
    return DERIVED_ID_PREFIX + hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Adapter:
    name: str
    # normalised field -> (source column, parser); movie_id first: a row's reject names its first bad field.
    fields: Mapping[str, tuple[str, Parser]]
    # columns whose presence in a header identifies this layout ("auto")
    signature: frozenset[str] = field(default_factory=frozenset)
    finish: Callable[[dict[str, Any]], None] | None = None
    # no movie_id column: the id is derived from title + year (derived_id)
    derive_id: bool = False

    def column_of(self, name: str) -> str | None:
        spec = self.fields.get(name)
        return spec[0] if spec else None

    @property
    def id_column(self) -> str | None:
        """The source column a duplicate-id reject names: the id column, or the title a derived id comes from."""
        return self.column_of("title") if self.derive_id else self.column_of("movie_id")

    def with_date_format(self, date_format: str | None) -> Adapter:
        """This adapter with every year/date field parsed by `date_format` (strptime) only."""
        if date_format is None:
            return self
        fields = {
            name: (column, YearOrDate(date_format) if isinstance(parse, YearOrDate) else parse)
            for name, (column, parse) in self.fields.items()
        }
        return replace(self, fields=fields)

    def check_header(self, header: Sequence[str], path: str) -> None:
        required = {self.fields[name][0] for name in REQUIRED_FIELDS if name in self.fields}
        missing = sorted(required - set(header))
        if missing:
            raise CatalogError(
                f"{path}: the {self.name} adapter needs column(s) {missing}, the file has {list(header)[:30]}"
            )

    def convert(
        self, values: Mapping[str, Any], strict: bool = False, warnings: list[FieldWarning] | None = None
    ) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, (column, parse) in self.fields.items():
            raw = values.get(column)
            try:
                row[name] = parse(raw)
            except ValueError as err:
                kind = getattr(err, "kind", "invalid value")
                if strict or name in REQUIRED_FIELDS:
                    raise RowError(column, f"{name}: {err}", kind, raw) from None
                row[name] = _EMPTY.get(name)
                if warnings is not None:
                    warnings.append(FieldWarning(column, f"{name}: {err}", kind, raw))
        if self.finish is not None:
            self.finish(row)
        return row

    def normalise(
        self,
        values: Mapping[str, Any],
        limits: Limits,
        strict: bool = False,
        warnings: list[FieldWarning] | None = None,
    ) -> dict[str, Any]:
        """A catalog row (without source position, document and hash), or RowError.

        Only a missing or unusable id or title (or, with `strict`, any bad field) rejects the row; other bad fields
        are left empty and appended to `warnings`.
        """
        row = self.convert(values, strict, warnings)
        title = row.get("title")
        if not self.derive_id and row.get("movie_id") is None:
            raise RowError(self.column_of("movie_id"), "missing id", "missing id")
        if title is None:
            raise RowError(self.column_of("title"), "missing title", "missing title")
        if len(title) > limits.max_title_chars:
            raise RowError(
                self.column_of("title"),
                f"title has {len(title):,} characters, over catalog.max_title_chars={limits.max_title_chars:,}",
                "title too long",
                title[:80],
            )
        if self.derive_id:
            row["movie_id"] = derived_id(title, row.get("year"))
        overview = row.get("overview")
        if overview is not None and len(overview) > limits.max_overview_chars:
            reason = (
                f"overview has {len(overview):,} characters, "
                f"over catalog.max_overview_chars={limits.max_overview_chars:,}"
            )
            if strict:
                raise RowError(self.column_of("overview"), reason, "overview too long", overview[:80])
            column = self.column_of("overview") or "overview"
            if warnings is not None:
                warnings.append(FieldWarning(column, f"overview: {reason}", "overview too long", overview[:80]))
            row["overview"] = overview = None
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
        "studios": ("production_companies", optional_list(json_names)),
        "countries": ("production_countries", optional_list(json_names)),
        "spoken_languages": ("spoken_languages", optional_list(json_languages)),
        "original_title": ("original_title", text),
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
    "original_title": text,
    **{name: count if name == "votes" else real for name in NUMERIC_FIELDS},
}

NORMALISED = Adapter(
    name="normalised",
    fields={
        **{name: (name, _MAPPED_PARSERS[name]) for name in ("movie_id", "title")},
        "genres": ("genres", labels),
        **{name: (name, p) for name, p in _MAPPED_PARSERS.items() if name not in ("movie_id", "title")},
        **{name: (name, optional_list(labels)) for name in ("keywords", "studios", "countries")},
        "spoken_languages": ("spoken_languages", optional_list(language_labels(labels))),
    },
    signature=frozenset({"movie_id", "title"}),
)

# list fields a mapped catalog splits like its genres (catalog.genre_separator)
_MAPPED_LISTS = ("keywords", "studios", "countries", "spoken_languages")
MAPPABLE_FIELDS = frozenset({*_MAPPED_PARSERS, "genres", *_MAPPED_LISTS})


def mapped(columns: Mapping[str, str], genre_separator: str | Sequence[str]) -> Adapter:
    """An adapter from `catalog.columns` (normalised field -> source column) and `catalog.genre_separator`.

    Without a `movie_id` mapping the id is derived from title + year (derived_id). `genre_separator` is one
    separator, a list of them (any splits), or "json" for JSON lists.
    """
    unknown = sorted(set(columns) - MAPPABLE_FIELDS)
    if unknown:
        raise CatalogError(f"catalog.columns: unknown normalised field(s) {unknown}; known: {sorted(MAPPABLE_FIELDS)}")
    if "title" not in columns:
        raise CatalogError("catalog.columns: the mapped adapter needs ['title'] mapped to a source column")
    if not genre_separator or (not isinstance(genre_separator, str) and not all(genre_separator)):
        raise CatalogError("catalog.genre_separator: give a non-empty separator, a list of them, or 'json'")
    is_json = isinstance(genre_separator, str) and genre_separator.strip().lower() == "json"
    list_parser = json_names if is_json else split_on(genre_separator)
    parsers = {**_MAPPED_PARSERS, "genres": list_parser, **{name: optional_list(list_parser) for name in _MAPPED_LISTS}}
    parsers["spoken_languages"] = optional_list(language_labels(list_parser))
    order = [name for name in ("movie_id", "title") if name in columns]
    order += sorted(set(columns) - {"movie_id", "title"})
    return Adapter(
        name="mapped",
        fields={name: (columns[name], parsers[name]) for name in order},
        derive_id="movie_id" not in columns,
    )


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
