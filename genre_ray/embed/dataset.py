"""Where the embeddings live and how they are read: one Lance dataset per run (schema.embeddings_schema).

Light on purpose: Ray workers that only open the dataset (retention's compaction) import this module, not the
stage, so they do not pay for torch, transformers or lance_ray.
"""

from __future__ import annotations

import math

import lance
import pyarrow as pa
import ray

from genre_ray import storage
from genre_ray.layout import RunLayout
from genre_ray.storage import StoragePath

# Rows per block when the embeddings are read. Left alone, Ray Data splits a few large Lance fragments into its
# 200-block minimum: at 100k titles 296 blocks of 336 rows, each then a task downstream, and a spectrum map that
# computes for 2 s took 50 s.
READ_ROWS_PER_BLOCK = 16_384


def embeddings_uri(layout: RunLayout) -> StoragePath:
    return layout.embeddings_dir / "embeddings.lance"


def open_embeddings(uri: StoragePath) -> lance.LanceDataset:
    return lance.dataset(str(uri), storage_options=storage.lance_options(uri))


def stored_embeddings(uri: StoragePath) -> lance.LanceDataset | None:
    """The embeddings dataset, or None where there is none yet (or not a readable one)."""
    try:
        return open_embeddings(uri)
    except (FileNotFoundError, ValueError):
        return None


def read_embeddings(layout: RunLayout) -> pa.Table:
    """The current embeddings as one Arrow table (schema.embeddings_schema(d))."""
    return open_embeddings(embeddings_uri(layout)).to_table()


def load_embeddings(layout: RunLayout, columns: list[str] | None = None, where: str | None = None) -> ray.data.Dataset:
    """The current embeddings as a Ray Dataset, read in parallel (what train / spectrum / evaluate consume).

    `columns` are projected by the Lance scan itself, so no projection task runs per block; `where` is a Lance
    filter (a small nightly fetches its changed ids), read as one block."""
    import lance_ray  # ~3 s of imports (its namespace client): only the driver that reads pays for it

    uri = embeddings_uri(layout)
    blocks = 1 if where else max(1, math.ceil(open_embeddings(uri).count_rows() / READ_ROWS_PER_BLOCK))
    return lance_ray.read_lance(
        str(uri),
        columns=columns,
        filter=where,
        storage_options=storage.lance_options(uri),
        override_num_blocks=blocks,
    )
