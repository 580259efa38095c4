"""Query parameters and the answer's shape, shared by the CLI (`similar`, `for-user`, `--json`) and the HTTP service,
so both refuse the same inputs with the same messages and print the same JSON.

Every input has a named limit: one request can ask for at most MAX_K results, name at most MAX_HISTORY /
MAX_EXCLUDE / MAX_NEGATIVE movies, and send text no longer than MAX_TITLE_CHARS; filter values travel as data into
`Filters` (quoted by sql.py), never as SQL text. A bad value raises QueryError naming the parameter; the CLI turns it
into argparse's "argument --k: ..." (exit 2), the service into a 422 with the same message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this before it knows whether it needs the store
    from genre_ray.recommend import Recommendation, Recommender
    from genre_ray.store import View

MAX_K = 100
MAX_HISTORY = 100
MAX_EXCLUDE = 500
MAX_NEGATIVE = 50
# a title or movie id (the longest TMDB title is ~250 characters)
MAX_TITLE_CHARS = 300
YEAR_MIN, YEAR_MAX = 1800, 2200
MAX_LANGUAGE_CHARS = 16
# the service refuses a larger request body with 413 before parsing it
MAX_BODY_BYTES = 64 * 1024

_YEARS = re.compile(r"(?P<lo>\d{1,4})?\s*-\s*(?P<hi>\d{1,4})?|(?P<one>\d{1,4})")
# ISO 639 codes and their regional forms ("en", "zh-CN", "xx"): letters, digits, '-' and '_'
_LANGUAGE = re.compile(r"[A-Za-z0-9_-]+")


class QueryError(ValueError):
    """A query parameter out of its limits; `param` names it as the service spells it (k, years, history...)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


def check_k(value: str | int | None) -> int | None:
    if value is None:
        return None
    n = _whole(value, "k")
    if n < 1:
        raise QueryError("k", f"{str(value)!r}: must be 1 or more")
    if n > MAX_K:
        raise QueryError("k", f"{str(value)!r}: at most {MAX_K} results per query (MAX_K)")
    return n


def check_unit_interval(value: str | float | None, param: str) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise QueryError(param, f"{str(value)!r} is not a number") from None
    if not 0.0 <= x <= 1.0:  # also refuses nan
        raise QueryError(param, f"{str(value)!r}: must be between 0 and 1")
    return x


def check_years(value: str | None) -> tuple[int | None, int | None] | None:
    """'1990-1999', '2000-', '-1999' or '1995' -> inclusive (lo, hi); None is an open end."""
    if value is None or not str(value).strip():
        return None
    text = str(value)
    m = _YEARS.fullmatch(text.strip())
    if m is None or not any(m.groups()):
        raise QueryError("years", f"{text!r} is not a year range: use 1990-1999, 2000-, -1999 or 1995")
    if m["one"]:
        lo = hi = int(m["one"])
    else:
        lo, hi = (int(m[g]) if m[g] else None for g in ("lo", "hi"))
    for y in (lo, hi):
        if y is not None and not YEAR_MIN <= y <= YEAR_MAX:
            raise QueryError("years", f"{text!r}: years must be between {YEAR_MIN} and {YEAR_MAX}")
    if lo is not None and hi is not None and lo > hi:
        raise QueryError("years", f"{text!r}: the first year is after the second")
    return lo, hi


def check_language(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if len(text) > MAX_LANGUAGE_CHARS or not _LANGUAGE.fullmatch(text):
        raise QueryError(
            "language",
            f"{value[:40]!r}: a language code such as en or zh-CN (letters, digits, '-', at most "
            f"{MAX_LANGUAGE_CHARS} characters)",
        )
    return text


def check_title(value: str | None, param: str = "title") -> str:
    text = (value or "").strip()
    if not text:
        raise QueryError(param, "give a movie title or id")
    if len(text) > MAX_TITLE_CHARS:
        raise QueryError(param, f"{len(text)} characters: at most {MAX_TITLE_CHARS} (MAX_TITLE_CHARS)")
    return text


def check_ids(value: str | Sequence[str] | None, param: str, limit: int) -> list[str]:
    """Comma-separated text (the CLI, a query string) or a list (a JSON body) -> movie ids or titles, in order."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str | int):
            raise QueryError(param, f"{item!r} is not a movie id or title")
        text = str(item).strip()
        if text:
            out.append(check_title(text, param))
    if len(out) > limit:
        raise QueryError(param, f"{len(out)} movies: at most {limit} per query")
    return out


def check_weights(value: str | Sequence[float] | None) -> list[float] | None:
    """'5,4,4.5' (or a list) -> [5.0, 4.0, 4.5]: finite, non-negative, not all zero."""
    if value is None:
        return None
    items = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else list(value)
    text = value if isinstance(value, str) else ",".join(str(w) for w in items)
    out = []
    for item in items:
        try:
            w = float(item)
        except (TypeError, ValueError):
            raise QueryError("weights", f"{str(item)!r} is not a number (give e.g. 5,4,4.5)") from None
        if not math.isfinite(w) or w < 0:
            raise QueryError("weights", f"{str(item)!r}: weights must be finite and 0 or more")
        out.append(w)
    if len(out) > MAX_HISTORY:
        raise QueryError("weights", f"{len(out)} weights: at most {MAX_HISTORY} per query")
    if not out or not any(out):
        raise QueryError("weights", f"{text!r}: give at least one weight above 0")
    return out


def _whole(value: str | int, param: str) -> int:
    if isinstance(value, bool):
        raise QueryError(param, f"{value!r} is not a whole number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise QueryError(param, f"{str(value)!r} is not a whole number") from None


@dataclass(frozen=True)
class Ranking:
    """What every query may set; None: the publish's serving parameters (or the config's) decide."""

    k: int | None = None
    language: str | None = None
    year_range: tuple[int | None, int | None] | None = None
    exclude_ids: tuple[str, ...] = ()
    popularity_weight: float | None = None
    mmr_lambda: float | None = None

    def kwargs(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "language": self.language,
            "year_range": self.year_range,
            "exclude_ids": self.exclude_ids,
            "popularity_weight": self.popularity_weight,
            "mmr_lambda": self.mmr_lambda,
        }


@dataclass(frozen=True)
class SimilarQuery:
    title_or_id: str
    ranking: Ranking = field(default_factory=Ranking)


@dataclass(frozen=True)
class ForUserQuery:
    history: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    negative: tuple[str, ...] = ()
    ranking: Ranking = field(default_factory=Ranking)


def ranking(
    k: str | int | None = None,
    language: str | None = None,
    years: str | None = None,
    exclude: str | Sequence[str] | None = None,
    popularity_weight: str | float | None = None,
    mmr: str | float | None = None,
) -> Ranking:
    return Ranking(
        k=check_k(k),
        language=check_language(language),
        year_range=check_years(years),
        exclude_ids=tuple(check_ids(exclude, "exclude", MAX_EXCLUDE)),
        popularity_weight=check_unit_interval(popularity_weight, "popularity_weight"),
        mmr_lambda=check_unit_interval(mmr, "mmr"),
    )


def similar(title_or_id: str | None, rank: Ranking) -> SimilarQuery:
    return SimilarQuery(check_title(title_or_id), rank)


def for_user(
    history: str | Sequence[str] | None,
    weights: str | Sequence[float] | None,
    negative: str | Sequence[str] | None,
    rank: Ranking,
) -> ForUserQuery:
    watched = check_ids(history, "history", MAX_HISTORY)
    if not watched:
        raise QueryError("history", "give at least one movie id or title")
    w = check_weights(weights)
    if w is not None and len(w) != len(watched):
        raise QueryError("weights", f"{len(w)} weights for {len(watched)} history ids")
    disliked = tuple(check_ids(negative, "negative", MAX_NEGATIVE))
    return ForUserQuery(tuple(watched), None if w is None else tuple(w), disliked, rank)


# ---------------------------------------------------------------- the answer


def publish_json(view: View) -> dict[str, Any]:
    return view.publish.to_json()


def result_json(r: Recommendation) -> dict[str, Any]:
    return {
        "movie_id": r.movie_id,
        "title": r.title,
        "year": r.year,
        "language": r.language,
        "score": round(r.score, 6) if math.isfinite(r.score) else None,
        "spectrum": [{"genre": g, "p": round(p, 4)} for g, p in r.spectrum],
    }


def response(view: View, results: Sequence[Recommendation]) -> dict[str, Any]:
    """What `similar` / `for-user --json` print and what the service answers: the publish that produced the
    results, then the results, best first."""
    return {"publish": publish_json(view), "results": [result_json(r) for r in results]}


def run_similar(rec: Recommender, q: SimilarQuery) -> tuple[View, list[Recommendation]]:
    """The query on one view of the store, with that view: the publish every answer names."""
    view = rec.view()
    return view, rec.similar(q.title_or_id, **q.ranking.kwargs(), view=view)


def run_for_user(rec: Recommender, q: ForUserQuery) -> tuple[View, list[Recommendation]]:
    view = rec.view()
    return view, rec.for_user(q.history, q.weights, **q.ranking.kwargs(), negative=q.negative, view=view)
