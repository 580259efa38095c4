"""The ingest stage: catalog files -> the normalised catalog (Parquet dataset), rejects and accounting.

Shape, chosen so it scales with the number of files and stays cheap for one small file:
1. The driver expands `catalog.paths` into an ordered file list (config errors surface here, naming the path).
2. One Ray task per file, or per part of a big one (catalog.parquet_rows_per_task rows of whole row groups of a
   Parquet file; catalog.bytes_per_task bytes of whole lines of an uncompressed CSV / JSON Lines file, see
   sources), reads, adapts and validates it, and builds each row's document and content hash. Its
   catalog rows stay in the object store as one Arrow block; only its rejects and counts come back to the driver.
3. The blocks become a Ray Dataset. Duplicate ids are found from two narrow columns (movie_id, order key): on
   the driver up to DRIVER_DEDUP_MAX_ROWS rows, by a Ray groupby above, so no shuffle ever carries documents.
   The first row by (file order, row) is kept; the others become rejects naming it.
4. The catalog is written as a Parquet dataset into a new generation directory under `layout.movies`, which a
   pointer object (`_current.json`, written in one step: a rename locally, one PUT on object storage) then makes
   current, so a crashed re-run never leaves half a catalog behind, on a filesystem or a bucket alike. Rejects,
   field warnings (one Parquet file each) and accounting follow.

Every input record is counted once: rows_in = rows_ok + rows_rejected, per file and in total. Only an unusable id
or title rejects a row (CSV/JSON that cannot be read at all, and duplicate ids, too); an optional field that does
not parse is left empty and recorded as a field warning (catalog.strict restores rejecting). A catalog with no
usable row, or more rejects than catalog.max_reject_fraction, is not written: ingest raises CatalogUnusable, with
the rejects and the accounting written for diagnosis, and the previous catalog stays in place.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.aggregate import Count, Min
from ray.data.context import ShuffleStrategy

from genre_ray import schema, storage
from genre_ray.catalog import vectorised
from genre_ray.catalog.adapters import BUILTIN, Adapter, FieldWarning, Limits, RowError, detect, mapped
from genre_ray.catalog.extra_text import count_joined, join_extra_text
from genre_ray.catalog.reader import CURRENT
from genre_ray.catalog.sources import (
    CatalogError,
    Record,
    RecordCrossesCut,
    SourceFile,
    count_lines,
    expand_paths,
    printable,
    read_records,
    split_parquet,
    split_text,
)
from genre_ray.config import CatalogConfig, Config, TextConfig
from genre_ray.layout import RunLayout, atomic_write, atomic_write_text
from genre_ray.runtime import init_ray
from genre_ray.storage import inputs
from genre_ray.text import DocumentBuilder, content_hash, encoder_id

log = logging.getLogger(__name__)

# Order key of a row: file index in the high bits, source row in the low 40 (10^12 rows per file).
_ROW_BITS = 40
_ORDER = "_order"
_ORDERED_CATALOG = schema.CATALOG.append(pa.field(_ORDER, pa.int64(), nullable=False))
_ORDERED_REJECTS = schema.REJECTS.append(pa.field(_ORDER, pa.int64(), nullable=False))
DUPLICATE_KIND = "duplicate id"
# Up to this many rows, duplicate ids are found on the driver from the (movie_id, order) columns the parse tasks
# return (~25 bytes a row); above it, by a Ray groupby that never brings them together. Both keep the same row.
# The cut-off exists because a shuffle's worker start-up costs seconds, which dominate a small catalog's ingest.
DRIVER_DEDUP_MAX_ROWS = 1_000_000
_CHUNK_ROWS = 16_384
_VALUE_CHARS = 200  # of a bad value kept in the warnings table
_EXAMPLE_CHARS = 60  # of a bad value quoted in a message


@dataclass
class FileReport:
    path: str
    format: str
    adapter: str | None = None
    id_column: str | None = None
    rows_in: int = 0
    rows_ok: int = 0
    rows_rejected: int = 0
    no_overview: int = 0
    no_genres: int = 0
    empty_documents: int = 0  # kept rows whose text.parts render nothing: the encoder would see ""
    no_tagline: int = 0
    # kept rows with neither overview nor tagline: their document is a title and a few facts (see poor_text)
    no_description: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    # optional fields left empty because they did not parse (the row is kept): "<column>: <kind>" -> count
    field_warnings_by_reason: dict[str, int] = field(default_factory=dict)
    rows_with_field_warnings: int = 0
    # "<column>: <kind>" -> where it first happened and the value, for the failure message of an unusable catalog
    examples: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # a file-level problem (unusable header, corrupt Parquet): raised on the driver
    # a part of a CSV whose last record ran past its end: the file is read again by one task (not in accounting)
    record_crosses_cut: bool = False


@dataclass
class IngestResult:
    rows_in: int
    rows_ok: int
    rows_rejected: int
    flagged: dict[str, int]
    rejects_by_reason: dict[str, int]
    per_file: dict[str, dict[str, Any]]
    warnings: list[str]
    seconds: float = 0.0
    # where the seconds went: parse (read, validate, documents), dedup (duplicate ids), write (catalog, rejects)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # kept rows with an optional field left empty; one warning per (row, field) in catalog/warnings.parquet
    rows_with_field_warnings: int = 0
    field_warnings_by_reason: dict[str, int] = field(default_factory=dict)
    # None: the catalog was published to catalog/movies; otherwise why it was not (see unusable_message)
    error: str | None = None
    # catalog.extra_text: what was read from the second source and how many catalog movies it joined
    extra_text: dict[str, Any] | None = None
    no_tagline: int = 0
    no_description: int = 0

    @property
    def field_warnings(self) -> int:
        return sum(self.field_warnings_by_reason.values())

    def poor_text(self) -> str | None:
        """A warning when most kept movies have neither overview nor tagline: the run still succeeds, but such
        documents carry little genre signal and every spectrum comes out near the commonest genres."""
        if not self.rows_ok or 2 * self.no_description <= self.rows_ok:
            return None
        return (
            f"catalog: {self.no_description} of {self.rows_ok} movies have neither an overview nor a tagline "
            f"(overview missing for {self.flagged.get('no_overview', 0)}, tagline for {self.no_tagline}): their "
            "documents are little more than a title, so the genre spectrum will be poor; add overview / tagline "
            "columns to the catalog (or map them with catalog.columns)"
        )

    def summary(self) -> str:
        flags = ", ".join(f"{n} {name}" for name, n in self.flagged.items())
        return (
            (
                f"catalog: {self.rows_in} rows in = {self.rows_ok} ok + {self.rows_rejected} rejected "
                f"(flagged: {flags}; {self.field_warnings} field warning(s) in {self.rows_with_field_warnings} kept "
                f"row(s); {len(self.per_file)} file(s), {len(self.warnings)} file warning(s))"
            )
            + (
                f"; extra text joined into {self.extra_text['joined']} movies from {self.extra_text['path']}"
                if self.extra_text
                else ""
            )
            + (f"\n  WARNING {warning}" if (warning := self.poor_text()) else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "field_warnings": self.field_warnings}


class CatalogUnusable(CatalogError):
    """Ingest read the files but too few rows are usable: nothing downstream may run. `result` has the counts."""

    def __init__(self, message: str, result: IngestResult):
        super().__init__(message)
        self.result = result


def unusable_message(result: IngestResult, reports: list[FileReport], max_reject_fraction: float) -> str | None:
    """Why this catalog must not be used (no usable row, or too many rejects), or None when it is fine.

    E.g. "catalog: 0 of 3000 rows usable (3000 x Title: missing title, e.g. movies.json row 2 None); nothing
    published": the count, and the top reasons each with a first example, so the fix is obvious from the message.
    """
    n_in, n_ok, n_bad = result.rows_in, result.rows_ok, result.rows_rejected
    if n_in == 0:
        files = ", ".join(r.path for r in reports) or "no files"
        return f"catalog: 0 rows in ({files}: every file is empty); nothing published"
    if n_ok > 0 and n_bad <= max_reject_fraction * n_in:
        return None
    head = f"catalog: {n_ok} of {n_in} rows usable"
    if n_ok > 0:
        head += f", {n_bad} rejected = {n_bad / n_in:.1%}, over catalog.max_reject_fraction={max_reject_fraction:g}"
    top = sorted(
        ((n, key, rep) for rep in reports for key, n in rep.rejects_by_reason.items()),
        key=lambda t: (-t[0], t[1]),
    )[:3]
    reasons = "; ".join(f"{n} x {key}, e.g. {rep.path} {rep.examples.get(key, '')}".rstrip() for n, key, rep in top)
    return f"{head} ({reasons}); nothing published"


# ---- per file (runs in a Ray task; plain Python, testable without Ray) ------------------------------------------


def choose_adapter(cfg: CatalogConfig, header: list[str], path: str) -> Adapter:
    return _layout_adapter(cfg, header, path).with_date_format(cfg.date_format)


def _layout_adapter(cfg: CatalogConfig, header: list[str], path: str) -> Adapter:
    if cfg.adapter == "mapped":
        adapter = mapped(cfg.columns, cfg.genre_separator)
        missing = sorted({col for col, _ in adapter.fields.values()} - set(header))
        if missing:
            raise CatalogError(f"{path}: catalog.columns maps to column(s) {missing} that the file does not have")
    elif cfg.adapter == "auto":
        adapter = detect(header, path)
    else:
        adapter = BUILTIN[cfg.adapter]
    adapter.check_header(header, path)
    return adapter


def _empty_outputs() -> tuple[pa.Table, pa.Table, pa.Table]:
    return _ORDERED_CATALOG.empty_table(), _ORDERED_REJECTS.empty_table(), schema.WARNINGS.empty_table()


def parse_file(
    src: SourceFile, cfg: CatalogConfig, text_cfg: TextConfig, enc_id: str
) -> tuple[pa.Table, pa.Table, pa.Table, FileReport]:
    """One file -> (catalog rows + order key, rejects + order key, field warnings, report).

    catalog.parser picks how rows are parsed: the per-row reference (adapters, text) or the vectorised one, which
    hands the records it does not reproduce exactly to the same per-row code (`one` below).
    """
    report = FileReport(path=src.path, format=src.format)
    ok: list[dict[str, Any]] = []
    ok_blocks: list[pa.Table] = []  # rows go to Arrow in chunks: Python dicts of a large file would not fit
    rejects: list[dict[str, Any]] = []
    warned: list[dict[str, Any]] = []
    try:
        header, records = read_records(src)
        if not header:
            report.warnings.append(f"{src.path}: empty file, 0 rows")
            return (*_empty_outputs(), report)
        adapter = choose_adapter(cfg, header, src.path)
        report.adapter, report.id_column = adapter.name, adapter.id_column
        limits = Limits(cfg.max_overview_chars, cfg.max_title_chars)
        build = DocumentBuilder(text_cfg)
        kinds: Counter[str] = Counter()
        warning_kinds: Counter[str] = Counter()

        def one(rec: Record) -> None:
            report.rows_in += 1
            order = (src.index << _ROW_BITS) | rec.row
            if rec.values is None:
                kind = rec.error_kind or "unparseable record"
                rejects.append(_reject(src, rec, order, None, rec.error or "unparseable record", None))
                kinds[kind] += 1
                report.examples.setdefault(kind, f"row {rec.row} {_example(rec.raw)}")
                return
            row_warnings: list[FieldWarning] = []
            try:
                row = adapter.normalise(rec.values, limits, cfg.strict, row_warnings)
            except RowError as err:
                raw_id = rec.values.get(adapter.column_of("movie_id") or "")
                rejects.append(_reject(src, rec, order, err.column, err.reason, _shown_id(raw_id)))
                key = f"{err.column}: {err.kind}" if err.column else err.kind
                kinds[key] += 1
                report.examples.setdefault(key, f"row {rec.row} {_example(err.value)}")
                return
            for w in row_warnings:
                warned.append(_warning(src, rec, row["movie_id"], w))
                warning_kinds[f"{w.column}: {w.kind}"] += 1
            report.rows_with_field_warnings += bool(row_warnings)
            row["source_file"], row["source_row"], row[_ORDER] = src.path, rec.row, order
            row["document"] = build(row)
            row["content_hash"] = content_hash(row["document"], enc_id)
            report.empty_documents += not row["document"]
            report.no_overview += row["no_overview"]
            report.no_tagline += not row.get("tagline")
            report.no_description += row["no_overview"] and not row.get("tagline")
            report.no_genres += row["no_genres"]
            ok.append(row)

        if _vectorised(cfg, adapter, src.path):
            parser = vectorised.VectorParser(limits, build, enc_id, _ORDERED_CATALOG)
            while chunk := list(itertools.islice(records, _CHUNK_ROWS)):
                clean, others = parser.parse_chunk(chunk, src, _ROW_BITS)
                for i in others:
                    one(chunk[i])
                _count_kept(report, clean)
                block = pa.concat_tables([clean, pa.Table.from_pylist(ok, schema=_ORDERED_CATALOG)])
                ok_blocks.append(block.sort_by(_ORDER) if ok and clean.num_rows else block)
                ok.clear()
        else:
            for rec in records:
                one(rec)
                if len(ok) == _CHUNK_ROWS:
                    ok_blocks.append(pa.Table.from_pylist(ok, schema=_ORDERED_CATALOG))
                    ok.clear()
    except CatalogError as err:
        report.error = str(err)
        return (*_empty_outputs(), report)
    except RecordCrossesCut:
        report.record_crosses_cut = True  # the driver throws this file's parts away and reads it whole
        return (*_empty_outputs(), report)
    ok_blocks.append(pa.Table.from_pylist(ok, schema=_ORDERED_CATALOG))
    table = pa.concat_tables(ok_blocks).combine_chunks()
    report.rows_ok, report.rows_rejected = table.num_rows, len(rejects)
    report.rejects_by_reason = dict(kinds)
    report.field_warnings_by_reason = dict(warning_kinds)
    warnings = pa.Table.from_pylist(warned, schema=schema.WARNINGS)
    return table, pa.Table.from_pylist(rejects, schema=_ORDERED_REJECTS), warnings, report


def _vectorised(cfg: CatalogConfig, adapter: Adapter, path: str) -> bool:
    """Whether this file is parsed by catalog.vectorised (catalog.parser; auto: wherever it supports the layout)."""
    if cfg.parser == "reference":
        return False
    supported = vectorised.supports(adapter) and cfg.date_format is None
    if cfg.parser == "vectorised" and not supported:
        raise CatalogError(
            f"{path}: catalog.parser=vectorised parses the tmdb layout without catalog.date_format; this file is "
            f"read by the {adapter.name} adapter{' with a date_format' if cfg.date_format else ''}: set "
            "catalog.parser to auto or reference"
        )
    return supported


def _count_kept(report: FileReport, kept: pa.Table) -> None:
    """The report's counts for rows kept by the vectorised parser (the per-row code counts its own)."""
    no_overview = kept["no_overview"]
    no_tagline = kept["tagline"].is_null()
    report.rows_in += kept.num_rows
    report.no_overview += pc.sum(no_overview).as_py() or 0
    report.no_genres += pc.sum(kept["no_genres"]).as_py() or 0
    report.no_tagline += pc.sum(no_tagline).as_py() or 0
    report.no_description += pc.sum(pc.and_(no_overview, no_tagline)).as_py() or 0
    report.empty_documents += pc.sum(pc.equal(pc.utf8_length(kept["document"]), 0)).as_py() or 0


def _shown_value(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return printable(text)[:_VALUE_CHARS]


def _example(value: Any) -> str:
    shown = _shown_value(value)
    if shown is None:
        return "(empty)"
    return repr(shown if len(shown) <= _EXAMPLE_CHARS else shown[: _EXAMPLE_CHARS - 1] + "…")


def _warning(src: SourceFile, rec: Record, movie_id: str, w: FieldWarning) -> dict[str, Any]:
    return {
        "source_file": src.path,
        "source_row": rec.row,
        "movie_id": movie_id,
        "field": w.column,
        "value": _shown_value(w.value),
        "reason": printable(w.reason),
    }


def _shown_id(raw_id: Any) -> str | None:
    """The id of a rejected row as far as it can be read, so a reject can be found by id too."""
    if raw_id is None:
        return None
    return printable(str(raw_id)).strip()[:200] or None


def _reject(
    src: SourceFile, rec: Record, order: int, column: str | None, reason: str, movie_id: str | None
) -> dict[str, Any]:
    return {
        "source_file": src.path,
        "source_row": rec.row,
        "movie_id": movie_id,
        "field": column,
        "reason": printable(reason),
        "raw": rec.raw,
        _ORDER: order,
    }


def finish_report(report: FileReport) -> FileReport:
    """The warnings about a whole file, added once its parts are merged (a part's own count would be wrong)."""
    if report.error is not None:
        return report  # raised on the driver; warnings would not be shown
    if report.adapter is not None and report.rows_in == 0:
        report.warnings.append(f"{report.path}: header only, 0 rows")
    if report.empty_documents:
        report.warnings.append(
            f"{report.path}: {report.empty_documents} kept row(s) have an empty document: no text.parts part has "
            "all its fields (e.g. a template part '$title ($year).' drops the title when the year is missing)"
        )
    return report


@ray.remote(max_retries=2)
def _count_lines_task(path: str, start: int, stop: int, storage_options: dict[str, str]) -> int:
    inputs.use_options(storage_options)
    return count_lines(path, start, stop)


def split_source(src: SourceFile, cfg: CatalogConfig, storage_options: dict[str, str]) -> list[SourceFile]:
    """A file as the parts its tasks read: row-group runs of a big Parquet file, byte ranges of a big text file."""
    if src.format == "parquet":
        return split_parquet(src, cfg.parquet_rows_per_task)

    def count_on_ray(path: str, ranges: list[tuple[int, int]]) -> list[int]:
        return ray.get([_count_lines_task.remote(path, a, b, storage_options) for a, b in ranges])

    return split_text(src, cfg.bytes_per_task, count=count_on_ray)


@ray.remote(num_returns=5, max_retries=2)
def _parse_file_task(
    src: SourceFile, cfg: CatalogConfig, text_cfg: TextConfig, enc_id: str, storage_options: dict[str, str]
) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table, FileReport]:
    inputs.use_options(storage_options)  # s3:// inputs, read with the run's storage settings in this worker too
    ok, rejects, warnings, report = parse_file(src, cfg, text_cfg, enc_id)
    # The narrow id columns as their own object: the driver-side dedup fetches these, never the documents.
    return ok, ok.select(["movie_id", _ORDER]), rejects, warnings, report


# ---- whole catalog (driver) -------------------------------------------------------------------------------------


def _keepers_on_driver(ids: list[pa.Table]) -> pa.Table:
    """movie_id -> order key of the row to keep, for ids that occur more than once (usually a short table)."""
    # Single-threaded: a threaded Acero plan in the driver can fail once Ray Data has resized Arrow's CPU pool.
    counted = (
        pa.concat_tables(ids).group_by("movie_id", use_threads=False).aggregate([(_ORDER, "count"), (_ORDER, "min")])
    )
    dups = counted.filter(pc.greater(counted[f"{_ORDER}_count"], 1))
    return pa.table({"movie_id": dups["movie_id"], "keep": dups[f"{_ORDER}_min"]})


def _keepers_on_ray(ds: ray.data.Dataset) -> pa.Table:
    """As `_keepers_on_driver`, by a distributed groupby over the two narrow columns."""
    counted = (
        ds.select_columns(["movie_id", _ORDER])
        .groupby("movie_id")
        .aggregate(Count(alias_name="n"), Min(_ORDER, alias_name="keep"))
        .map_batches(lambda t: t.filter(pc.greater(t["n"], 1)), batch_format="pyarrow")
    )
    blocks = [b.select(["movie_id", "keep"]) for b in ray.get(counted.to_arrow_refs()) if b.num_rows]
    empty = pa.table({"movie_id": pa.array([], pa.string()), "keep": pa.array([], pa.int64())})
    return pa.concat_tables(blocks) if blocks else empty


def _loser_mask(batch: pa.Table, keepers: pa.Table) -> pa.ChunkedArray:
    idx = pc.index_in(batch["movie_id"], value_set=keepers["movie_id"])
    keep = pc.take(keepers["keep"], idx)
    return pc.fill_null(pc.not_equal(batch[_ORDER], keep), False)


def _drop_losers(batch: pa.Table, keepers: pa.Table) -> pa.Table:
    return batch.filter(pc.invert(_loser_mask(batch, keepers)))


def _only_losers(batch: pa.Table, keepers: pa.Table) -> pa.Table:
    return batch.filter(_loser_mask(batch, keepers)).select(
        ["movie_id", "title", "year", "source_file", "source_row", "no_overview", "no_genres", "tagline", _ORDER]
    )


def _duplicate_rejects(
    losers: pa.Table, keepers: pa.Table, files: list[SourceFile], id_columns: dict[str, str | None]
) -> pa.Table:
    kept_at = dict(zip(keepers["movie_id"].to_pylist(), keepers["keep"].to_pylist(), strict=True))
    rows = []
    for loser in losers.to_pylist():
        keep = kept_at[loser["movie_id"]]
        kept_file = files[keep >> _ROW_BITS].path
        kept_row = keep & ((1 << _ROW_BITS) - 1)
        rows.append(
            {
                "source_file": loser["source_file"],
                "source_row": loser["source_row"],
                "movie_id": loser["movie_id"],
                "field": id_columns[loser["source_file"]],  # the id column of the loser's own layout
                "reason": f"duplicate id {loser['movie_id']}: kept {kept_file} row {kept_row}",
                "raw": json.dumps({k: loser[k] for k in ("movie_id", "title", "year")}, ensure_ascii=False),
                _ORDER: loser[_ORDER],
            }
        )
    return pa.Table.from_pylist(rows, schema=_ORDERED_REJECTS)


def _deduplicate(
    ds: ray.data.Dataset, id_refs: list[ray.ObjectRef], files: list[SourceFile], reports: list[FileReport]
) -> tuple[ray.data.Dataset, pa.Table | None]:
    """Keep the first row of each movie_id by (file order, row); the rest become rejects, counted per file."""
    rows = sum(r.rows_ok for r in reports)
    if not rows:
        return ds, None
    keepers = _keepers_on_driver(ray.get(id_refs)) if rows <= DRIVER_DEDUP_MAX_ROWS else _keepers_on_ray(ds)
    if not keepers.num_rows:
        return ds, None
    kept = ds.map_batches(_drop_losers, fn_kwargs={"keepers": keepers}, batch_format="pyarrow")
    losers_ds = ds.map_batches(_only_losers, fn_kwargs={"keepers": keepers}, batch_format="pyarrow")
    losers = pa.concat_tables([b for b in ray.get(losers_ds.to_arrow_refs()) if b.num_rows])
    by_path = {r.path: r for r in reports}
    for loser in losers.select(["source_file", "no_overview", "no_genres", "tagline"]).to_pylist():
        rep = by_path[loser["source_file"]]
        rep.rows_ok -= 1
        rep.rows_rejected += 1
        rep.no_overview -= loser["no_overview"]
        rep.no_genres -= loser["no_genres"]
        rep.no_tagline -= not loser["tagline"]
        rep.no_description -= loser["no_overview"] and not loser["tagline"]
        key = f"{rep.id_column}: {DUPLICATE_KIND}"
        rep.rejects_by_reason[key] = rep.rejects_by_reason.get(key, 0) + 1
    for loser in losers.select(["source_file", "source_row", "movie_id"]).to_pylist():
        key = f"{by_path[loser['source_file']].id_column}: {DUPLICATE_KIND}"
        by_path[loser["source_file"]].examples.setdefault(key, f"row {loser['source_row']} id {loser['movie_id']!r}")
    id_columns = {r.path: r.id_column for r in reports}
    return kept, _duplicate_rejects(losers, keepers, files, id_columns)


def ingest(cfg: Config, layout: RunLayout) -> IngestResult:
    """Read every catalog file, write the normalised catalog, rejects and accounting under `layout`."""
    started = time.perf_counter()
    inputs.use_options(cfg.storage.options)
    files, warnings = expand_paths(cfg.catalog.paths, cfg.catalog.format)
    if cfg.catalog.adapter == "mapped":
        mapped(cfg.catalog.columns, cfg.catalog.genre_separator)  # a bad mapping is a config error: fail before Ray
    DocumentBuilder(cfg.text)  # likewise a template that leaks labels
    enc_id = encoder_id(cfg.encoder.model, cfg.encoder.max_length, cfg.encoder.pooling, cfg.encoder.normalize)
    init_ray(cfg.ray)

    parts = [part for src in files for part in split_source(src, cfg.catalog, cfg.storage.options)]
    calls = [_parse_file_task.remote(src, cfg.catalog, cfg.text, enc_id, cfg.storage.options) for src in parts]
    parts, calls = _reread_crossed(parts, calls, cfg, enc_id)
    reports = _merge_parts(ray.get([c[4] for c in calls]))
    parsed = time.perf_counter()
    for rep in reports:
        if rep.error:
            raise CatalogError(rep.error)
    reject_tables: list[pa.Table] = ray.get([c[2] for c in calls])
    warnings_table = pa.concat_tables([schema.WARNINGS.empty_table(), *ray.get([c[3] for c in calls])])

    ds = ray.data.from_arrow_refs([c[0] for c in calls])
    # This dataset's own context (derived datasets share it): the written catalog keeps file and row order, and a
    # groupby uses the sort-based shuffle, whose tasks start in a fraction of the time the hash shuffle's
    # aggregator actors need (measured 0.5-0.9 s vs 8-13 s on a 2-CPU node for 5k rows).
    ds.context.execution_options.preserve_order = True
    ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED

    kept, dup_rejects = _deduplicate(ds, [c[1] for c in calls], files, reports)
    if dup_rejects is not None:
        reject_tables.append(dup_rejects)
    rejects = pa.concat_tables(reject_tables or [_ORDERED_REJECTS.empty_table()]).sort_by(_ORDER).drop_columns(_ORDER)
    extra = None
    if cfg.catalog.extra_text is not None:
        kept, extra = join_extra_text(kept, cfg.catalog.extra_text, cfg.text, enc_id, _ORDERED_CATALOG.names)
    deduplicated = time.perf_counter()

    result = _account(reports, warnings)
    if result.rows_rejected != rejects.num_rows:
        raise AssertionError(f"accounting bug: {result.rows_rejected} rejected but {rejects.num_rows} reject rows")
    result.error = unusable_message(result, reports, cfg.catalog.max_reject_fraction)

    layout.catalog_dir.mkdir(parents=True, exist_ok=True)
    if result.error is None:
        # An unusable catalog never replaces the last good one: embed, train and publish keep working from it.
        _write_movies(kept, layout)
        if extra is not None:
            extra.joined = ray.get(count_joined.remote(layout))
            result.extra_text = extra.to_json()
    atomic_write(layout.rejects, lambda p: pq.write_table(rejects.cast(schema.REJECTS), p))
    atomic_write(layout.field_warnings, lambda p: pq.write_table(warnings_table, p))
    finished = time.perf_counter()
    result.seconds = round(finished - started, 3)
    result.phase_seconds = {
        "parse": round(parsed - started, 3),
        "dedup": round(deduplicated - parsed, 3),
        "write": round(finished - deduplicated, 3),
    }
    atomic_write_text(layout.accounting, json.dumps(result.to_json(), indent=2) + "\n")
    for w in result.warnings:
        log.warning(w)
    if result.field_warnings:
        top = ", ".join(f"{n} x {k}" for k, n in sorted(result.field_warnings_by_reason.items(), key=lambda t: -t[1]))
        log.warning("catalog: rows kept with optional fields left empty (%s); see %s", top, layout.field_warnings)
    log.info(result.summary())
    if warning := result.poor_text():
        log.warning(warning)
    if result.error is not None:
        raise CatalogUnusable(f"{result.error}\n  every reject: {layout.rejects}", result)
    return result


def _reread_crossed(
    parts: list[SourceFile], calls: list[Any], cfg: Config, enc_id: str
) -> tuple[list[SourceFile], list[Any]]:
    """Files where a CSV record spans a cut between two parts, read again by one task in place of their parts."""
    crossed = {
        src.path for src, rep in zip(parts, ray.get([c[4] for c in calls]), strict=True) if rep.record_crosses_cut
    }
    if not crossed:
        return parts, calls
    kept_parts, kept_calls = [], []
    for src, call in zip(parts, calls, strict=True):
        if src.path not in crossed:
            kept_parts.append(src)
            kept_calls.append(call)
        elif src.byte_range is not None and src.byte_range[0] == 0:
            log.info("%s: a quoted field spans a task boundary; reading the file in one task", src.path)
            whole = replace(src, byte_range=None, first_row=0)
            kept_parts.append(whole)
            kept_calls.append(_parse_file_task.remote(whole, cfg.catalog, cfg.text, enc_id, cfg.storage.options))
    return kept_parts, kept_calls


def _merge_parts(parts: list[FileReport]) -> list[FileReport]:
    """One report per file from the reports of its parts (in file order; a file's parts are adjacent and in order)."""
    merged: dict[str, FileReport] = {}
    for part in parts:
        rep = merged.get(part.path)
        if rep is None:
            merged[part.path] = part
            continue
        for name in (
            "rows_in",
            "rows_ok",
            "rows_rejected",
            "no_overview",
            "no_genres",
            "empty_documents",
            "no_tagline",
            "no_description",
        ):
            setattr(rep, name, getattr(rep, name) + getattr(part, name))
        rep.rows_with_field_warnings += part.rows_with_field_warnings
        for mine, theirs in (
            (rep.rejects_by_reason, part.rejects_by_reason),
            (rep.field_warnings_by_reason, part.field_warnings_by_reason),
        ):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for key, example in part.examples.items():
            rep.examples.setdefault(key, example)
        rep.warnings.extend(w for w in part.warnings if w not in rep.warnings)
        rep.error = rep.error or part.error
    return [finish_report(rep) for rep in merged.values()]


def _write_movies(kept: ray.data.Dataset, layout: RunLayout) -> None:
    generation = datetime.now(UTC).strftime("g-%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:8]}"
    target = layout.movies / generation
    fs, path = storage.arrow_fs(target)
    kept.drop_columns([_ORDER]).write_parquet(path, filesystem=fs)
    if not any(target.glob("*.parquet")):  # no rows at all: still leave a readable, typed catalog
        atomic_write(target / "part-0.parquet", lambda p: pq.write_table(schema.CATALOG.empty_table(), p))
    atomic_write_text(layout.movies / CURRENT, json.dumps({"generation": generation}) + "\n")
    # Only now are older generations (and a catalog written before generations existed) garbage.
    for old in layout.movies.glob("*"):
        if old.name in (generation, CURRENT):
            continue
        if old.is_dir():
            storage.remove_tree(old)
        else:
            old.unlink(missing_ok=True)


def _account(reports: list[FileReport], warnings: list[str]) -> IngestResult:
    by_reason: Counter[str] = Counter()
    warned: Counter[str] = Counter()
    per_file: dict[str, dict[str, Any]] = {}
    for rep in reports:
        if rep.rows_in != rep.rows_ok + rep.rows_rejected:
            raise AssertionError(f"accounting bug in {rep.path}: {rep}")
        by_reason.update(rep.rejects_by_reason)
        warned.update(rep.field_warnings_by_reason)
        warnings = [*warnings, *rep.warnings]
        per_file[rep.path] = {
            k: v
            for k, v in asdict(rep).items()
            if k not in ("path", "error", "warnings", "examples", "record_crosses_cut")
        }
    return IngestResult(
        rows_in=sum(r.rows_in for r in reports),
        rows_ok=sum(r.rows_ok for r in reports),
        rows_rejected=sum(r.rows_rejected for r in reports),
        flagged={"no_overview": sum(r.no_overview for r in reports), "no_genres": sum(r.no_genres for r in reports)},
        rejects_by_reason=dict(sorted(by_reason.items())),
        per_file=per_file,
        warnings=warnings,
        rows_with_field_warnings=sum(r.rows_with_field_warnings for r in reports),
        field_warnings_by_reason=dict(sorted(warned.items())),
        no_tagline=sum(r.no_tagline for r in reports),
        no_description=sum(r.no_description for r in reports),
    )
