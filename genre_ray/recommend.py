"""Recommendations from the published store: movies like one title, or like a viewer's history.

Candidates come from the vector index (cosine over genre-spectrum vectors, filters pushed into the query as
pre-filters); re-ranking is optional and happens on a candidate pool a few times larger than k:
- popularity prior: score = (1 - w) * similarity + w * log1p(votes) / log1p(max votes in the catalog);
- MMR diversity: greedily pick argmax  lambda * score - (1 - lambda) * max cosine to the already picked.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genre_ray import schema
from genre_ray.config import Config
from genre_ray.layout import RunLayout
from genre_ray.ranking import unit_rows
from genre_ray.store import Filters, Store

# How many candidates per requested result the re-rankers see; enough for MMR to find diverse neighbours.
RERANK_POOL = 4
SPECTRUM_TOP = 3


class MovieNotFound(LookupError):
    pass


class BadQuery(ValueError):
    """A query argument the store cannot answer (e.g. a language it has no movie in); the message lists options."""


@dataclass(frozen=True)
class Recommendation:
    movie_id: str
    title: str
    year: int | None
    language: str | None
    score: float
    # (genre, probability), most likely first: the readable genre spectrum
    spectrum: list[tuple[str, float]]


class Recommender:
    def __init__(self, cfg: Config, layout: RunLayout, store: Store | None = None):
        self.cfg = cfg.recommend
        self.store = store or Store(layout.store_dir, nprobes=cfg.store.nprobes, refine_factor=cfg.store.refine_factor)
        manifest = self.store.require_manifest()
        self.vocab: list[str] = manifest["vocab"]
        self.max_log_votes: float = manifest["stats"]["max_log_votes"] or 1.0

    # -- lookups ----------------------------------------------------------------------------------------------
    def resolve(self, title_or_id: str) -> dict:
        """The served row (with vector) of a movie id or a title (case-insensitive; most-voted if ambiguous)."""
        key = title_or_id.strip()
        rows = self.store.get([key])
        if rows.num_rows == 0:
            rows = self.store.by_title(key, ["movie_id", "title", "votes", "vector"])
        if rows.num_rows == 0:
            titles = self.store.titles_near(key)
            by_lower = {t.lower(): t for t in titles if t}
            close = difflib.get_close_matches(key.lower(), list(by_lower), n=5, cutoff=0.6)
            hint = "; close matches: " + ", ".join(repr(by_lower[c]) for c in close) if close else ""
            raise MovieNotFound(f"no movie with id or title {title_or_id!r}{hint}")
        best = max(rows.to_pylist(), key=lambda r: r.get("votes") or 0)
        return best

    # -- queries ----------------------------------------------------------------------------------------------
    def similar(
        self,
        title_or_id: str,
        k: int | None = None,
        language: str | None = None,
        year_range: tuple[int | None, int | None] | None = None,
        exclude_ids: Sequence[str] = (),
        popularity_weight: float | None = None,
        mmr_lambda: float | None = None,
    ) -> list[Recommendation]:
        movie = self.resolve(title_or_id)
        filters = Filters(language, year_range, (movie["movie_id"], *exclude_ids))
        return self._recommend(np.asarray(movie["vector"]), k, filters, popularity_weight, mmr_lambda)

    def for_user(
        self,
        history: Sequence[str],
        weights: Sequence[float] | None = None,
        k: int | None = None,
        language: str | None = None,
        year_range: tuple[int | None, int | None] | None = None,
        exclude_ids: Sequence[str] = (),
        popularity_weight: float | None = None,
        mmr_lambda: float | None = None,
    ) -> list[Recommendation]:
        """Movies like a viewer's history: the weighted mean of the (unit) spectra of what they watched or liked."""
        if not history:
            raise ValueError("history is empty: give at least one movie id or title")
        if weights is not None and len(weights) != len(history):
            raise ValueError(f"{len(weights)} weights for {len(history)} history items")
        movies = [self.resolve(h) for h in history]
        vectors = np.stack([_unit(np.asarray(m["vector"], dtype=np.float32)) for m in movies])
        w = np.asarray(weights if weights is not None else [1.0] * len(movies), dtype=np.float32)
        profile = (w[:, None] * vectors).sum(axis=0)
        if not np.any(profile):
            raise ValueError("history weights cancel out: the taste profile is the zero vector")
        seen = [m["movie_id"] for m in movies]
        filters = Filters(language, year_range, (*seen, *exclude_ids))
        return self._recommend(_unit(profile), k, filters, popularity_weight, mmr_lambda)

    def _recommend(
        self,
        vector: np.ndarray,
        k: int | None,
        filters: Filters,
        popularity_weight: float | None,
        mmr_lambda: float | None,
    ) -> list[Recommendation]:
        k = k or self.cfg.k
        pw = self.cfg.popularity_weight if popularity_weight is None else popularity_weight
        lam = self.cfg.mmr_lambda if mmr_lambda is None else mmr_lambda
        rerank = pw > 0 or lam is not None
        hits = self.store.search(vector, k * RERANK_POOL if rerank else k, filters, with_vectors=lam is not None)
        if hits.num_rows == 0:
            if filters.language is not None:
                self._check_language(filters.language)
            return []
        scores = 1.0 - hits["_distance"].to_numpy(zero_copy_only=False).astype(np.float64)
        if pw > 0:
            votes = np.nan_to_num(hits["votes"].to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
            scores = (1.0 - pw) * scores + pw * np.log1p(np.maximum(votes, 0)) / self.max_log_votes
        if lam is not None:
            order = mmr(scores, unit_rows(schema.vector_matrix(hits["vector"])), k, lam)
        else:
            order = list(np.argsort(-scores, kind="stable")[:k])
        rows = hits.to_pylist()
        return [self._result(rows[i], float(scores[i])) for i in order]

    def _check_language(self, language: str) -> None:
        # Only after an empty result: a typo ("eng") and "no match in this year range" look the same otherwise.
        counts = Counter(self.store.scan(["language"])["language"].to_pylist())
        if counts.get(language):
            return
        known = ", ".join(f"{lang} ({n})" for lang, n in counts.most_common() if lang)
        raise BadQuery(f"--language {language!r}: no movie in the store has it; languages (movies): {known}")

    def _result(self, row: dict, score: float) -> Recommendation:
        probs = row.get("genre_probs") or []
        top = sorted(zip(self.vocab, probs, strict=False), key=lambda gp: -gp[1])[:SPECTRUM_TOP]
        return Recommendation(
            movie_id=row["movie_id"],
            title=row["title"],
            year=row.get("year"),
            language=row.get("language"),
            score=score,
            spectrum=[(g, float(p)) for g, p in top],
        )


def mmr(relevance: np.ndarray, unit_vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: indices of k items trading relevance against similarity to those picked."""
    picked: list[int] = []
    remaining = list(range(len(relevance)))
    max_sim = np.full(len(relevance), -np.inf)
    while remaining and len(picked) < k:
        redundancy = np.where(np.isfinite(max_sim[remaining]), max_sim[remaining], 0.0)
        gains = lam * relevance[remaining] - (1.0 - lam) * redundancy
        best = remaining.pop(int(np.argmax(gains)))
        picked.append(best)
        max_sim = np.maximum(max_sim, unit_vectors @ unit_vectors[best])
    return picked


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def format_spectrum(spectrum: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{g} {p:.2f}" for g, p in spectrum)


def format_results(results: Sequence[Recommendation]) -> str:
    """A small fixed-width table: rank, score, title (year), language, readable genre spectrum."""
    if not results:
        return "(no results)"
    names = [f"{r.title} ({r.year})" if r.year else r.title for r in results]
    width = min(max(len(n) for n in [*names, "title"]), 48)
    lines = [f"{'#':>2}  {'score':>5}  {'title':<{width}}  lang  spectrum"]
    for i, (r, name) in enumerate(zip(results, names, strict=True), 1):
        short = name if len(name) <= width else name[: width - 1] + "…"
        score = f"{r.score:.3f}" if math.isfinite(r.score) else "  nan"
        lines.append(f"{i:>2}  {score:>5}  {short:<{width}}  {r.language or '-':<4}  {format_spectrum(r.spectrum)}")
    return "\n".join(lines)
