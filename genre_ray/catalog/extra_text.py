"""A second metadata source joined by id: per-movie text from another file (e.g. MovieLens user tags) added to the
catalog's `tags` field, and so to the documents through a "$tags" template part.

Shape (everything on the cluster; the driver sees counts only):
1. One Ray task reads the source file (and the link file that maps its key to the catalog's movie_id, e.g.
   MovieLens links.csv movieId -> tmdbId), keeps the rows written before `before` when a cut is set, and folds them
   into one row per catalog movie: its distinct texts, most frequent first (ties alphabetical), at most
   `max_per_movie`. The table stays in the object store.
2. The catalog's blocks get their movie's texts: up to BROADCAST_MAX_ROWS movies with text, the table is looked up
   by every block (one hash lookup of the block's ids into it); above, a Ray Data hash join. A movie that gets text
   has its document and content hash rebuilt; a movie without an entry keeps its document byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import ray
import ray.data

from genre_ray.catalog.sources import CatalogError
from genre_ray.config import ExtraTextConfig, TextConfig
from genre_ray.layout import RunLayout
from genre_ray.runtime import worker_result
from genre_ray.text import DocumentBuilder, content_hash

FIELD = "tags"
# rows of the per-movie table sent whole to every catalog block; a bigger one is hash-joined (train.data's rule)
BROADCAST_MAX_ROWS = 250_000
JOIN_ROWS_PER_PARTITION = 250_000


@dataclass
class ExtraTextReport:
    path: str
    rows_read: int = 0
    rows_before_cut: int = 0  # rows kept by the `before` cut (all rows without one)
    movies_in_source: int = 0  # distinct source keys among the kept rows
    movies_linked: int = 0  # of those, mapped to a catalog id by the link file (all, without one)
    movies_with_text: int = 0  # catalog ids with at least one text (the per-movie table's rows)
    joined: int = 0  # catalog movies that got text: set after the join, counted in the written catalog

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _read_csv(path: str, columns: list[str], what: str) -> pa.Table:
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(include_columns=columns))
    except FileNotFoundError:
        raise CatalogError(f"{what}: {path}: no such file") from None
    except (pa.ArrowInvalid, KeyError) as err:
        raise CatalogError(f"{what}: {path}: cannot read columns {columns}: {err}") from None
    return table


def _as_id(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integer-valued ids (links.csv tmdbId is read as int64, or double where some are empty) as text."""
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        return pc.cast(pc.cast(column, pa.int64()), pa.string())
    return pc.cast(column, pa.string())


def per_movie_text(cfg: ExtraTextConfig) -> tuple[pa.Table, ExtraTextReport]:
    """movie_id (the catalog's), tags (list of strings) for every movie with text, and what was read."""
    report = ExtraTextReport(path=cfg.path)
    columns = [cfg.key_column, cfg.text_column] + ([cfg.timestamp_column] if cfg.before is not None else [])
    rows = _read_csv(cfg.path, columns, "catalog.extra_text.path")
    report.rows_read = rows.num_rows
    if cfg.before is not None:
        rows = rows.filter(pc.less(rows[cfg.timestamp_column], cfg.before))
    report.rows_before_cut = rows.num_rows
    text = pc.utf8_trim_whitespace(pc.cast(rows[cfg.text_column], pa.string()))
    rows = pa.table({"key": _as_id(rows[cfg.key_column]), "text": text, "fold": pc.utf8_lower(text)})
    rows = rows.filter(pc.and_(pc.is_valid(rows["key"]), pc.greater(pc.utf8_length(rows["text"]), 0)))
    report.movies_in_source = pc.count_distinct(rows["key"]).as_py()
    if cfg.links is not None:
        links = _read_csv(cfg.links, [cfg.links_key, cfg.links_id], "catalog.extra_text.links")
        links = pa.table({"key": _as_id(links[cfg.links_key]), "movie_id": _as_id(links[cfg.links_id])})
        links = links.filter(pc.is_valid(links["movie_id"]))
        rows = rows.join(links, "key", join_type="inner", use_threads=False)
    else:
        rows = rows.append_column("movie_id", rows["key"])
    report.movies_linked = pc.count_distinct(rows["key"]).as_py()
    # one entry per (movie, text case-folded): how many rows wrote it, and its first spelling
    counted = rows.group_by(["movie_id", "fold"], use_threads=False).aggregate([("text", "count"), ("text", "min")])
    counted = counted.sort_by([("movie_id", "ascending"), ("text_count", "descending"), ("fold", "ascending")])
    grouped = counted.group_by("movie_id", use_threads=False).aggregate([("text_min", "list")])
    tags = pc.list_slice(grouped["text_min_list"], 0, cfg.max_per_movie)
    report.movies_with_text = grouped.num_rows
    return pa.table({"movie_id": grouped["movie_id"], FIELD: pc.cast(tags, pa.list_(pa.string()))}), report


@ray.remote(num_returns=2, max_retries=1)
def _per_movie_text_task(cfg: ExtraTextConfig) -> tuple[pa.Table, ExtraTextReport]:
    return per_movie_text(cfg)


def _rebuild(batch: pa.Table, tags: pa.Array, text_cfg: TextConfig, enc_id: str) -> pa.Table:
    """`batch` with its tags column set and, where a movie got tags, its document and content hash rebuilt."""
    batch = batch.set_column(batch.schema.get_field_index(FIELD), FIELD, tags)
    has = pc.fill_null(pc.greater(pc.list_value_length(tags), 0), False)
    if not pc.any(has).as_py():
        return batch
    build = DocumentBuilder(text_cfg)
    documents, hashes = batch["document"].to_pylist(), batch["content_hash"].to_pylist()
    for i in pc.indices_nonzero(has).to_pylist():
        documents[i] = build(batch.slice(i, 1).to_pylist()[0])
        hashes[i] = content_hash(documents[i], enc_id)
    batch = batch.set_column(batch.schema.get_field_index("document"), "document", pa.array(documents, pa.string()))
    return batch.set_column(batch.schema.get_field_index("content_hash"), "content_hash", pa.array(hashes, pa.string()))


def _broadcast(batch: pa.Table, table_ref: list[ray.ObjectRef], text_cfg: TextConfig, enc_id: str) -> pa.Table:
    table: pa.Table = ray.get(table_ref[0])
    at = pc.index_in(batch["movie_id"], value_set=table["movie_id"])
    return _rebuild(batch, table[FIELD].combine_chunks().take(at), text_cfg, enc_id)


def _joined(batch: pa.Table, text_cfg: TextConfig, enc_id: str) -> pa.Table:
    """After the hash join: the source's column (`tags_extra`) becomes the catalog's tags."""
    tags = batch[f"{FIELD}_extra"].combine_chunks()
    return _rebuild(batch.drop_columns([f"{FIELD}_extra"]), tags, text_cfg, enc_id)


def join_extra_text(
    catalog: ray.data.Dataset, cfg: ExtraTextConfig, text_cfg: TextConfig, enc_id: str, columns: list[str]
) -> tuple[ray.data.Dataset, ExtraTextReport]:
    """The catalog with each movie's extra text; `columns` is the catalog's column order, kept."""
    table_ref, report_ref = _per_movie_text_task.remote(cfg)
    report: ExtraTextReport = worker_result(report_ref)  # a missing file raises its CatalogError here
    if report.movies_with_text <= BROADCAST_MAX_ROWS:
        # the ref travels inside a list so that Ray Data passes it through unresolved: each task gets it from the
        # object store itself, and the driver never holds the table
        joined = catalog.map_batches(
            _broadcast,
            fn_kwargs={"table_ref": [table_ref], "text_cfg": text_cfg, "enc_id": enc_id},
            batch_format="pyarrow",
        )
        return joined, report
    extra = ray.data.from_arrow_refs([table_ref]).rename_columns({FIELD: f"{FIELD}_extra"})
    partitions = max(1, -(-catalog.count() // JOIN_ROWS_PER_PARTITION))
    joined = catalog.join(extra, join_type="left_outer", num_partitions=partitions, on=("movie_id",))
    joined = joined.map_batches(_joined, fn_kwargs={"text_cfg": text_cfg, "enc_id": enc_id}, batch_format="pyarrow")
    return joined.select_columns(columns), report


@ray.remote(max_retries=1)
def count_joined(layout: RunLayout) -> int:
    """Catalog movies that got extra text, counted in the written catalog's tags column (read alone)."""
    from genre_ray.catalog.reader import read_catalog

    return int(pc.count(read_catalog(layout, [FIELD])[FIELD]).as_py())
