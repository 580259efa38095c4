"""Offline evaluation: genre classification, neighbourhood coherence, recommendation vs baselines, ANN recall.

`evaluate(cfg, layout)` loads the run's artifacts (catalog, embeddings, model, store) plus MovieLens ratings, and
writes layout.reports_dir/metrics.json + report.md + PNG plots. Everything between loading and writing is a pure
function of its inputs and the seed, so two runs on the same artifacts give byte-identical metrics.json.

Protocol (the same for every method, so baselines are not handicapped or favoured):
- held-out movies: split_of(movie_id) == "test", the movies training never saw (not even for early stopping);
- recommendation: per user, the last liked movie (rating >= like_threshold, ordered by time then item) is the
  target; the history is the user's earlier likes; every movie the user rated at or before the target's time is
  removed from the candidates (the target itself stays); candidates are the embedded catalog movies that have at
  least one rating in the joined data; popularity counts every rating except the users' target events.

Memory stays flat as the catalog grows: rankings are counted in blocks of eval.chunk_rows users x eval.chunk_cols
candidates and neighbours found in blocks of query x pool movies (`ranking`), never as a users x catalog matrix;
eval.max_users and eval.coherence_queries cap the work with seeded samples (default: everyone).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from genre_ray import schema
from genre_ray.catalog.reader import read_catalog
from genre_ray.config import Config, EvalConfig
from genre_ray.embed.dataset import read_embeddings
from genre_ray.layout import RunLayout, atomic_write_text
from genre_ray.metrics import (
    RankingMetrics,
    classification_metrics,
    coherence_at_k,
    hit_and_ndcg_from_counts,
    mean_with_ci,
)
from genre_ray.model import LoadedClassifier, load_classifier
from genre_ray.ranking import Fixed, RankCounts, exact_dot, rank_chunks, to_fixed, unit_rows
from genre_ray.split import split_of

log = logging.getLogger(__name__)

METHODS = ("popularity", "genres_onehot", "text_embedding", "spectrum", "spectrum+popularity")
# Blend weights tried on the validation slice (second-to-last likes); the test targets never choose the weight.
BLEND_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))


@dataclass(frozen=True)
class Catalog:
    """The evaluated movies, row-aligned: one row per movie that has a current embedding, sorted by movie_id."""

    movie_ids: np.ndarray
    titles: list[str]
    genres: list[list[str]]
    text: np.ndarray
    spectrum: np.ndarray
    probs: np.ndarray
    vocab: list[str]
    threshold: float
    is_test: np.ndarray

    def genre_matrix(self) -> tuple[np.ndarray, list[str]]:
        """Multi-hot catalog genres (the ground truth, not the model's possibly pruned vocabulary)."""
        names = sorted({g for gs in self.genres for g in gs})
        col = {g: i for i, g in enumerate(names)}
        out = np.zeros((len(self.genres), len(names)), dtype=bool)
        for row, gs in enumerate(self.genres):
            out[row, [col[g] for g in gs]] = True
        return out, names


@dataclass(frozen=True)
class LeaveLastOut:
    """One held-out liked movie per user, and what the recommender may know at that moment."""

    users: np.ndarray
    target: np.ndarray
    target_time: np.ndarray
    history: list[np.ndarray]
    seen: list[np.ndarray]
    train_counts: np.ndarray


# ---------------------------------------------------------------- ratings and the leave-last-liked-out split


def join_ratings(ratings: pd.DataFrame, links: pd.DataFrame, movie_ids: np.ndarray) -> pd.DataFrame:
    """MovieLens ratings on catalog rows: columns user, item (row index into `movie_ids`), rating, timestamp.

    movieId -> links.tmdbId -> catalog movie_id. Ratings of movies outside the catalog are dropped. Two MovieLens
    ids can share one TMDB id; a user's repeated rating of the same catalog movie keeps the latest one.
    """
    links = links.dropna(subset=["tmdbId"])
    tmdb = links["tmdbId"].astype("int64").astype(str)
    row_of = pd.Series(np.arange(len(movie_ids)), index=pd.Index(movie_ids, dtype=str))
    item = tmdb.map(row_of)
    movie_to_item = pd.Series(item.to_numpy(), index=links["movieId"].to_numpy()).dropna().astype("int64")
    out = pd.DataFrame(
        {
            "user": ratings["userId"].to_numpy(),
            "item": ratings["movieId"].map(movie_to_item).to_numpy(),
            "rating": ratings["rating"].to_numpy(dtype=np.float64),
            "timestamp": ratings["timestamp"].to_numpy(dtype=np.int64),
        }
    ).dropna(subset=["item"])
    out["item"] = out["item"].astype("int64")
    out = out.sort_values(["user", "item", "timestamp"], kind="stable")
    out = out.drop_duplicates(["user", "item"], keep="last")
    return out.sort_values(["user", "timestamp", "item"], kind="stable").reset_index(drop=True)


def leave_last_liked_out(ratings: pd.DataFrame, n_items: int, like_threshold: float) -> LeaveLastOut:
    """The last liked movie per user (time, then item index, as the tie-break) is held out.

    Users with fewer than two likes have no history to recommend from and are left out. `seen` is every movie the
    user rated at or before the target's time (the target excluded): those are filtered out of every method's
    candidates alike. `train_counts` counts every rating except the users' target events, so popularity cannot
    see the answers.
    """
    r = ratings.sort_values(["user", "timestamp", "item"], kind="stable")
    likes = r[r["rating"] >= like_threshold]
    n_likes = likes.groupby("user")["item"].transform("size")
    likes = likes[n_likes >= 2]
    last = likes.groupby("user", sort=True).tail(1)
    users = last["user"].to_numpy()
    target = last["item"].to_numpy(dtype=np.int64)
    target_time = last["timestamp"].to_numpy(dtype=np.int64)
    t_of = dict(zip(users.tolist(), zip(target.tolist(), target_time.tolist(), strict=True), strict=True))

    history: list[np.ndarray] = []
    seen: list[np.ndarray] = []
    by_user = dict(tuple(r[r["user"].isin(t_of)].groupby("user", sort=True)))
    for u in users.tolist():
        tgt, t = t_of[u]
        rows = by_user[u]
        before = rows[(rows["timestamp"] <= t) & (rows["item"] != tgt)]
        seen.append(before["item"].to_numpy(dtype=np.int64))
        history.append(before.loc[before["rating"] >= like_threshold, "item"].to_numpy(dtype=np.int64))

    is_target = pd.MultiIndex.from_frame(r[["user", "item"]]).isin(list(zip(users, target, strict=True)))
    train_counts = np.bincount(r.loc[~is_target, "item"].to_numpy(dtype=np.int64), minlength=n_items)
    return LeaveLastOut(users, target, target_time, history, seen, train_counts)


def drop_targets(ratings: pd.DataFrame, split: LeaveLastOut) -> pd.DataFrame:
    """The ratings without the held-out target events: leave_last_liked_out on it gives the validation slice."""
    keys = pd.MultiIndex.from_frame(ratings[["user", "item"]])
    return ratings[~keys.isin(list(zip(split.users, split.target, strict=True)))]


# ---------------------------------------------------------------- recommendation scoring


def sample_users(split: LeaveLastOut, max_users: int | None, seed: int) -> LeaveLastOut:
    """At most `max_users` users of the split (a seeded sample, kept in user order); None: all of them.

    train_counts stays that of the whole split: sampling who is scored must not change the popularity model.
    """
    if max_users is None or len(split.users) <= max_users:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.users), size=max_users, replace=False))
    return LeaveLastOut(
        users=split.users[keep],
        target=split.target[keep],
        target_time=split.target_time[keep],
        history=[split.history[i] for i in keep],
        seen=[split.seen[i] for i in keep],
        train_counts=split.train_counts,
    )


def popularity_scores(train_counts: np.ndarray) -> np.ndarray:
    """log-count scaled to [0, 1]: comparable to a cosine for blending, and rank-equivalent to the raw count."""
    logc = np.log1p(train_counts.astype(np.float64))
    top = logc.max()
    return logc / top if top > 0 else logc


@dataclass(frozen=True)
class Method:
    """How a method scores a candidate: the cosine between it and the mean of the user's (unit) history vectors in
    `space` (None: no content, popularity alone), blended as (1 - w) * cosine + w * popularity when
    `popularity_weight` is w (None: the cosine alone)."""

    space: str | None
    popularity_weight: float | None = None


def methods(blend_weight: float) -> dict[str, Method]:
    return {
        "popularity": Method(None),
        "genres_onehot": Method("genres_onehot"),
        "text_embedding": Method("text_embedding"),
        "spectrum": Method("spectrum"),
        "spectrum+popularity": Method("spectrum", blend_weight),
    }


class MethodScorer:
    """Score blocks of (users of a split) x (catalog items) for several methods at once (a ranking.BlockScorer).

    Vectors are normalised and put in fixed point per block, so nothing catalog-sized is copied; the profiles of the
    current user chunk are kept between the blocks of that chunk.
    """

    def __init__(self, catalog: Catalog, split: LeaveLastOut, variants: dict[str, Method]):
        self.variants = variants
        self.popularity = popularity_scores(split.train_counts)
        self.history = split.history
        self.spaces: dict[str, np.ndarray] = {}
        for m in variants.values():
            if m.space is not None and m.space not in self.spaces:
                self.spaces[m.space] = space_vectors(catalog, m.space)
        self._users: np.ndarray | None = None
        self._profiles: dict[str, Fixed] = {}

    def profiles(self, users: np.ndarray) -> dict[str, Fixed]:
        if self._users is None or not np.array_equal(users, self._users):
            self._profiles = {
                space: to_fixed(unit_rows(np.stack([unit_rows(v[self.history[u]]).mean(axis=0) for u in users])))
                for space, v in self.spaces.items()
            }
            self._users = users
        return self._profiles

    def __call__(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        profiles = self.profiles(users)
        content = {space: exact_dot(profiles[space], to_fixed(unit_rows(v[items]))) for space, v in self.spaces.items()}
        pop = self.popularity[items][None, :]
        handed_out: set[str] = set()
        out = {}
        for name, m in self.variants.items():
            if m.space is None:
                out[name] = np.repeat(pop, len(users), axis=0)
            elif m.popularity_weight is None:
                # the caller writes exclusions into each block: two plain variants of one space get their own copy
                out[name] = content[m.space].copy() if m.space in handed_out else content[m.space]
                handed_out.add(m.space)
            else:
                w = m.popularity_weight
                out[name] = (1.0 - w) * content[m.space] + w * pop
        return out


def space_vectors(catalog: Catalog, space: str) -> np.ndarray:
    if space == "genres_onehot":
        return catalog.genre_matrix()[0]
    if space == "text_embedding":
        return catalog.text
    if space == "spectrum":
        return catalog.spectrum
    raise ValueError(f"unknown vector space {space!r}")


def method_ranks(
    catalog: Catalog, split: LeaveLastOut, candidates: np.ndarray, variants: dict[str, Method], ev: EvalConfig
) -> dict[str, RankCounts]:
    """Per method, each user's rank counts of their target among the candidates minus what they have seen.

    Every method ranks the same candidates with the same exclusions (one block loop masks them all), and the
    counts do not depend on eval.chunk_rows / chunk_cols.
    """
    score = MethodScorer(catalog, split, variants)
    chunks = list(
        rank_chunks(score, split.target, split.seen, np.flatnonzero(candidates), ev.chunk_rows, ev.chunk_cols)
    )
    return {name: RankCounts.concat([c.counts[name] for c in chunks]) for name in variants}


def recommendation_metrics(
    catalog: Catalog, split: LeaveLastOut, candidates: np.ndarray, blend_weight: float, cfg: Config
) -> tuple[dict[str, Any], dict[str, RankingMetrics], np.ndarray]:
    """HR@k / NDCG@k per method, for all users and for the long-tail slice (targets with few training ratings).

    Also returns the per-user metrics and the long-tail mask, for paired comparisons between methods.
    """
    k = cfg.eval.k
    tail = split.train_counts[split.target] <= cfg.eval.long_tail_max_ratings
    out: dict[str, Any] = {}
    per_user: dict[str, RankingMetrics] = {}

    def ci(values: np.ndarray) -> dict[str, float]:
        return mean_with_ci(values, cfg.seed)

    for name, counts in method_ranks(catalog, split, candidates, methods(blend_weight), cfg.eval).items():
        m = per_user[name] = hit_and_ndcg_from_counts(counts.above, counts.tied, k)
        out[name] = {
            "all": {f"hr@{k}": ci(m.hit), f"ndcg@{k}": ci(m.ndcg), "users": len(m.hit)},
            "long_tail": {
                f"hr@{k}": ci(m.hit[tail]),
                f"ndcg@{k}": ci(m.ndcg[tail]),
                "users": int(tail.sum()),
            },
        }
    return out, per_user, tail


def validate_blend(
    catalog: Catalog, ratings: pd.DataFrame, test: LeaveLastOut, candidates: np.ndarray, cfg: Config
) -> dict[str, Any]:
    """HR@k of the spectrum blend per weight on the validation slice, and the best weight (ties: less popularity).

    The validation slice holds out each user's second-to-last like, from ratings with the test targets removed,
    so choosing the weight here cannot see a test answer.
    """
    val = leave_last_liked_out(drop_targets(ratings, test), len(catalog.movie_ids), cfg.eval.like_threshold)
    val = sample_users(val, cfg.eval.max_users, cfg.seed)
    variants = {str(w): Method("spectrum", w) for w in BLEND_GRID}
    counts = method_ranks(catalog, val, candidates, variants, cfg.eval)
    hr = {w: float(hit_and_ndcg_from_counts(c.above, c.tied, cfg.eval.k).hit.mean()) for w, c in counts.items()}
    best = max(hr, key=lambda w: (hr[w], -float(w)))
    return {"users": len(val.users), f"hr@{cfg.eval.k}_by_weight": hr, "best_weight": float(best)}


# ---------------------------------------------------------------- genre quality


def genre_metrics(catalog: Catalog, k: int, ev: EvalConfig, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Classification on the test split and coherence@k (also returned per query, for paired comparisons)."""
    labels, _ = catalog.genre_matrix()
    has_genre = labels.any(axis=1)
    # The pool is every labelled movie (a movie without genres can share none, whatever its vector); the queries
    # are the held-out ones (a seeded sample of eval.coherence_queries of them, when set).
    pool = np.flatnonzero(has_genre)
    held_out = np.flatnonzero(catalog.is_test[pool])
    queries = held_out
    if ev.coherence_queries is not None and len(held_out) > ev.coherence_queries:
        queries = np.sort(np.random.default_rng(seed).choice(held_out, size=ev.coherence_queries, replace=False))
    per_query = {
        name: coherence_at_k(vectors[pool], labels[pool], queries, k, ev.chunk_rows, ev.chunk_cols)
        for name, vectors in (("spectrum", catalog.spectrum), ("text_embedding", catalog.text))
    }
    vocab_col = {g: i for i, g in enumerate(catalog.vocab)}
    y = np.zeros((len(catalog.movie_ids), len(catalog.vocab)), dtype=np.int64)
    for row, gs in enumerate(catalog.genres):
        y[row, [vocab_col[g] for g in gs if g in vocab_col]] = 1
    test = catalog.is_test & (y.sum(axis=1) > 0)
    out = {
        "classification": classification_metrics(y[test], catalog.probs[test], catalog.vocab, catalog.threshold),
        f"coherence@{k}": {
            **{name: float(v.mean()) for name, v in per_query.items()},
            "queries": len(queries),
            "pool": len(pool),
            "genres_onehot": "1 by construction",
        },
    }
    if len(queries) < len(held_out):
        out[f"coherence@{k}"]["queries_held_out"] = len(held_out)
    return out, per_query


# ---------------------------------------------------------------- loading the run's artifacts


def infer(classifier: LoadedClassifier, text: np.ndarray, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Spectrum vectors and genre probabilities, exactly as the spectrum stage computes them (eval mode)."""
    spectra, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(text), batch):
            # A copy per batch: `text` may be a read-only view of Arrow memory, which torch warns about sharing.
            s = classifier.model.spectrum(torch.tensor(text[start : start + batch]))
            spectra.append(s.numpy())
            probs.append(torch.sigmoid(classifier.model.head(s)).numpy())
    return np.concatenate(spectra), np.concatenate(probs)


def model_split(classifier: LoadedClassifier, cfg: Config) -> dict[str, Any]:
    """The split the model was trained on, from the model artifact: the current config's seed may differ (scoring a
    model on movies it trained on). Models saved before the split was recorded fall back to the config."""
    if classifier.split is not None:
        return dict(classifier.split)
    log.warning("model %s records no split: using the config's seed %d", classifier.model_version, cfg.seed)
    return {"seed": cfg.seed, "val_fraction": cfg.train.val_fraction}


def build_catalog(catalog: pa.Table, embeddings: pa.Table, classifier: LoadedClassifier, cfg: Config) -> Catalog:
    """Movies with an embedding of their *current* document, sorted by id so row order never depends on I/O."""
    meta = catalog.select(["movie_id", "title", "genres", "content_hash"]).to_pandas()
    emb = embeddings.select(["movie_id", "content_hash"]).to_pandas()
    emb["row"] = np.arange(len(emb))
    joined = meta.merge(emb, on=["movie_id", "content_hash"], how="inner").sort_values("movie_id", kind="stable")
    joined = joined.drop_duplicates("movie_id", keep="last")
    # take the current rows before converting: one (movies, d) copy instead of all embeddings and then a subset
    text = schema.vector_matrix(embeddings.column("embedding").take(pa.array(joined["row"].to_numpy())))
    spectrum, probs = infer(classifier, text)
    split = model_split(classifier, cfg)
    ids = joined["movie_id"].to_numpy(dtype=str)
    return Catalog(
        movie_ids=ids,
        titles=joined["title"].tolist(),
        genres=[list(g) for g in joined["genres"]],
        text=text,
        spectrum=spectrum,
        probs=probs,
        vocab=classifier.vocab,
        threshold=classifier.threshold,
        is_test=np.array([split_of(m, **split) == "test" for m in ids]),
    )


# ---------------------------------------------------------------- the whole evaluation


def compute_metrics(catalog: Catalog, ratings: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    """Every metric of the report from in-memory inputs (`ratings` as join_ratings returns it)."""
    eligible = leave_last_liked_out(ratings, len(catalog.movie_ids), cfg.eval.like_threshold)
    test = sample_users(eligible, cfg.eval.max_users, cfg.seed)
    candidates = np.zeros(len(catalog.movie_ids), dtype=bool)
    candidates[ratings["item"].unique()] = True
    validation = validate_blend(catalog, ratings, eligible, candidates, cfg)
    weight = validation["best_weight"] if cfg.eval.tune_blend else cfg.eval.popularity_blend
    k = cfg.eval.k
    genres, coherence = genre_metrics(catalog, k, cfg.eval, cfg.seed)
    recs, per_user, tail = recommendation_metrics(catalog, test, candidates, weight, cfg)
    hit = {m: r.hit for m, r in per_user.items()}
    protocol = {
        "users": len(test.users),
        "candidates": int(candidates.sum()),
        "like_threshold": cfg.eval.like_threshold,
        "long_tail_max_ratings": cfg.eval.long_tail_max_ratings,
        "blend_weight": weight,
        "blend_weight_from": "validation slice" if cfg.eval.tune_blend else "eval.popularity_blend",
    }
    if len(test.users) < len(eligible.users):
        protocol["users_eligible"] = len(eligible.users)
    return {
        "k": k,
        "seed": cfg.seed,
        "catalog": {"movies": len(catalog.movie_ids), "held_out": int(catalog.is_test.sum())},
        "genres": genres,
        "recommendation": {
            "protocol": protocol,
            "methods": recs,
            "blend_validation": validation,
        },
        "goals": [
            goal(
                f"spectrum coherence@{k} > raw-text coherence@{k}",
                coherence["spectrum"],
                coherence["text_embedding"],
                ">",
                cfg.seed,
            ),
            goal(
                f"spectrum+popularity HR@{k} >= popularity HR@{k} (all users)",
                hit["spectrum+popularity"],
                hit["popularity"],
                ">=",
                cfg.seed,
            ),
            goal(
                f"spectrum HR@{k} >= popularity HR@{k} (long-tail slice)",
                hit["spectrum"][tail],
                hit["popularity"][tail],
                ">=",
                cfg.seed,
            ),
        ],
    }


def goal(name: str, ours: np.ndarray, baseline: np.ndarray, op: str, seed: int) -> dict[str, Any]:
    """One acceptance criterion of issue 7: the verdict on the means, plus the paired difference's 95% interval.

    The interval is over the same users (or query movies) for both sides, so it says whether a MET is more than
    noise; a tie at zero is flagged, because "0 >= 0" meets the letter of a goal and nothing else.
    """
    a, b = float(np.mean(ours)), float(np.mean(baseline))
    met = a > b if op == ">" else a >= b
    diff = mean_with_ci(np.asarray(ours) - np.asarray(baseline), seed)
    out = {
        "goal": name,
        "met": bool(met),
        "ours": a,
        "baseline": b,
        "difference": diff,
        "measured": f"{a:.4f} {op if met else 'vs'} {b:.4f} (difference {diff['mean']:+.4f}, 95% CI "
        f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], n={len(ours)})",
    }
    if a == 0.0 and b == 0.0:
        out["note"] = "met only trivially: neither side has a single hit"
    return out


def evaluate(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    """Evaluate a finished run; writes metrics.json, report.md and PNG plots to layout.reports_dir.

    Returns the headline numbers (for run.json and the CLI); metrics.json holds everything.
    """
    from genre_ray.report import write_report
    from genre_ray.store.recall import store_recall

    classifier = load_classifier(layout.model_dir)
    # Only the columns evaluation needs: the documents are most of the catalog's bytes.
    movies = read_catalog(layout, ["movie_id", "title", "genres", "content_hash"])
    catalog = build_catalog(movies, read_embeddings(layout), classifier, cfg)
    ratings = join_ratings(pd.read_csv(cfg.eval.ratings_path), pd.read_csv(cfg.eval.links_path), catalog.movie_ids)
    metrics = compute_metrics(catalog, ratings, cfg)
    metrics["model_version"] = classifier.model_version
    metrics["ann"] = store_recall(cfg, layout)
    history = _read_history(layout.model_dir / "history.json")
    layout.reports_dir.mkdir(parents=True, exist_ok=True)
    metrics["split"] = model_split(classifier, cfg)
    atomic_write_text(layout.reports_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    report = write_report(metrics, catalog, history, layout.reports_dir)
    for g in metrics["goals"]:
        log.info("%s: %s %s", g["goal"], "MET" if g["met"] else "NOT MET", g["measured"])
    return summary(metrics) | {"report": str(report)}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    k = metrics["k"]
    return {
        f"coherence@{k}": {v: metrics["genres"][f"coherence@{k}"][v] for v in ("spectrum", "text_embedding")},
        f"hr@{k}": {m: v["all"][f"hr@{k}"]["mean"] for m, v in metrics["recommendation"]["methods"].items()},
        f"hr@{k}_long_tail": {
            m: v["long_tail"][f"hr@{k}"]["mean"] for m, v in metrics["recommendation"]["methods"].items()
        },
        "goals": {
            g["goal"]: ("MET" if g["met"] else "NOT MET") + (f" ({g['note']})" if "note" in g else "")
            for g in metrics["goals"]
        },
    }


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else list(data.get("epochs", []))
