"""The spectrum stage: text embeddings -> genre-spectrum vectors + genre probabilities, as served rows.

A Ray Data `map_batches` over the embeddings with a callable class, so each actor loads the checkpoint once and
reuses it for every batch. Catalog metadata is joined in the same step as a broadcast join: the metadata of the
movies to infer (ids, title, year, language, genres, popularity, votes, hash; no text) is a few hundred bytes per
movie against ~1.5 KB of embedding, so shipping it once per actor through the object store is cheaper than a
hash-shuffle join of both sides. Each actor hashes the ids once; a batch then costs its own rows, not the
catalog's (an Arrow `index_in` against the whole catalog per batch would cost batches x catalog).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from ray.data.dataset import MaterializedDataset

from genre_ray import schema
from genre_ray.model import GenreClassifier, load_classifier
from genre_ray.schema import METADATA_COLUMNS
from genre_ray.storage import StoragePath

log = logging.getLogger(__name__)


class SpectrumMapper:
    """Ray Data callable class: one checkpoint load per actor, then embeddings -> served rows per batch."""

    def __init__(
        self,
        model_dir: StoragePath,
        metadata_ref: list[ray.ObjectRef],
        torch_threads: int = 1,
        node_log: Any | None = None,
    ):
        # The ref arrives wrapped in a list so Ray does not resolve it at submission time on the driver.
        torch.set_num_threads(max(1, torch_threads))
        if node_log is not None:
            ray.get(node_log.add.remote(ray.get_runtime_context().get_node_id()))
        loaded = load_classifier(model_dir)
        self.model = loaded.model
        self.model_version = loaded.model_version
        self.metadata: pa.Table = ray.get(metadata_ref[0])
        self.row_of = {movie_id: i for i, movie_id in enumerate(self.metadata["movie_id"].to_pylist())}
        self.schema = schema.served_schema(self.model.spec.spectrum_dim)

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Inner join on movie_id, and only against an embedding of the *current* document: an embedding whose
        # hash differs from the catalog's is stale and must not be served (publish reports it as missing).
        pos = pa.array([self.row_of.get(m) for m in batch["movie_id"].to_pylist()], pa.int64())
        keep = pc.is_valid(pos)
        batch, pos = batch.filter(keep), pos.filter(keep)
        meta = self.metadata.take(pos)
        fresh = pc.equal(batch["content_hash"], meta["content_hash"])
        batch, meta = batch.filter(fresh), meta.filter(fresh)
        if batch.num_rows == 0:
            return self.schema.empty_table()
        vectors, probs = infer(self.model, schema.vector_matrix(batch["embedding"]))
        return _served(meta, vectors, probs, self.model_version, self.schema)


def infer(model: GenreClassifier, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spectrum vectors and genre probabilities of a block of text embeddings: the one path the spectrum stage
    and evaluation share, so evaluation scores exactly the vectors a publish serves."""
    # a copy: Arrow buffers are read-only and torch wants to own what it wraps
    x = torch.from_numpy(np.array(embeddings, dtype=np.float32, copy=True))
    with torch.inference_mode():
        vectors = model.spectrum(x)
        # eval() disables dropout, so head(trunk(x)) is exactly model(x).
        probs = torch.sigmoid(model.head(vectors))
    return vectors.numpy(), probs.numpy()


def _served(meta: pa.Table, vectors: np.ndarray, probs: np.ndarray, model_version: str, out: pa.Schema) -> pa.Table:
    dim = vectors.shape[1]
    vector_col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim)
    offsets = pa.array(np.arange(0, probs.size + 1, probs.shape[1], dtype=np.int32))
    probs_col = pa.ListArray.from_arrays(offsets, pa.array(probs.astype(np.float32).ravel()))
    columns: dict[str, Any] = {name: meta[name] for name in METADATA_COLUMNS}
    columns["vector"] = vector_col
    columns["genre_probs"] = probs_col
    columns["model_version"] = pa.array([model_version] * meta.num_rows, pa.string())
    return pa.table({f.name: columns[f.name] for f in out}).cast(out)


def spread(embeddings: ray.data.Dataset, actors: int) -> ray.data.Dataset:
    """At least one block per actor when the input is already in memory (a fetched nightly delta, a passed-in table:
    one block each). Ray Data starts a pool's actors asynchronously and ends the pool when its input is done, so a
    single block goes to the first actor ready and the others get nothing. A lazy scan is left alone: Lance reads it
    in blocks of ~16k rows."""
    if isinstance(embeddings, MaterializedDataset) and embeddings.num_blocks() < actors:
        return embeddings.repartition(actors).materialize()
    return embeddings


def compute_spectrum(
    embeddings: ray.data.Dataset,
    metadata: pa.Table | ray.ObjectRef,
    model_dir: StoragePath,
    *,
    batch_size: int = 1024,
    concurrency: int = 1,
    num_cpus: float = 0.5,
    node_log: Any | None = None,
) -> ray.data.Dataset:
    """Served rows (schema.served_schema) for the movies in `metadata` that have a current embedding.

    Lazy: the caller materialises or writes the result. Movies without a matching embedding are simply absent.
    `metadata` may already be in the object store (a reference to a table with at least METADATA_COLUMNS).
    """
    ref = ray.put(metadata.select(METADATA_COLUMNS)) if isinstance(metadata, pa.Table) else metadata
    # no select_columns here: a projection is a task per block; callers read only what the join needs
    return spread(embeddings, concurrency).map_batches(
        SpectrumMapper,
        fn_constructor_kwargs={
            # the path itself, not its string: an object-store path carries its storage settings to the actors
            "model_dir": model_dir,
            "metadata_ref": [ref],
            "torch_threads": 1,
            "node_log": node_log,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        zero_copy_batch=True,
    )
