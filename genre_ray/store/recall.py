"""ANN recall of the served tables: each table's vector index against exact search over the same rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from genre_ray import schema
from genre_ray.config import Config
from genre_ray.layout import RunLayout
from genre_ray.metrics import recall_at_k
from genre_ray.store.reader import Store


def _top_ids(query: Any, query_id: str, k: int) -> list[str]:
    # k + 1 asked for, the query movie itself dropped: the "more like this" question the store answers.
    # _distance selected explicitly: Lance warns on every query that omits it (it is projected either way).
    ids = query.select(["movie_id", "_distance"]).limit(k + 1).to_arrow()["movie_id"].to_pylist()
    return [m for m in ids if m != query_id][:k]


def _cosine(table: Any, vector: np.ndarray) -> Any:
    return table.search(vector, vector_column_name="vector").distance_type("cosine")


def ann_recall(table: Any, k: int, nprobes: int, refine_factor: int, queries: int, seed: int) -> dict[str, Any]:
    """recall@k of the table's vector index vs exact (index-bypassing) search over the same rows, cosine as served.

    Reported twice: with the served refine_factor (PQ candidates re-ranked on full vectors) and without it
    (what the PQ codes alone retrieve), so a recall drop can be traced to the partitions or to the codes.
    """
    rows = table.count_rows()
    indices = [i for i in table.list_indices() if "vector" in i.columns]
    if not indices:
        return {
            "rows": rows,
            "indexed": False,
            "note": "no vector index (table below store.index_min_rows): served by exact search, recall 1",
        }
    data = table.to_arrow().select(["movie_id", "vector"])
    ids = data["movie_id"].to_pylist()
    vectors = schema.vector_matrix(data["vector"])
    pick = np.sort(np.random.default_rng(seed).choice(len(ids), size=min(queries, len(ids)), replace=False))
    served, pq_only, exact = [], [], []
    for i in pick.tolist():
        served.append(_top_ids(_cosine(table, vectors[i]).nprobes(nprobes).refine_factor(refine_factor), ids[i], k))
        pq_only.append(_top_ids(_cosine(table, vectors[i]).nprobes(nprobes), ids[i], k))
        exact.append(_top_ids(_cosine(table, vectors[i]).bypass_vector_index(), ids[i], k))
    return {
        "rows": rows,
        "indexed": True,
        "index_type": indices[0].index_type,
        "queries": len(pick),
        "nprobes": nprobes,
        "refine_factor": refine_factor,
        f"recall@{k}": recall_at_k(served, exact, k),
        f"recall@{k}_no_refine": recall_at_k(pq_only, exact, k),
    }


def store_recall(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    """Per served table; {} when nothing is published yet (the report says so rather than failing the stage)."""
    store = Store(layout.store_dir)
    if not layout.store_dir.exists() or store.manifest() is None:
        return {}
    tables = store.open_tables()
    return {
        name: ann_recall(t, cfg.eval.k, cfg.store.nprobes, cfg.store.refine_factor, cfg.eval.ann_queries, cfg.seed)
        for name, t in sorted(tables.items())
    }
