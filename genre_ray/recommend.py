"""Recommendations from the published store: movies like one title, or like a viewer's history.

Candidates come from the vector index (cosine over genre-spectrum vectors, filters pushed into the query as
pre-filters); re-ranking is optional and happens on a candidate pool `pool_factor` times larger than k:
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

from genre_ray import schema, serving_params
from genre_ray.config import Config
from genre_ray.errors import BadQuery, MovieNotFound
from genre_ray.layout import RunLayout
from genre_ray.ranking import unit_rows
from genre_ray.serving_params import ServingParams
from genre_ray.store import Filters, Store, StoreError, View

SPECTRUM_TOP = 3


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
    """Queries over the store's current publish. Each call takes one view (or the `view` it is given, so a service
    can name the publish that answered) and does everything on it; ranking defaults come from that publish's
    serving parameters (manifest["serving"], chosen by evaluation), explicit arguments override them."""

    def __init__(self, cfg: Config, layout: RunLayout, store: Store | None = None):
        self.cfg = cfg.recommend
        self.store = store or Store(layout.store_dir, nprobes=cfg.store.nprobes, refine_factor=cfg.store.refine_factor)
        self.store.view()  # fail now, with the store's message, if nothing is published

    def view(self) -> View:
        return self.store.view()

    def refresh(self) -> View:
        return self.store.refresh()

    # -- lookups ----------------------------------------------------------------------------------------------
    def resolve(self, title_or_id: str, view: View | None = None) -> dict:
        """The served row (with vector) of a movie id or a title (case-insensitive; most-voted if ambiguous)."""
        view = view or self.view()
        key = title_or_id.strip()
        rows = view.get([key])
        if rows.num_rows == 0:
            rows = view.by_title(key, ["movie_id", "title", "votes", "vector"])
        if rows.num_rows == 0:
            close = close_matches(view, key)
            hint = "; close matches: " + ", ".join(repr(c) for c in close) if close else ""
            raise MovieNotFound(f"no movie with id or title {title_or_id!r}{hint}", close)
        return max(rows.to_pylist(), key=lambda r: r.get("votes") or 0)

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
        pool_factor: int | None = None,
        *,
        view: View | None = None,
    ) -> list[Recommendation]:
        view = view or self.view()
        movie = self.resolve(title_or_id, view)
        filters = Filters(language, year_range, (movie["movie_id"], *exclude_ids))
        ranking = self._ranking(view, popularity_weight, mmr_lambda, pool_factor)
        return self._recommend(view, np.asarray(movie["vector"]), k, filters, ranking)

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
        pool_factor: int | None = None,
        negative: Sequence[str] = (),
        *,
        view: View | None = None,
    ) -> list[Recommendation]:
        """Movies like a viewer's history: the weighted mean of the (unit) spectra of what they watched or liked.

        `negative`: movies the viewer wants less of. As in Qdrant's recommendation API (average_vector), the
        profile moves away from their mean: 2 * mean(liked) - mean(negative); they are never recommended."""
        if not history:
            raise BadQuery("history is empty: give at least one movie id or title")
        if weights is not None and len(weights) != len(history):
            raise BadQuery(f"{len(weights)} weights for {len(history)} history items")
        view = view or self.view()
        movies = [self.resolve(h, view) for h in history]
        vectors = unit_rows(np.stack([np.asarray(m["vector"], dtype=np.float32) for m in movies]))
        w = np.asarray(weights if weights is not None else [1.0] * len(movies), dtype=np.float32)
        profile = (w[:, None] * vectors).sum(axis=0)
        if not np.any(profile):
            raise BadQuery("history weights cancel out: the taste profile is the zero vector")
        disliked = [self.resolve(n, view) for n in negative]
        if disliked:
            against = unit_rows(np.stack([np.asarray(m["vector"], dtype=np.float32) for m in disliked])).mean(axis=0)
            profile = 2.0 * profile / float(w.sum()) - against
            if not np.any(profile):
                raise BadQuery("negative movies cancel the history out: the taste profile is the zero vector")
        seen = [m["movie_id"] for m in [*movies, *disliked]]
        filters = Filters(language, year_range, (*seen, *exclude_ids))
        ranking = self._ranking(view, popularity_weight, mmr_lambda, pool_factor)
        return self._recommend(view, unit_rows(profile[None])[0], k, filters, ranking)

    def _ranking(
        self, view: View, popularity_weight: float | None, mmr_lambda: float | None, pool_factor: int | None
    ) -> ServingParams:
        """The explicit arguments over the publish's serving parameters. A publish that carries none (published
        before evaluation chose any) falls back to the config's recommend.* values."""
        if serving_params.MANIFEST_KEY in view.manifest:
            base = view.params
        else:
            base = view.params.model_copy(
                update={"popularity_weight": self.cfg.popularity_weight, "mmr_lambda": self.cfg.mmr_lambda}
            )
        update: dict[str, float | int] = {}
        if popularity_weight is not None:
            update["popularity_weight"] = popularity_weight
        if mmr_lambda is not None:
            update["mmr_lambda"] = mmr_lambda
        if pool_factor is not None:
            update["pool_factor"] = pool_factor
        return base.model_copy(update=update) if update else base

    def _recommend(
        self, view: View, vector: np.ndarray, k: int | None, filters: Filters, ranking: ServingParams
    ) -> list[Recommendation]:
        k = k or self.cfg.k
        pw, lam = ranking.popularity_weight, ranking.mmr_lambda
        rerank = pw > 0 or lam is not None
        pool = k * ranking.pool_factor if rerank else k
        hits = view.search(vector, pool, filters, with_vectors=lam is not None)
        if hits.num_rows == 0:
            if filters.language is not None:
                check_language(view, filters.language)
            return []
        scores = 1.0 - hits["_distance"].to_numpy(zero_copy_only=False).astype(np.float64)
        if pw > 0:
            votes = np.nan_to_num(hits["votes"].to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
            scores = (1.0 - pw) * scores + pw * np.log1p(np.maximum(votes, 0)) / view.max_log_votes
        if lam is not None:
            order = mmr(scores, unit_rows(schema.vector_matrix(hits["vector"])), k, lam)
        else:
            order = list(np.argsort(-scores, kind="stable")[:k])
        rows = hits.to_pylist()
        return [result(view, rows[i], float(scores[i])) for i in order]


def close_matches(view: View, title: str, n: int = 5) -> list[str]:
    """Served titles close to `title` (difflib over a bounded pool sharing its first characters)."""
    by_lower = {t.lower(): t for t in view.titles_near(title) if t}
    return [by_lower[c] for c in difflib.get_close_matches(title.strip().lower(), list(by_lower), n=n, cutoff=0.6)]


def check_language(view: View, language: str) -> None:
    """Only after an empty result: a typo ("eng") and "no match in this year range" look the same otherwise."""
    counts = Counter(view.language_counts())
    if counts.get(language):
        return
    known = ", ".join(f"{lang} ({n})" for lang, n in counts.most_common() if lang)
    raise BadQuery(f"--language {language!r}: no movie in the store has it; languages (movies): {known}")


def spectrum(view: View, probs: Sequence[float] | None, top: int = SPECTRUM_TOP) -> list[tuple[str, float]]:
    """The readable genre spectrum: (genre, probability), most likely first, named by this publish's vocabulary."""
    if not probs:
        return []
    if len(probs) != len(view.vocab):
        raise StoreError(
            f"run {view.publish.run_id}: a row has {len(probs)} genre probabilities for a vocabulary of "
            f"{len(view.vocab)} genres (a table and the manifest are from different models)"
        )
    pairs = sorted(zip(view.vocab, probs, strict=True), key=lambda gp: -gp[1])
    return [(g, float(p)) for g, p in pairs[:top]]


def result(view: View, row: dict, score: float) -> Recommendation:
    return Recommendation(
        movie_id=row["movie_id"],
        title=row["title"],
        year=row.get("year"),
        language=row.get("language"),
        score=score,
        spectrum=spectrum(view, row.get("genre_probs")),
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
