"""The embedding stage: catalog documents -> encoder vectors, on a Ray Data actor pool, incremental by content hash.

Storage is one Lance dataset (`embeddings_uri(layout)`), chosen over Parquet generations because Lance commits are
atomic versions: a run that crashes before its commit leaves the previous version exactly as it was, and an
incremental run commits only the changed rows (one merge_insert that upserts new/changed movies and deletes
removed ones in the same version) instead of rewriting the whole table. A full (re)build is written in parallel by
the Ray workers through `lance_ray.write_lance`, so neither path funnels the full table through the driver; one Ray
task diffs the two key columns (movie_id, content_hash) and hands the driver only the ids that changed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import lance
import lance_ray
import pyarrow as pa
import pyarrow.compute as pc
import ray

from genre_ray import schema, storage
from genre_ray.catalog import load_catalog, read_catalog
from genre_ray.config import Config, EmbedConfig, EncoderConfig
from genre_ray.embed_stats import EmbedMeter
from genre_ray.encoder import TextEncoder, encoder_dim, encoder_id_for
from genre_ray.layout import RunLayout
from genre_ray.runtime import in_workers, init_ray
from genre_ray.sql import sql_in
from genre_ray.storage import StoragePath

log = logging.getLogger(__name__)

INPUT_COLUMNS = ["movie_id", "document", "content_hash"]
# Rows per block when the embeddings are read. Left alone, Ray Data splits a few large Lance fragments into its
# 200-block minimum: at 100k titles 296 blocks of 336 rows, each then a task downstream, and a spectrum map that
# computes for 2 s took 50 s.
READ_ROWS_PER_BLOCK = 16_384
# torch intra-op scaling flattens out past ~8 threads for a MiniLM-sized model; more cores -> more actors instead.
MAX_THREADS_PER_ACTOR = 8


def embeddings_uri(layout: RunLayout) -> StoragePath:
    return layout.embeddings_dir / "embeddings.lance"


def open_embeddings(uri: StoragePath) -> lance.LanceDataset:
    return lance.dataset(str(uri), storage_options=storage.lance_options(uri))


# ----------------------------------------------------------------------------------------------- actor planning


@dataclass(frozen=True)
class ActorPlan:
    num_actors: int
    num_gpus: float  # per actor
    num_cpus: float  # per actor, what Ray reserves
    threads: int  # torch threads per actor
    device: str

    def describe(self) -> str:
        kind = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.num_cpus:g} CPU"
        return f"{self.num_actors} x {self.device} actor ({kind}, {self.threads} threads)"

    def limited_to(self, windows: int) -> ActorPlan:
        """No more actors than there are windows to feed them: each idle actor would still load the model."""
        return ActorPlan(max(1, min(self.num_actors, windows)), self.num_gpus, self.num_cpus, self.threads, self.device)


def plan_actors(cfg: EmbedConfig, cluster_resources: dict[str, float]) -> ActorPlan:
    """Size the encoder actor pool from the config and `ray.cluster_resources()`.

    GPU: one actor per GPU (num_gpus=1). CPU: actors x torch threads never exceed the cluster's CPUs, and Ray's
    reservation leaves one CPU free, because Ray Data's read/write tasks need a CPU to feed the actors (a pool that
    reserves every core starves them and the job hangs).
    """
    cpus = float(cluster_resources.get("CPU", 1.0))
    gpus = int(cluster_resources.get("GPU", 0.0))
    if cfg.use_gpu == "yes" and gpus == 0:
        raise ValueError("embed.use_gpu is 'yes' but the Ray cluster reports no GPUs")
    if gpus > 0 and cfg.use_gpu != "no":
        actors = cfg.num_actors or gpus
        if actors > gpus:
            raise ValueError(f"embed.num_actors={actors} but the cluster has {gpus} GPUs (one actor per GPU)")
        # GPU actors only tokenise on the CPU: a couple of threads each is plenty.
        threads = cfg.cpu_threads or max(1, min(4, int(cpus // actors)))
        return ActorPlan(actors, 1.0, 1.0, threads, "cuda")

    whole = max(1, int(cpus))
    if cfg.cpu_threads and cfg.num_actors:
        threads, actors = cfg.cpu_threads, cfg.num_actors
    elif cfg.cpu_threads:
        threads = cfg.cpu_threads
        actors = max(1, whole // threads)
    elif cfg.num_actors:
        actors = cfg.num_actors
        threads = max(1, whole // actors)
    else:
        threads = min(whole, MAX_THREADS_PER_ACTOR)
        actors = max(1, whole // threads)
    if threads * actors > whole:
        raise ValueError(
            f"embed: {actors} actors x {threads} threads oversubscribes the cluster's {whole} CPUs; "
            "lower embed.num_actors or embed.cpu_threads"
        )
    reservable = cpus - 1.0 if cpus >= 2 else cpus / 2
    return ActorPlan(actors, 0.0, min(float(threads), reservable / actors), threads, "cpu")


# ----------------------------------------------------------------------------------------------- the Ray stage


class EmbedBatch:
    """The map_batches callable: one model load per actor, then a sorted-by-length encode per window."""

    def __init__(self, encoder_cfg: EncoderConfig, batch_size: int, plan: ActorPlan, meter: Any | None = None):
        import torch

        start = time.time()
        torch.set_num_threads(plan.threads)
        self.encoder = TextEncoder(encoder_cfg, device=plan.device)
        self.batch_size = batch_size
        self.meter = meter
        if meter is not None:
            ray.get(meter.loaded.remote(time.time() - start, ray.get_runtime_context().get_node_id()))

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.time()
        vectors, stats = self.encoder.encode_with_stats(batch["document"].to_pylist(), self.batch_size)
        if self.meter is not None:
            # Blocking on purpose: the driver reads the totals right after the dataset finishes.
            ray.get(self.meter.add.remote(stats.docs, stats.tokens, stats.padded_tokens, start, time.time()))
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.encoder.dim)
        return pa.table(
            {
                "movie_id": batch["movie_id"],
                "content_hash": batch["content_hash"],
                "embedding": embedding,
                "encoder_id": pa.array([self.encoder.id] * batch.num_rows, pa.string()),
            },
            schema=schema.embeddings_schema(self.encoder.dim),
        )


def embed_dataset(
    ds: ray.data.Dataset, encoder_cfg: EncoderConfig, embed_cfg: EmbedConfig, plan: ActorPlan, meter: Any | None = None
) -> ray.data.Dataset:
    """Documents (movie_id, document, content_hash) -> rows of schema.embeddings_schema, lazily."""
    return ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "encoder_cfg": encoder_cfg,
            "batch_size": embed_cfg.batch_size,
            "plan": plan,
            "meter": meter,
        },
        batch_size=embed_cfg.sort_window,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )


def _keep_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch["movie_id"], value_set=ids))


# ----------------------------------------------------------------------------------------------- the stage


@dataclass
class EmbedStats:
    docs_total: int
    docs_embedded: int
    docs_reused: int
    docs_removed: int
    seconds: float
    docs_per_s: float
    tokens_per_s: float
    padding_fraction: float
    plan: ActorPlan | None
    tokens: int = 0
    model_load_seconds: float = 0.0
    steady_seconds: float = 0.0
    mode: str = "full"
    version: int | None = None  # the Lance version the run left current
    encoder_id: str = ""
    nodes: list[str] = field(default_factory=list)  # Ray nodes whose actors encoded (run.json: where it ran)

    def summary(self) -> str:
        plan = self.plan.describe() if self.plan else "no actors"
        return (
            f"embed[{self.mode}]: {self.docs_total} docs, {self.docs_embedded} embedded, {self.docs_reused} reused, "
            f"{self.docs_removed} removed in {self.seconds:.1f}s | {self.docs_per_s:.1f} docs/s, "
            f"{self.tokens_per_s:.0f} tokens/s, padding {self.padding_fraction:.1%} | {plan}"
        )


@dataclass(frozen=True)
class _Diff:
    to_embed: pa.Array | None  # movie_ids whose (movie_id, content_hash) is not stored yet; None: all `total`
    removed: pa.Array  # stored movie_ids no longer in the catalog
    total: int

    @property
    def n_embed(self) -> int:
        return self.total if self.to_embed is None else len(self.to_embed)


def _diff(catalog_keys: pa.Table, stored_keys: pa.Table) -> _Diff:
    # use_threads=False throughout the driver: Ray Data's Parquet reader resizes Arrow's process-wide CPU pool
    # (pa.set_cpu_count), after which a threaded Acero plan in the same process can fail with "thread index N is
    # out of range".
    new = catalog_keys.join(stored_keys, keys=["movie_id", "content_hash"], join_type="left anti", use_threads=False)
    gone = stored_keys.select(["movie_id"]).join(
        catalog_keys.select(["movie_id"]), keys="movie_id", join_type="left anti", use_threads=False
    )
    return _Diff(new["movie_id"].combine_chunks(), gone["movie_id"].combine_chunks(), catalog_keys.num_rows)


def _current_keys(stored: lance.LanceDataset, enc_id: str) -> pa.Table:
    """Stored (movie_id, content_hash), with the hash blanked where another encoder (backend) made the row: such a
    row diffs as changed and is re-embedded when encoder.cpu_backend switches (the hash alone would not change),
    while its movie_id still counts for removals."""
    keys = stored.to_table(columns=["movie_id", "content_hash", "encoder_id"])
    same = pc.equal(keys["encoder_id"], enc_id)
    hashes = pc.if_else(same, keys["content_hash"], pa.scalar(None, keys.schema.field("content_hash").type))
    return pa.table({"movie_id": keys["movie_id"], "content_hash": hashes})


def _plan(layout: RunLayout, uri: StoragePath, enc_id: str, out_schema: pa.Schema, incremental: bool) -> _Diff:
    """What to embed (runs as a Ray task: the catalog's keys never reach the driver). `to_embed` is None when every
    movie is to be embedded: nothing stored, another schema, incremental off, or every document changed."""
    catalog_keys = read_catalog(layout, ["movie_id", "content_hash"])
    stored = _stored(uri) if incremental else None
    if stored is None or not stored.schema.equals(out_schema):
        return _Diff(None, pa.array([], pa.string()), catalog_keys.num_rows)
    diff = _diff(catalog_keys, _current_keys(stored, enc_id))
    return diff if len(diff.to_embed) < diff.total else _Diff(None, diff.removed, diff.total)


def _stored(uri: StoragePath) -> lance.LanceDataset | None:
    try:
        return open_embeddings(uri)
    except (FileNotFoundError, ValueError):
        return None


def embed_catalog(cfg: Config, layout: RunLayout) -> EmbedStats:
    """Embed the normalised catalog at layout.movies into embeddings_uri(layout); incremental per cfg.embed."""
    start = time.time()
    init_ray(cfg.ray)
    uri = embeddings_uri(layout)
    uri.parent.mkdir(parents=True, exist_ok=True)
    out_schema = schema.embeddings_schema(encoder_dim(cfg.encoder))
    full_plan = plan_actors(cfg.embed, ray.cluster_resources())
    # The id of what this run's actors will produce: the CPU backend (torch / onnx-int8) is part of it.
    enc_id = encoder_id_for(cfg.encoder, full_plan.device)

    (diff,) = in_workers(_plan, [(layout, uri, enc_id, out_schema, cfg.embed.incremental)])
    stored = _stored(uri)
    # Reusing nothing: a parallel full write beats funnelling every row through the driver's merge_insert.
    full = diff.to_embed is None
    n_embed, n_removed = diff.n_embed, len(diff.removed)
    if not full and n_embed == 0 and n_removed == 0:
        assert stored is not None
        stats = _stats(start, diff, 0, 0, None, {}, "unchanged", stored.version, enc_id)
        log.info("%s", stats.summary())
        return stats

    plan = None
    totals: dict[str, Any] = {}
    if n_embed:
        plan = full_plan.limited_to(math.ceil(n_embed / cfg.embed.sort_window))
        meter = EmbedMeter.remote()
        docs = load_catalog(layout, INPUT_COLUMNS)
        if not full:
            docs = docs.map_batches(_keep_ids, fn_kwargs={"ids": diff.to_embed}, batch_format="pyarrow")
        vectors = embed_dataset(docs, cfg.encoder, cfg.embed, plan, meter)
        if full:
            lance_ray.write_lance(
                vectors,
                str(uri),
                schema=out_schema,
                mode="overwrite" if stored else "create",
                storage_options=storage.lance_options(uri),
            )
        else:
            # the merge joins the delta against every stored key: a worker's job at catalog scale, not the driver's
            in_workers(_upsert, [(uri, list(vectors.to_arrow_refs()), out_schema, diff.removed)])
        totals = ray.get(meter.totals.remote())
        ray.kill(meter)
    elif full:  # an empty catalog: still leave a typed, readable (empty) embeddings dataset
        lance.write_dataset(
            out_schema.empty_table(), str(uri), mode="overwrite", storage_options=storage.lance_options(uri)
        )
    else:
        assert stored is not None
        stored.delete(sql_in("movie_id", diff.removed.to_pylist()))
    version = open_embeddings(uri).version
    stats = _stats(start, diff, n_embed, n_removed, plan, totals, "full" if full else "incremental", version, enc_id)
    log.info("%s", stats.summary())
    return stats


def _upsert(uri: StoragePath, delta: list[ray.ObjectRef], out_schema: pa.Schema, removed: pa.Array) -> None:
    """One commit: changed/new rows (`delta`, the embedded blocks) upserted by movie_id, removed movies deleted."""

    def batches():
        for ref in delta:
            yield from ray.get(ref).cast(out_schema).to_batches()

    merge = open_embeddings(uri).merge_insert("movie_id").when_matched_update_all().when_not_matched_insert_all()
    if len(removed):
        merge = merge.when_not_matched_by_source_delete(sql_in("movie_id", removed.to_pylist()))
    merge.execute(pa.RecordBatchReader.from_batches(out_schema, batches()))


def _stats(
    start: float,
    diff: _Diff,
    n_embed: int,
    n_removed: int,
    plan: ActorPlan | None,
    totals: dict[str, Any],
    mode: str,
    version: int | None,
    enc_id: str,
) -> EmbedStats:
    seconds = time.time() - start
    tokens = int(totals.get("tokens", 0))
    return EmbedStats(
        docs_total=diff.total,
        docs_embedded=n_embed,
        docs_reused=diff.total - n_embed,
        docs_removed=n_removed,
        seconds=seconds,
        docs_per_s=n_embed / seconds if seconds else 0.0,
        tokens_per_s=tokens / seconds if seconds else 0.0,
        padding_fraction=float(totals.get("padding_fraction", 0.0)),
        plan=plan,
        tokens=tokens,
        model_load_seconds=float(totals.get("model_load_seconds", 0.0)),
        steady_seconds=float(totals.get("steady_seconds", 0.0)),
        mode=mode,
        version=version,
        encoder_id=enc_id,
        nodes=list(totals.get("nodes", [])),
    )


# ----------------------------------------------------------------------------------------------- readers


def read_embeddings(layout: RunLayout) -> pa.Table:
    """The current embeddings as one Arrow table (schema.embeddings_schema(d))."""
    return open_embeddings(embeddings_uri(layout)).to_table()


def load_embeddings(layout: RunLayout, columns: list[str] | None = None, where: str | None = None) -> ray.data.Dataset:
    """The current embeddings as a Ray Dataset, read in parallel (what train / spectrum / evaluate consume).

    `columns` are projected by the Lance scan itself, so no projection task runs per block; `where` is a Lance
    filter (a small nightly fetches its changed ids), read as one block."""
    uri = embeddings_uri(layout)
    blocks = 1 if where else max(1, math.ceil(open_embeddings(uri).count_rows() / READ_ROWS_PER_BLOCK))
    return lance_ray.read_lance(
        str(uri),
        columns=columns,
        filter=where,
        storage_options=storage.lance_options(uri),
        override_num_blocks=blocks,
    )
