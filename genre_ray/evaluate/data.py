"""The evaluated movies, streamed from the run's catalog and Lance embeddings in blocks.

Evaluation needs two sets of movies, never the whole catalog: the rated ones (recommendation ranks them) and a
seeded sample of the rest (genre classification and coherence, capped at eval.coherence_pool). The catalog and the
embeddings are read a batch at a time and each batch keeps only those rows, so the driver holds the kept movies'
vectors, not the catalog's. Spectra come from `spectrum.infer`, the spectrum stage's own code path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from genre_ray import schema
from genre_ray.catalog.reader import catalog_source
from genre_ray.config import Config
from genre_ray.embed.dataset import embeddings_uri, open_embeddings
from genre_ray.errors import PreconditionError
from genre_ray.layout import RunLayout
from genre_ray.model import LoadedClassifier
from genre_ray.spectrum import infer
from genre_ray.split import split_of, unit

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ["movie_id", "title", "genres", "votes", "content_hash"]
BATCH_ROWS = 16_384


@dataclass(frozen=True)
class Catalog:
    """The kept movies, row-aligned and sorted by movie_id (row order never depends on I/O order)."""

    movie_ids: np.ndarray
    titles: list[str]
    genres: list[list[str]]
    votes: np.ndarray
    text: np.ndarray
    spectrum: np.ndarray
    probs: np.ndarray
    vocab: list[str]
    threshold: float
    is_test: np.ndarray
    # in the seeded genre-metrics sample (every kept movie when the catalog is below eval.coherence_pool)
    in_pool: np.ndarray
    # movies in the whole catalog with a current embedding, and how many the pool was sampled from
    catalog_movies: int

    def take(self, rows: np.ndarray) -> Catalog:
        rows = np.asarray(rows, dtype=np.int64)
        return Catalog(
            movie_ids=self.movie_ids[rows],
            titles=[self.titles[i] for i in rows],
            genres=[self.genres[i] for i in rows],
            votes=self.votes[rows],
            text=self.text[rows],
            spectrum=self.spectrum[rows],
            probs=self.probs[rows],
            vocab=self.vocab,
            threshold=self.threshold,
            is_test=self.is_test[rows],
            in_pool=self.in_pool[rows],
            catalog_movies=self.catalog_movies,
        )

    def genre_matrix(self) -> tuple[np.ndarray, list[str]]:
        """Multi-hot catalog genres (the ground truth, not the model's possibly pruned vocabulary)."""
        names = sorted({g for gs in self.genres for g in gs})
        col = {g: i for i, g in enumerate(names)}
        out = np.zeros((len(self.genres), len(names)), dtype=bool)
        for row, gs in enumerate(self.genres):
            out[row, [col[g] for g in gs]] = True
        return out, names


def model_split(classifier: LoadedClassifier, cfg: Config) -> dict[str, Any]:
    """The split the model was trained on, from the model artifact: the current config's seed may differ (scoring a
    model on movies it trained on). Models saved before the split was recorded fall back to the config."""
    if classifier.split is not None:
        return dict(classifier.split)
    log.warning("model %s records no split: using the config's seed %d", classifier.model_version, cfg.seed)
    return {"seed": cfg.seed, "val_fraction": cfg.train.val_fraction}


def in_sample(movie_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """A seeded, order-free sample: a movie is in it when its own hash says so, whichever batch it arrives in."""
    if share >= 1.0:
        return np.ones(len(movie_ids), dtype=bool)
    return np.array([unit(f"pool:{m}", seed) < share for m in movie_ids], dtype=bool)


def load_catalog(layout: RunLayout, classifier: LoadedClassifier, rated_ids: set[str], cfg: Config) -> Catalog:
    """The rated movies plus a seeded sample of eval.coherence_pool others, each with a current embedding."""
    fs, paths = catalog_source(layout)
    catalog = pads.dataset(paths, format="parquet", schema=schema.CATALOG, filesystem=fs)
    total = catalog.count_rows()
    pool = cfg.eval.coherence_pool
    share = 1.0 if pool is None or total <= pool else pool / total
    rated = pa.array(sorted(rated_ids), pa.string())
    kept: list[pa.Table] = []
    for batch in catalog.to_batches(columns=CATALOG_COLUMNS, batch_size=BATCH_ROWS):
        ids = batch.column("movie_id").to_pylist()
        sampled = pa.array(in_sample(ids, share, cfg.seed))
        keep = pc.or_(pc.is_in(batch.column("movie_id"), value_set=rated), sampled)
        table = pa.Table.from_batches([batch]).append_column("in_pool", sampled).filter(keep)
        if table.num_rows:
            kept.append(table)
    if not kept:
        raise PreconditionError(f"catalog {layout.movies}: no movie to evaluate (the catalog is empty)")
    meta = pa.concat_tables(kept).combine_chunks()
    return _with_vectors(meta, layout, classifier, cfg, total)


def _with_vectors(meta: pa.Table, layout: RunLayout, classifier: LoadedClassifier, cfg: Config, total: int) -> Catalog:
    """Join the kept catalog rows to their *current* embeddings, a Lance batch at a time, and infer the spectra."""
    uri = embeddings_uri(layout)
    ids = meta.column("movie_id")
    hashes = dict(zip(ids.to_pylist(), meta.column("content_hash").to_pylist(), strict=True))
    text_parts, id_parts, spectra, probs = [], [], [], []
    for batch in open_embeddings(uri).to_batches(
        columns=["movie_id", "content_hash", "embedding"], batch_size=BATCH_ROWS
    ):
        batch = pa.Table.from_batches([batch])
        batch = batch.filter(pc.is_in(batch.column("movie_id"), value_set=ids))
        if batch.num_rows == 0:
            continue
        fresh = [
            hashes[m] == h
            for m, h in zip(batch["movie_id"].to_pylist(), batch["content_hash"].to_pylist(), strict=True)
        ]
        batch = batch.filter(pa.array(fresh))
        if batch.num_rows == 0:
            continue
        x = schema.vector_matrix(batch["embedding"])
        s, p = infer(classifier.model, x)
        text_parts.append(np.array(x, dtype=np.float32))
        spectra.append(s)
        probs.append(p)
        id_parts.extend(batch["movie_id"].to_pylist())
    if not id_parts:
        raise PreconditionError(f"{uri}: no embedding of a current catalog document (run `genre-ray embed` first)")
    emb_ids = np.array(id_parts, dtype=str)
    # one row per movie (the last written embedding wins), sorted by id
    order = np.lexsort((np.arange(len(emb_ids)), emb_ids))
    last = np.r_[emb_ids[order][1:] != emb_ids[order][:-1], True]
    rows = order[last]
    row_of = {m: i for i, m in enumerate(ids.to_pylist())}
    meta_rows = np.array([row_of[m] for m in emb_ids[rows]], dtype=np.int64)
    meta = meta.take(pa.array(meta_rows))
    split = model_split(classifier, cfg)
    movie_ids = emb_ids[rows]
    votes = meta.column("votes").to_numpy(zero_copy_only=False)
    return Catalog(
        movie_ids=movie_ids,
        titles=meta.column("title").to_pylist(),
        genres=[list(g or []) for g in meta.column("genres").to_pylist()],
        votes=np.nan_to_num(np.asarray(votes, dtype=np.float64), nan=0.0),
        text=np.concatenate(text_parts)[rows],
        spectrum=np.concatenate(spectra)[rows],
        probs=np.concatenate(probs)[rows],
        vocab=classifier.vocab,
        threshold=classifier.threshold,
        is_test=np.array([split_of(m, **split) == "test" for m in movie_ids], dtype=bool),
        in_pool=meta.column("in_pool").to_numpy(zero_copy_only=False).astype(bool),
        catalog_movies=total,
    )
