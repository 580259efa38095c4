"""Genre quality of the spectrum: classification on the held-out split and neighbourhood coherence@k.

Both run over the catalog's seeded genre-metrics sample (`Catalog.in_pool`: every movie below
eval.coherence_pool), so their cost and memory stay flat as the catalog grows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genre_ray.config import EvalConfig
from genre_ray.evaluate.data import Catalog
from genre_ray.metrics import classification_metrics, coherence_at_k


def genre_metrics(catalog: Catalog, k: int, ev: EvalConfig, seed: int) -> dict[str, Any]:
    pool_catalog = catalog.take(np.flatnonzero(catalog.in_pool))
    labels, _ = pool_catalog.genre_matrix()
    # A movie without genres can share none, whatever its vector; the queries are the held-out ones (a seeded
    # sample of eval.coherence_queries of them, when set).
    pool = np.flatnonzero(labels.any(axis=1))
    held_out = np.flatnonzero(pool_catalog.is_test[pool])
    queries = held_out
    if ev.coherence_queries is not None and len(held_out) > ev.coherence_queries:
        queries = np.sort(np.random.default_rng(seed).choice(held_out, size=ev.coherence_queries, replace=False))
    coherence = {
        name: float(coherence_at_k(vectors[pool], labels[pool], queries, k, ev.chunk_rows, ev.chunk_cols).mean())
        if len(queries)
        else float("nan")
        for name, vectors in (("spectrum", pool_catalog.spectrum), ("text_embedding", pool_catalog.text))
    }
    vocab_col = {g: i for i, g in enumerate(pool_catalog.vocab)}
    y = np.zeros((len(pool_catalog.movie_ids), len(pool_catalog.vocab)), dtype=np.int64)
    for row, gs in enumerate(pool_catalog.genres):
        y[row, [vocab_col[g] for g in gs if g in vocab_col]] = 1
    test = pool_catalog.is_test & (y.sum(axis=1) > 0)
    out = {
        "classification": classification_metrics(
            y[test], pool_catalog.probs[test], pool_catalog.vocab, catalog.threshold
        ),
        f"coherence@{k}": {
            **coherence,
            "queries": len(queries),
            "pool": len(pool),
            "genres_onehot": "1 by construction",
        },
        "sample": {"movies": len(pool_catalog.movie_ids), "catalog_movies": catalog.catalog_movies},
    }
    if len(queries) < len(held_out):
        out[f"coherence@{k}"]["queries_held_out"] = len(held_out)
    return out
