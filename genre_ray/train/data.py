"""Training data as Ray Datasets: labelled catalog movies joined to their embeddings, split, labelled, never gathered.

Flow (all on the cluster, the driver only sees per-genre counts, and the labels of a catalog small enough to
broadcast):
  catalog (movie_id, genres) --labelled only, joined on movie_id (broadcast if small, else hashed)--> embeddings
    -> + split by id hash
    -> per-batch genre counts, summed into the vocabulary (train split only)
    -> multi-hot labels in map_batches -> train (materialised in the object store), val (a bounded seeded sample),
       test (streamed once, after training).

The split is genre_ray.split's seeded hash of the movie id, so it does not depend on row order, partitioning or
catalog size. Validation drives early stopping and the threshold on every worker, so it is read whole by each of
them; `train.max_val_rows` caps it (a seeded subset of the val split) so its cost stays flat as the catalog grows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray.data

from genre_ray import split as splits
from genre_ray.config import Config
from genre_ray.errors import PreconditionError
from genre_ray.layout import RunLayout

# rows per join partition: keeps each hash-join partition a few hundred MB at 384-d float32
JOIN_ROWS_PER_PARTITION = 250_000
# At or below this many catalog movies the labels are broadcast to the embedding blocks instead of hash-joined: a
# one-partition hash join is all start-up (its shuffle actors took 24 s of a 5k-movie run's 29 s of data
# preparation on 2 cores), while the labels of 250k movies are a few MB.
BROADCAST_MAX_ROWS = JOIN_ROWS_PER_PARTITION
_SPLITS = ("train", "val", "test")


def labelled_movies(
    layout: RunLayout,
    embeddings: ray.data.Dataset | pa.Table | None = None,
    broadcast_max_rows: int = BROADCAST_MAX_ROWS,
) -> ray.data.Dataset:
    """movie_id, genres, embedding of the catalog's labelled movies that have an embedding.

    `embeddings` defaults to the embed stage's output (genre_ray.embed.load_embeddings). A catalog of at most
    `broadcast_max_rows` movies has its labels sent to every embedding block; a bigger one is hash-joined,
    streamed, in partitions of JOIN_ROWS_PER_PARTITION rows. Both give the same rows.
    """
    from genre_ray.catalog.reader import load_catalog
    from genre_ray.embed.dataset import load_embeddings  # lance: not needed by the tasks that run this module

    # Counted only for the hash join's partitions, each source before any projection, so Lance and in-memory
    # sources answer from their metadata.
    if embeddings is None:
        vectors = load_embeddings(layout, ["movie_id", "embedding"])  # projected by the scan, not a task per block
        count = vectors.count
    elif isinstance(embeddings, pa.Table):
        vectors, count = ray.data.from_arrow(embeddings.select(["movie_id", "embedding"])), lambda: embeddings.num_rows
    else:
        vectors, count = embeddings.select_columns(["movie_id", "embedding"]), embeddings.count
    catalog = _catalog_dataset(layout)
    if catalog is not None and catalog.count_rows() <= broadcast_max_rows:
        columns = ["movie_id", "genres", "no_genres"]
        labels = _labelled_only(catalog.to_table(columns=columns, filter=~pc.field("no_genres")))
        return vectors.map_batches(_with_labels, fn_kwargs={"labels": labels}, batch_format="pyarrow")
    partitions = max(1, math.ceil(count() / JOIN_ROWS_PER_PARTITION))
    labels = load_catalog(layout, ["movie_id", "genres", "no_genres"])
    labels = labels.map_batches(_labelled_only, batch_format="pyarrow")
    return labels.join(vectors, join_type="inner", num_partitions=partitions, on=("movie_id",))


def _with_labels(batch: pa.Table, labels: pa.Table) -> pa.Table:
    """The inner join of one embedding block with the (broadcast) labels, in the hash join's column order."""
    at = pc.index_in(batch["movie_id"], value_set=labels["movie_id"])
    found = at.is_valid()
    batch, at = batch.filter(found), at.filter(found)
    genres = labels["genres"].take(at)
    return pa.table({"movie_id": batch["movie_id"], "genres": genres, "embedding": batch["embedding"]})


def _catalog_dataset(layout: RunLayout) -> pads.Dataset | None:
    """The catalog's Parquet files as a pyarrow dataset (counted from metadata), or None before any ingest."""
    from genre_ray.catalog.reader import CatalogMissing, catalog_source

    try:
        fs, files = catalog_source(layout)
    except CatalogMissing:
        return None
    return pads.dataset(files, format="parquet", filesystem=fs) if files else None


def _labelled_only(batch: pa.Table) -> pa.Table:
    batch = batch.filter(pc.invert(batch["no_genres"]))
    return batch.filter(pc.greater(pc.list_value_length(batch["genres"]), 0)).drop_columns(["no_genres"])


# ------------------------------------------------------------------------------------------------ split + vocabulary


def with_split(batch: pa.Table, seed: int, val_fraction: float) -> pa.Table:
    """Adds `split` (train / val / test; "none" for a movie without genres) and `u` (the id's uniform hash in
    [0, 1): the row key, and what picks the val sample)."""
    ids = batch["movie_id"].to_pylist()
    u = np.array([splits.unit(m, seed) for m in ids], dtype=np.float64)
    labelled = pc.fill_null(pc.greater(pc.list_value_length(batch["genres"]), 0), False).to_pylist()
    part = [splits.split_at(x, val_fraction) if ok else "none" for x, ok in zip(u, labelled, strict=True)]
    return batch.append_column("split", pa.array(part, pa.string())).append_column("u", pa.array(u))


def _genre_counts(batch: pa.Table) -> pa.Table:
    """Partial aggregate of one batch: (split, genre, n); genre "" counts the split's movies (split "none": the
    movies without genres)."""
    flat = pc.list_flatten(batch["genres"])
    owner = pc.take(batch["split"], pc.list_parent_indices(batch["genres"]))
    # a genre listed twice for one movie counts once
    pairs = pa.table({"row": pc.list_parent_indices(batch["genres"]), "split": owner, "genre": flat})
    pairs = pairs.group_by(["row", "split", "genre"], use_threads=False).aggregate([]).select(["split", "genre"])
    rows = pa.table({"split": batch["split"], "genre": pa.array([""] * batch.num_rows, pa.string())})
    both = pa.concat_tables([pairs.cast(rows.schema), rows])
    counted = both.group_by(["split", "genre"], use_threads=False).aggregate([([], "count_all")])
    return counted.rename_columns(["split", "genre", "n"])


@dataclass(frozen=True)
class Vocabulary:
    genres: list[str]
    rows: dict[str, int]  # labelled movies per split
    train_positives: list[int]  # training movies per genre, in `genres` order

    def positive_weights(self) -> list[float]:
        # neg/pos per genre, capped: a genre with 3 positives must not dominate the loss by a factor of 1000
        n = self.rows["train"]
        return [float(np.clip((n - p) / max(p, 1), 1.0, 50.0)) for p in self.train_positives]


def vocabulary(split_rows: ray.data.Dataset, cfg: Config) -> Vocabulary:
    """Genres with enough training movies, from per-batch counts reduced in the driver (O(genres), not O(movies))."""
    totals: Counter[tuple[str, str]] = Counter()
    partial = split_rows.select_columns(["genres", "split"]).map_batches(_genre_counts, batch_format="pyarrow")
    for part in partial.iter_batches(batch_format="pyarrow", batch_size=None):
        for s, g, n in zip(part["split"].to_pylist(), part["genre"].to_pylist(), part["n"].to_pylist(), strict=True):
            totals[s, g] += n
    rows = {s: totals[s, ""] for s in _SPLITS}
    labelled, unlabelled = sum(rows.values()), totals["none", ""]
    if labelled + unlabelled == 0:
        raise PreconditionError(
            "train: no catalog movie has an embedding: run ingest on a catalog with usable rows, then embed "
            "(catalog/accounting.json says what ingest kept)"
        )
    if labelled == 0:
        raise no_labels(unlabelled)
    if rows["train"] == 0 or rows["val"] == 0:
        raise PreconditionError(
            f"train: {labelled} labelled movies split into {rows['train']} train / {rows['val']} val / "
            f"{rows['test']} test; training needs at least one in train and in val "
            f"(train.val_fraction={cfg.train.val_fraction:g}): add labelled movies to the catalog"
        )
    min_count = max(cfg.train.min_genre_count, math.ceil(cfg.train.min_genre_fraction * rows["train"]))
    train_counts = Counter({g: n for (s, g), n in totals.items() if s == "train" and g})
    vocab = sorted(g for g, n in train_counts.items() if n >= min_count)
    if len(vocab) < 2:
        found = ", ".join(f"{g} ({c})" for g, c in train_counts.most_common(5)) or "none"
        raise PreconditionError(
            f"train: {len(vocab)} genre(s) with at least {min_count} of the {rows['train']} training movies "
            f"(most frequent: {found}); a genre spectrum needs two or more. Check the genres column and "
            "catalog.genre_separator (one compound name per film, e.g. 'Action/Comedy', needs the separator), "
            "or lower train.min_genre_fraction / train.min_genre_count"
        )
    return Vocabulary(vocab, rows, [train_counts[g] for g in vocab])


def no_labels(n_movies: int) -> PreconditionError:
    return PreconditionError(
        f"train: none of the {n_movies} catalog movies has genres, so there is nothing to learn: give the catalog "
        "a genres column (mapped adapter: catalog.columns.genres, catalog.genre_separator) and run ingest and "
        "embed again"
    )


def check_catalog(layout: RunLayout) -> None:
    """Fail early, with what to fix, on a catalog that cannot train: counted from Parquet, nothing gathered."""
    dataset = _catalog_dataset(layout)
    total = dataset.count_rows() if dataset else 0
    if total == 0:
        raise PreconditionError(
            f"train: the catalog in {layout.movies} has no movies: run ingest on a catalog with usable rows "
            "(catalog/accounting.json says what it kept)"
        )
    if dataset.count_rows(filter=~pc.field("no_genres")) == 0:
        raise no_labels(total)


# ---------------------------------------------------------------------------------------------------- labels


def encode(batch: pa.Table, vocab: list[str]) -> dict[str, np.ndarray]:
    """x (embedding), y (multi-hot over vocab; other genres ignored), u (row key) as numpy for iter_torch_batches."""
    from genre_ray.schema import vector_matrix

    n = batch.num_rows
    y = np.zeros((n, len(vocab)), np.float32)
    col = pc.index_in(pc.list_flatten(batch["genres"]), value_set=pa.array(vocab, pa.string()))
    owner = pc.list_parent_indices(batch["genres"]).to_numpy()
    known = col.is_valid().to_numpy(zero_copy_only=False)
    y[owner[known], col.to_numpy(zero_copy_only=False)[known].astype(np.int64)] = 1.0
    return {"x": vector_matrix(batch["embedding"]), "y": y, "u": batch["u"].to_numpy()}


def _keep_split(batch: pa.Table, name: str, below: float) -> pa.Table:
    mask = pc.equal(batch["split"], name)
    if below < 1.0:
        mask = pc.and_(mask, pc.less(batch["u"], below))
    return batch.filter(mask)


@dataclass
class TrainingData:
    """What the trainer consumes. The datasets hold x / y / u; only counts and the vocabulary live in the driver."""

    train: ray.data.Dataset
    val: ray.data.Dataset
    test: ray.data.Dataset
    vocab: Vocabulary
    input_dim: int

    @property
    def genres(self) -> list[str]:
        return self.vocab.genres


def prepare(movies: ray.data.Dataset, cfg: Config) -> TrainingData:
    """Split, vocabulary and labels for `movies` (movie_id, genres, embedding, as from labelled_movies)."""
    tc = cfg.train
    rows = movies.map_batches(
        with_split, fn_kwargs={"seed": cfg.seed, "val_fraction": tc.val_fraction}, batch_format="pyarrow"
    ).materialize()  # joined once; the count pass and the three splits below read these blocks
    vocab = vocabulary(rows, cfg)
    dims = rows.schema().base_schema.field("embedding").type
    input_dim = dims.list_size if pa.types.is_fixed_size_list(dims) else int(np.prod(dims.shape))

    def part(name: str, below: float = 1.0) -> ray.data.Dataset:
        chosen = rows.map_batches(_keep_split, fn_kwargs={"name": name, "below": below}, batch_format="pyarrow")
        return chosen.map_batches(encode, fn_kwargs={"vocab": vocab.genres}, batch_format="pyarrow")

    # val ids are uniform on [test, test + width): the lowest `keep` share of that band is a seeded random sample
    width = (1.0 - splits.TEST_FRACTION) * tc.val_fraction
    keep = min(1.0, tc.max_val_rows / vocab.rows["val"])
    val_below = splits.TEST_FRACTION + width * keep if keep < 1.0 else 1.0
    return TrainingData(
        train=part("train").materialize(),
        val=part("val", val_below).materialize(),
        test=part("test"),
        vocab=vocab,
        input_dim=input_dim,
    )


def read_arrays(ds: ray.data.Dataset | Any, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, u) of a small dataset or shard, ordered by u so the result does not depend on block order."""
    xs, ys, us = [], [], []
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        xs.append(batch["x"])
        ys.append(batch["y"])
        us.append(batch["u"])
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0)
    u = np.concatenate(us)
    order = np.argsort(u, kind="stable")
    return np.concatenate(xs)[order].astype(np.float32), np.concatenate(ys)[order].astype(np.float32), u[order]
