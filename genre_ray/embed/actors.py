"""The encoder actor pool: how many actors with how many threads (plan_actors), and the map_batches callable.

Ray imports this module in every encoder actor's process, so it imports only what an actor runs: the encoder
(torch, transformers) and Arrow; the meter arrives as an actor handle. The stage (Lance writes, the catalog diff)
lives in `stage`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import ray

from genre_ray import schema
from genre_ray.config import EmbedConfig, EncoderConfig
from genre_ray.embed.tokens import Tokenizer, Tokens
from genre_ray.encoder import TextEncoder

# torch intra-op scaling flattens out past ~8 threads for a MiniLM-sized model; more cores -> more actors instead.
MAX_THREADS_PER_ACTOR = 8


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


@dataclass(frozen=True)
class TokenizerPlan:
    """The CPU actor pool of the `stage` layout: tokenisation ahead of the encoder actors."""

    num_actors: int
    num_cpus: float  # per actor

    def describe(self) -> str:
        return f"{self.num_actors} x tokenizer actor ({self.num_cpus:g} CPU)"


def tokenize_in_stage(cfg: EmbedConfig, plan: ActorPlan) -> bool:
    """auto: its own stage when the encoders have GPUs (their host CPUs would otherwise tokenise in line)."""
    return cfg.tokenize == "stage" or (cfg.tokenize == "auto" and plan.num_gpus > 0)


def plan_tokenizers(plan: ActorPlan, cluster_resources: dict[str, float]) -> tuple[ActorPlan, TokenizerPlan]:
    """Split the node's CPUs between the encoder actors and a tokenizer pool, leaving one CPU to the read/write
    tasks as plan_actors does. GPU actors keep their one CPU each and the tokenizers take the rest, one CPU per
    actor; CPU actors and tokenizers share the reservable CPUs half and half (both then run on every core)."""
    cpus = float(cluster_resources.get("CPU", 1.0))
    reservable = cpus - 1.0 if cpus >= 2 else cpus / 2
    if plan.num_gpus:
        free = reservable - plan.num_actors * plan.num_cpus
        if free >= 1.0:
            return plan, TokenizerPlan(int(free), 1.0)
    # CPU encoders, or too few CPUs for whole ones: encoders and tokenizers split the reservable CPUs half and half
    encoders = replace(plan, num_cpus=min(plan.num_cpus, reservable / 2 / plan.num_actors))
    tokenizers = max(1, int(reservable / 2))
    return encoders, TokenizerPlan(tokenizers, reservable / 2 / tokenizers)


class TokenizeBatch:
    """The tokenizer stage's map_batches callable: a window of documents -> its token ids, sorted by length."""

    def __init__(self, encoder_cfg: EncoderConfig):
        from genre_ray.encoder import resolve_model_path

        self.tokenizer = Tokenizer(resolve_model_path(encoder_cfg.model), encoder_cfg.max_length)

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokens = self.tokenizer(batch["document"].to_pylist())
        order = tokens.length_order()
        return pa.table(
            {
                "movie_id": batch["movie_id"].take(order),
                "content_hash": batch["content_hash"].take(order),
                "tokens": tokens.take(order).to_arrow(),
            }
        )


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

    def tokens(self, batch: pa.Table) -> Tokens:
        return self.encoder.tokenize(batch["document"].to_pylist())

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.time()
        # sorted again even when the tokenizer stage sorted the window: Ray Data may cut windows across its blocks
        vectors, stats = self.encoder.encode_tokens(self.tokens(batch), self.batch_size)
        if self.meter is not None:
            # Blocking on purpose: the driver reads the totals right after the dataset finishes.
            ray.get(
                self.meter.add.remote(
                    stats.docs, stats.tokens, stats.padded_tokens, start, time.time(), stats.model_seconds
                )
            )
        # pa.array of a contiguous float32 numpy array wraps its buffer: no copy on the way to the fixed-size list
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.encoder.dim)
        return pa.table(
            {
                "movie_id": batch["movie_id"],
                "content_hash": batch["content_hash"],
                "embedding": embedding,
                "encoder_id": pa.array([self.encoder.id] * batch.num_rows, pa.string()),
            },
            schema=schema.embeddings_schema(self.encoder.dim),
        )


class EmbedTokens(EmbedBatch):
    """The encoder of the `stage` layout: token windows in (from TokenizeBatch), vectors out; no tokenizer runs."""

    def tokens(self, batch: pa.Table) -> Tokens:
        return Tokens.from_arrow(batch["tokens"])


def embed_dataset(
    ds: ray.data.Dataset,
    encoder_cfg: EncoderConfig,
    embed_cfg: EmbedConfig,
    plan: ActorPlan,
    meter: Any | None = None,
    tokenizers: TokenizerPlan | None = None,
) -> ray.data.Dataset:
    """Documents (movie_id, document, content_hash) -> rows of schema.embeddings_schema, lazily. With `tokenizers`,
    a tokenizer actor pool runs first and the encoder actors receive token ids, not text."""
    encoder = EmbedBatch
    if tokenizers is not None:
        ds = ds.map_batches(
            TokenizeBatch,
            fn_constructor_kwargs={"encoder_cfg": encoder_cfg},
            batch_size=embed_cfg.sort_window,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=tokenizers.num_actors),
            num_cpus=tokenizers.num_cpus,
        )
        encoder = EmbedTokens
    return ds.map_batches(
        encoder,
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
