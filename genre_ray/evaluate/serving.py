"""The served ranking, scored as served: `Recommender.for_user` on the published store (its ANN pool, its TMDB
votes, its formula), for a seeded sample of the warm protocol's users; and the chosen parameters written beside
the model, for the next publish to carry into its manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genre_ray import serving_params
from genre_ray.config import Config
from genre_ray.evaluate.protocols import Split
from genre_ray.layout import RunLayout


def write_params(layout: RunLayout, params: dict[str, Any], model_version: str) -> serving_params.ServingParams:
    chosen = serving_params.ServingParams(
        popularity_weight=params["popularity_weight"],
        pool_factor=params["pool_factor"],
        mmr_lambda=params["mmr_lambda"],
        model_version=model_version,
        chosen_by="evaluate:spectrum_votes",
    )
    serving_params.write(layout.model_dir, chosen)
    return chosen


def served_top(
    cfg: Config, layout: RunLayout, movie_ids: np.ndarray, split: Split, users: np.ndarray, params: dict[str, Any]
) -> list[list[str]]:
    """Each user's served top k (movie ids): their training likes as the history, everything they rated excluded."""
    from genre_ray.recommend import Recommender

    rec = Recommender(cfg, layout)
    out = []
    for u in users:
        history = [str(x) for x in movie_ids[split.history[u]]]
        seen = [str(x) for x in movie_ids[split.seen[u]]]
        hits = rec.for_user(
            history,
            k=cfg.eval.k,
            exclude_ids=seen,
            popularity_weight=params["popularity_weight"],
            mmr_lambda=params["mmr_lambda"],
            pool_factor=params["pool_factor"],
        )
        out.append([h.movie_id for h in hits])
    return out


def store_manifest(layout: RunLayout) -> dict[str, Any] | None:
    """The published store's manifest, or None where nothing is published yet."""
    from genre_ray.store import Store

    return Store(layout.store_dir).manifest() if layout.store_dir.exists() else None
