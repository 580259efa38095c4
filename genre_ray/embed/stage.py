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
from genre_ray.catalog.reader import load_catalog
from genre_ray.config import Config
from genre_ray.embed.actors import ActorPlan, embed_dataset, plan_actors, plan_tokenizers, tokenize_in_stage
from genre_ray.embed.dataset import embeddings_uri, open_embeddings, stored_embeddings
from genre_ray.embed.diff import EmbedDiff, plan_diff
from genre_ray.embed.rebuild import rebuild_notice
from genre_ray.embed.stats import EmbedMeter
from genre_ray.encoder import encoder_dim, encoder_id_for
from genre_ray.layout import RunLayout
from genre_ray.runtime import in_workers, init_ray
from genre_ray.sql import sql_in
from genre_ray.storage import StoragePath

log = logging.getLogger(__name__)

INPUT_COLUMNS = ["movie_id", "document", "content_hash"]


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
    model_busy: float = 0.0  # share of the encoder actors' steady state spent in the model
    tokenize: str = "actor"  # where documents were tokenised: "actor", or "stage: <the tokenizer pool>"

    def summary(self) -> str:
        plan = self.plan.describe() if self.plan else "no actors"
        return (
            f"embed[{self.mode}]: {self.docs_total} docs, {self.docs_embedded} embedded, {self.docs_reused} reused, "
            f"{self.docs_removed} removed in {self.seconds:.1f}s | {self.docs_per_s:.1f} docs/s, "
            f"{self.tokens_per_s:.0f} tokens/s, padding {self.padding_fraction:.1%} | {plan} | "
            f"tokenize: {self.tokenize}"
        )


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

    (diff,) = in_workers(plan_diff, [(layout, uri, enc_id, out_schema, cfg.embed.incremental)])
    stored = stored_embeddings(uri)
    # Reusing nothing: a parallel full write beats funnelling every row through the driver's merge_insert.
    full = diff.to_embed is None
    n_embed, n_removed = diff.n_embed, len(diff.removed)
    if full and stored is not None and n_embed:
        # said before the work starts: a change of text.parts or of the encoder costs the whole catalog
        log.warning("%s", rebuild_notice(stored, enc_id, out_schema, cfg.embed.incremental, n_embed, layout))
    if not full and n_embed == 0 and n_removed == 0:
        assert stored is not None
        stats = _stats(start, diff, 0, 0, None, {}, "unchanged", stored.version, enc_id)
        log.info("%s", stats.summary())
        return stats

    plan = None
    tokenize = "actor"
    totals: dict[str, Any] = {}
    if n_embed:
        plan = full_plan.limited_to(math.ceil(n_embed / cfg.embed.sort_window))
        meter = EmbedMeter.remote()
        docs = load_catalog(layout, INPUT_COLUMNS)
        if not full:
            docs = docs.map_batches(_keep_ids, fn_kwargs={"ids": diff.to_embed}, batch_format="pyarrow")
        tokenizers = None
        if tokenize_in_stage(cfg.embed, plan):
            plan, tokenizers = plan_tokenizers(plan, ray.cluster_resources())
            tokenize = f"stage: {tokenizers.describe()}"
        vectors = embed_dataset(docs, cfg.encoder, cfg.embed, plan, meter, tokenizers)
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
    stats.tokenize = tokenize
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
    diff: EmbedDiff,
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
        model_busy=float(totals.get("model_busy", 0.0)),
        mode=mode,
        version=version,
        encoder_id=enc_id,
        nodes=list(totals.get("nodes", [])),
    )
