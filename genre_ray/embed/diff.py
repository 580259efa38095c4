"""What an embed run must do: which catalog movies need vectors and which stored ones are gone.

The diff is on two key columns, (movie_id, content_hash), and runs as one Ray task (`plan_diff`), so the catalog's
keys never reach the driver; that task imports this module, not the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import lance
import pyarrow as pa
import pyarrow.compute as pc

from genre_ray.catalog.reader import read_catalog
from genre_ray.embed.dataset import stored_embeddings
from genre_ray.layout import RunLayout
from genre_ray.storage import StoragePath


@dataclass(frozen=True)
class EmbedDiff:
    to_embed: pa.Array | None  # movie_ids whose (movie_id, content_hash) is not stored yet; None: all `total`
    removed: pa.Array  # stored movie_ids no longer in the catalog
    total: int

    @property
    def n_embed(self) -> int:
        return self.total if self.to_embed is None else len(self.to_embed)


def diff_keys(catalog_keys: pa.Table, stored_keys: pa.Table) -> EmbedDiff:
    # use_threads=False throughout the driver: Ray Data's Parquet reader resizes Arrow's process-wide CPU pool
    # (pa.set_cpu_count), after which a threaded Acero plan in the same process can fail with "thread index N is
    # out of range".
    new = catalog_keys.join(stored_keys, keys=["movie_id", "content_hash"], join_type="left anti", use_threads=False)
    gone = stored_keys.select(["movie_id"]).join(
        catalog_keys.select(["movie_id"]), keys="movie_id", join_type="left anti", use_threads=False
    )
    return EmbedDiff(new["movie_id"].combine_chunks(), gone["movie_id"].combine_chunks(), catalog_keys.num_rows)


def current_keys(stored: lance.LanceDataset, enc_id: str) -> pa.Table:
    """Stored (movie_id, content_hash), with the hash blanked where another encoder (backend) made the row: such a
    row diffs as changed and is re-embedded when encoder.cpu_backend switches (the hash alone would not change),
    while its movie_id still counts for removals."""
    keys = stored.to_table(columns=["movie_id", "content_hash", "encoder_id"])
    same = pc.equal(keys["encoder_id"], enc_id)
    hashes = pc.if_else(same, keys["content_hash"], pa.scalar(None, keys.schema.field("content_hash").type))
    return pa.table({"movie_id": keys["movie_id"], "content_hash": hashes})


def plan_diff(layout: RunLayout, uri: StoragePath, enc_id: str, out_schema: pa.Schema, incremental: bool) -> EmbedDiff:
    """What to embed (runs as a Ray task: the catalog's keys never reach the driver). `to_embed` is None when every
    movie is to be embedded: nothing stored, another schema, incremental off, or every document changed."""
    catalog_keys = read_catalog(layout, ["movie_id", "content_hash"])
    stored = stored_embeddings(uri) if incremental else None
    if stored is None or not stored.schema.equals(out_schema):
        return EmbedDiff(None, pa.array([], pa.string()), catalog_keys.num_rows)
    diff = diff_keys(catalog_keys, current_keys(stored, enc_id))
    return diff if len(diff.to_embed) < diff.total else EmbedDiff(None, diff.removed, diff.total)
