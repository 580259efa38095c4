"""`genre-ray evaluate`: load the run's artifacts and the ratings, run every protocol, write metrics.json,
report.md and the plots, and the served parameters beside the model.

Two runs on the same artifacts give byte-identical metrics.json: everything between loading and writing is a pure
function of its inputs and the seed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genre_ray.config import Config
from genre_ray.errors import PreconditionError
from genre_ray.evaluate import recommendation as rec
from genre_ray.evaluate.data import Catalog, load_catalog, model_split
from genre_ray.evaluate.genres import genre_metrics
from genre_ray.evaluate.methods import log_scaled
from genre_ray.evaluate.protocols import (
    JoinedRatings,
    join_ratings,
    leave_last_liked_out,
    rated_catalog_ids,
    sample_users,
)
from genre_ray.evaluate.rank import Scored
from genre_ray.evaluate.serving import served_top, store_manifest, write_params
from genre_ray.layout import RunLayout, atomic_write_text
from genre_ray.metrics import mean_with_ci, paired_difference
from genre_ray.model import load_classifier

log = logging.getLogger(__name__)


def read_ratings(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """ratings.csv (and links.csv when it exists: a MovieLens-layout catalog joins by `ml:<movieId>` alone)."""
    path = Path(cfg.eval.ratings_path)
    if not path.exists():
        raise PreconditionError(f"eval.ratings_path {path}: no such file")
    ratings = pd.read_csv(path)
    missing = [c for c in ("userId", "movieId", "rating", "timestamp") if c not in ratings.columns]
    if missing:
        raise PreconditionError(f"{path}: missing column(s) {', '.join(missing)}")
    links_path = Path(cfg.eval.links_path)
    links = pd.read_csv(links_path) if links_path.exists() else None
    if links is not None and not {"movieId", "tmdbId"} <= set(links.columns):
        raise PreconditionError(f"{links_path}: needs columns movieId and tmdbId")
    return ratings, links


def rated_world(catalog: Catalog, joined: JoinedRatings, cfg: Config, max_log_votes: float | None) -> tuple:
    """The rated sub-catalog (items renumbered 0..n-1) and the ratings on it."""
    rated_rows = np.sort(joined.frame["item"].unique())
    sub = catalog.take(rated_rows)
    frame = joined.frame.assign(item=np.searchsorted(rated_rows, joined.frame["item"].to_numpy()))
    world = rec.World(
        catalog=sub,
        genres=sub.genre_matrix()[0],
        votes_prior=log_scaled(sub.votes, max_log_votes if max_log_votes else math.log1p(catalog.votes.max())),
        like_threshold=cfg.eval.like_threshold,
        k=cfg.eval.k,
        seed=cfg.seed,
        rows=cfg.eval.chunk_rows,
    )
    return world, frame


def compute_metrics(catalog: Catalog, joined: JoinedRatings, cfg: Config, layout: RunLayout | None = None) -> dict:
    """Every metric of the report from in-memory inputs; with a `layout` that has a published store, the served
    ranking is also scored through the Recommender on it."""
    manifest = store_manifest(layout) if layout is not None else None
    max_log_votes = manifest["stats"]["max_log_votes"] if manifest else None
    if joined.ratings_joined == 0:
        raise PreconditionError(
            f"{cfg.eval.ratings_path}: none of its {joined.ratings_in} ratings joins a catalog movie (by ml:<movieId> "
            f"or through {cfg.eval.links_path}'s tmdbId); check the ratings and links files match the catalog"
        )
    world, frame = rated_world(catalog, joined, cfg, max_log_votes)
    test = sample_users(
        leave_last_liked_out(frame, cfg.eval.like_threshold, cfg.eval.ratings_path), cfg.eval.max_users, cfg.seed
    )
    tuned, val = rec.tune(world, test)
    serving = rec.choose_serving(
        world, val, {w: tuned.validation[f"hr_at_{cfg.eval.k}"][f"blend:{w}"] for w in rec.BLEND_GRID}
    )
    warm, warm_results = rec.warm(world, test, tuned, serving)
    served = None
    if manifest is not None and layout is not None:
        served = score_as_served(cfg, layout, world, test, warm_results, serving["params"])
        warm["methods"]["served"] = served.pop("row")
    out = {
        "k": cfg.eval.k,
        "seed": cfg.seed,
        "catalog": {
            "movies": catalog.catalog_movies,
            "evaluated": len(catalog.movie_ids),
            "held_out": int(catalog.is_test.sum()),
        },
        "genres": genre_metrics(catalog, cfg.eval.k, cfg.eval, cfg.seed),
        "recommendation": {
            "ratings": {
                "file": str(cfg.eval.ratings_path),
                "ratings": joined.ratings_in,
                "joined": joined.ratings_joined,
                "join_rate": joined.join_rate,
                "movies_rated": joined.movies_rated,
                "like_threshold": cfg.eval.like_threshold,
            },
            "warm": warm,
            "cold": rec.cold(world, test, tuned, cfg.eval.cold_folds),
            "long_tail": rec.long_tail(world, test, warm_results, cfg.eval.head_share, tuned.blend),
            "serving": serving | ({"as_served": served} if served else {}),
            "by_popularity": popularity_buckets(world, test, warm_results),
        },
    }
    return out


def score_as_served(
    cfg: Config, layout: RunLayout, world: rec.World, test, results: dict[str, Scored], params: dict[str, Any]
) -> dict[str, Any]:
    """HR@k of `Recommender.for_user` on the published store for a seeded sample of users, paired with the exact
    served ranking and the best baseline on the same users."""
    n = min(cfg.eval.served_users, len(test))
    users = np.sort(np.random.default_rng(cfg.seed).choice(len(test), size=n, replace=False))
    ids = world.catalog.movie_ids
    tops = served_top(cfg, layout, ids, test, users, params)
    hit = np.array([str(ids[test.target[u]]) in top[: cfg.eval.k] for u, top in zip(users, tops, strict=True)], float)
    base = rec.best_of(results, rec.BASELINES)
    exact = results["served_exact"].hit[users]
    row = {
        "hr_at_10": mean_with_ci(hit, cfg.seed),
        "users": int(n),
        "vs_baseline": {
            "baseline": base,
            "hr_at_10_difference": paired_difference(hit, results[base].hit[users], cfg.seed),
        },
    }
    same = [
        [str(x) for x in ids[results["served_exact"].top[u]]] == top[: cfg.eval.k]
        for u, top in zip(users, tops, strict=True)
    ]
    return {
        "row": row,
        "users": int(n),
        "exact_hr_at_10_same_users": float(exact.mean()),
        "top_10_equal_to_exact_share": float(np.mean(same)),
        "note": "the ANN pool spans every served movie, rated or not; the exact variant ranks the rated ones",
    }


def popularity_buckets(world: rec.World, test, results: dict[str, Scored], buckets: int = 5) -> dict[str, Any]:
    """HR@k per method by the target's training popularity (quantile buckets of the targets' counts)."""
    from genre_ray.evaluate.protocols import train_counts

    counts = train_counts(test, world.n_items)[test.target]
    edges = np.unique(np.quantile(counts, np.linspace(0, 1, buckets + 1)))
    which = np.clip(np.searchsorted(edges, counts, side="right") - 1, 0, len(edges) - 2)
    labels = [f"{int(edges[i])}-{int(edges[i + 1])}" for i in range(len(edges) - 1)]
    return {
        "buckets": labels,
        "users": [int((which == i).sum()) for i in range(len(labels))],
        "hr_at_10": {
            name: [float(s.hit[which == i].mean()) if (which == i).any() else None for i in range(len(labels))]
            for name, s in results.items()
        },
    }


def evaluate(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    """Evaluate a finished run: metrics.json, report.md and PNG plots in layout.reports_dir, and the served
    parameters in layout.model_dir (for the next publish). Returns the headline numbers."""
    from genre_ray.report import write_report
    from genre_ray.store.recall import store_recall

    classifier = load_classifier(layout.model_dir)
    ratings, links = read_ratings(cfg)
    catalog = load_catalog(layout, classifier, rated_catalog_ids(ratings, links), cfg)
    joined = join_ratings(ratings, links, catalog.movie_ids)
    metrics = compute_metrics(catalog, joined, cfg, layout)
    metrics["model_version"] = classifier.model_version
    metrics["ann"] = store_recall(cfg, layout)
    metrics["split"] = model_split(classifier, cfg)
    chosen = write_params(layout, metrics["recommendation"]["serving"]["params"], classifier.model_version)
    metrics["recommendation"]["serving"]["written"] = chosen.model_dump()
    layout.reports_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.reports_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    pool = catalog.take(np.flatnonzero(catalog.in_pool))
    report = write_report(
        metrics,
        pool.spectrum,
        pool.probs,
        pool.vocab,
        _read_history(layout.model_dir / "history.json"),
        layout.reports_dir,
    )
    return summary(metrics) | {"report": str(report)}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    k = metrics["k"]
    recs = metrics["recommendation"]
    return {
        f"coherence@{k}": {v: metrics["genres"][f"coherence@{k}"][v] for v in ("spectrum", "text_embedding")},
        **{
            f"hr@{k}_{protocol}": {m: v["hr_at_10"]["mean"] for m, v in recs[protocol]["methods"].items()}
            for protocol in ("warm", "cold", "long_tail")
        },
        "serving": recs["serving"]["params"],
    }


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else list(data.get("epochs", []))
