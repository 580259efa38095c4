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
from genre_ray.catalog import read_catalog
from genre_ray.config import Config
from genre_ray.layout import RunLayout, atomic_write_text
from genre_ray.metrics import (
    RankingMetrics,
    classification_metrics,
    coherence_at_k,
    hit_and_ndcg_at_k,
    mean_with_ci,
    unit_rows,
)
from genre_ray.model import LoadedClassifier, load_classifier
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


def popularity_scores(train_counts: np.ndarray) -> np.ndarray:
    """log-count scaled to [0, 1]: comparable to a cosine for blending, and rank-equivalent to the raw count."""
    logc = np.log1p(train_counts.astype(np.float64))
    top = logc.max()
    return logc / top if top > 0 else logc


def profile_scores(vectors: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
    """(users, items) cosine between each candidate and the mean of the user's (unit) history vectors."""
    unit = unit_rows(vectors)
    profiles = np.stack([unit[h].mean(axis=0) for h in history])
    return unit_rows(profiles) @ unit.T


def blend(content: np.ndarray, popularity: np.ndarray, weight: float) -> np.ndarray:
    return (1.0 - weight) * content + weight * popularity[None, :]


def mask_scores(scores: np.ndarray, split: LeaveLastOut, candidates: np.ndarray) -> np.ndarray:
    """-inf for non-candidates and for everything each user already rated: identical for every method."""
    out = np.where(candidates[None, :], scores, -np.inf)
    for row, s in enumerate(split.seen):
        out[row, s] = -np.inf
    return out


def method_scores(
    catalog: Catalog, split: LeaveLastOut, blend_weight: float, methods: tuple[str, ...] = METHODS
) -> dict[str, np.ndarray]:
    pop = popularity_scores(split.train_counts)
    onehot, _ = catalog.genre_matrix()
    spectrum = profile_scores(catalog.spectrum, split.history)
    users = len(split.users)
    scores = {
        "popularity": np.broadcast_to(pop, (users, len(pop))),
        "genres_onehot": profile_scores(onehot.astype(np.float64), split.history),
        "text_embedding": profile_scores(catalog.text, split.history),
        "spectrum": spectrum,
        "spectrum+popularity": blend(spectrum, pop, blend_weight),
    }
    return {m: scores[m] for m in methods}


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

    for name, scores in method_scores(catalog, split, blend_weight).items():
        m = per_user[name] = hit_and_ndcg_at_k(mask_scores(scores, split, candidates), split.target, k)
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
    pop = popularity_scores(val.train_counts)
    spectrum = profile_scores(catalog.spectrum, val.history)
    hr = {}
    for w in BLEND_GRID:
        m = hit_and_ndcg_at_k(mask_scores(blend(spectrum, pop, w), val, candidates), val.target, cfg.eval.k)
        hr[str(w)] = float(m.hit.mean())
    best = max(hr, key=lambda w: (hr[w], -float(w)))
    return {"users": len(val.users), f"hr@{cfg.eval.k}_by_weight": hr, "best_weight": float(best)}


# ---------------------------------------------------------------- genre quality


def genre_metrics(catalog: Catalog, k: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Classification on the test split and coherence@k (also returned per query, for paired comparisons)."""
    labels, _ = catalog.genre_matrix()
    has_genre = labels.any(axis=1)
    # The pool is every labelled movie (a movie without genres can share none, whatever its vector); the queries
    # are the held-out ones.
    pool = np.flatnonzero(has_genre)
    queries = np.flatnonzero(catalog.is_test[pool])
    per_query = {
        name: coherence_at_k(vectors[pool], labels[pool], queries, k)
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
    return out, per_query


# ---------------------------------------------------------------- loading the run's artifacts


def infer(classifier: LoadedClassifier, text: np.ndarray, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Spectrum vectors and genre probabilities, exactly as the spectrum stage computes them (eval mode)."""
    spectra, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(text), batch):
            s = classifier.model.spectrum(torch.from_numpy(text[start : start + batch]))
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
    text = schema.vector_matrix(embeddings.column("embedding"))[joined["row"].to_numpy()]
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
    test = leave_last_liked_out(ratings, len(catalog.movie_ids), cfg.eval.like_threshold)
    candidates = np.zeros(len(catalog.movie_ids), dtype=bool)
    candidates[ratings["item"].unique()] = True
    validation = validate_blend(catalog, ratings, test, candidates, cfg)
    weight = validation["best_weight"] if cfg.eval.tune_blend else cfg.eval.popularity_blend
    k = cfg.eval.k
    genres, coherence = genre_metrics(catalog, k)
    recs, per_user, tail = recommendation_metrics(catalog, test, candidates, weight, cfg)
    hit = {m: r.hit for m, r in per_user.items()}
    return {
        "k": k,
        "seed": cfg.seed,
        "catalog": {"movies": len(catalog.movie_ids), "held_out": int(catalog.is_test.sum())},
        "genres": genres,
        "recommendation": {
            "protocol": {
                "users": len(test.users),
                "candidates": int(candidates.sum()),
                "like_threshold": cfg.eval.like_threshold,
                "long_tail_max_ratings": cfg.eval.long_tail_max_ratings,
                "blend_weight": weight,
                "blend_weight_from": "validation slice" if cfg.eval.tune_blend else "eval.popularity_blend",
            },
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
    from genre_ray.embed import read_embeddings  # the embed stage's reader: one place knows its storage format
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
