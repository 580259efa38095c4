"""Publish: bring the served tables up to date with a run's catalog, embeddings and model, then switch readers.

Publish protocol (what readers see is always one consistent run; the caller holds the writer lease, lease.py):
1. restore every published table to the version in the current manifest (undoes what an interrupted run wrote);
2. diff the catalog against the published rows (content_hash, model_version, target table) in one Ray task
   (plan.py): the driver gets counts and ids to delete, never the catalog;
3. infer only new / changed / moved movies (everything when the model version changed), reading only their
   embeddings, and write them: full table writes go through `lance_ray.write_lance` (distributed fragment writes,
   one commit), nightly changes through `merge_insert("movie_id")` + `delete`; a movie whose document is the same
   but whose served metadata moved (votes, popularity, genres) gets only those columns updated, by a partial
   `merge_insert`: nothing is embedded or inferred for it, and served votes never go stale;
4. index (IVF-PQ when large enough, flat otherwise; B-tree on movie_id and title_key), compact the touched tables,
   record each table's new Lance version;
5. atomically switch readers: create the next `serving/` record (manifest.py); then prune what no kept
   publish references (maintenance.py).
Readers open every table at the manifest's version (`checkout`), so they never see a half-written run, and
rollback is just serving an earlier entry of the history again.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from genre_ray import serving_params, storage
from genre_ray.config import Config
from genre_ray.embed.dataset import load_embeddings
from genre_ray.errors import StoreError
from genre_ray.layout import RunLayout
from genre_ray.model import load_classifier
from genre_ray.runtime import NodeLog, cluster_cpus, in_workers, init_ray
from genre_ray.spectrum import compute_spectrum
from genre_ray.sql import sql_in
from genre_ray.store import maintenance, models
from genre_ray.store import manifest as manifests
from genre_ray.store.lease import Lease
from genre_ray.store.partitions import route, table_name, table_names
from genre_ray.store.plan import PublishPlan, plan_publish
from genre_ray.store.reader import TITLE_KEY, Store
from genre_ray.store.tables import TableChange, finish_table, served_schema, with_title_key

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    run_id: str
    rows_total: int
    upserted: int
    deleted: int
    unchanged: int
    tables: dict[str, dict[str, Any]]
    model_version: str
    seconds: float
    full_rebuild: bool = False
    published: bool = True
    spectrum_nodes: list[str] = field(default_factory=list)  # Ray nodes of the spectrum actors
    # embeddings the spectrum map read: a small nightly fetches only those of the movies it re-infers
    embeddings_read: int = 0
    # served movies whose metadata columns (votes, popularity, ...) were updated in place: nothing re-inferred
    refreshed: int = 0

    def summary(self) -> str:
        head = (
            f"publish {self.run_id}: {self.rows_total} movies in {len(self.tables)} tables "
            f"(upserted {self.upserted}, deleted {self.deleted}, metadata refreshed {self.refreshed}, "
            f"unchanged {self.unchanged}"
            f"{', full rebuild' if self.full_rebuild else ''}) model {self.model_version} in {self.seconds:.1f}s"
        )
        if not self.published:
            head += " - nothing changed, manifest kept"
        lines = [head]
        for name, info in sorted(self.tables.items()):
            kind = "ivf-pq" if info["indexed"] else "flat"
            lines.append(f"  {name:<24} {info['rows']:>9} rows  {kind:<6}  version {info['version']}")
        return "\n".join(lines)


def _load_embeddings(layout: RunLayout, ids: list[str] | None) -> ray.data.Dataset:
    """The embed stage's output; only the rows of `ids` when given (a small nightly delta), not every embedding."""
    where = sql_in("movie_id", ids) if ids is not None else None
    embeddings = load_embeddings(layout, ["movie_id", "content_hash", "embedding"], where)
    # a fetch is at most DELTA_FILTER_MAX_IDS rows: materialised, it is counted and inferred from one read
    return embeddings.materialize() if where else embeddings


def _spectrum_rows(
    cfg: Config, model_dir: Any, embeddings: ray.data.Dataset, plan: PublishPlan, upsert: ray.ObjectRef
) -> tuple[ray.data.Dataset, list[str]]:
    """Materialised served rows for the movies in `upsert` (the plan's metadata) and the Ray nodes the spectrum
    actors ran on. Fails, before anything is written, when some of them have no embedding of their current
    document."""
    actors = cfg.store.spectrum_actors or max(1, int(cluster_cpus() // 2))
    node_log = NodeLog.remote()
    rows = compute_spectrum(
        embeddings,
        upsert,
        model_dir,
        batch_size=cfg.store.spectrum_batch_size,
        concurrency=actors,
        num_cpus=cfg.store.spectrum_cpus,
        node_log=node_log,
    ).materialize()
    nodes = ray.get(node_log.get.remote())
    ray.kill(node_log)
    inferred = rows.count()  # from the materialised blocks' metadata
    if inferred != plan.upserted:
        _explain_shortfall(rows, upsert, inferred)
    return rows, nodes


def _explain_shortfall(rows: ray.data.Dataset, upsert: ray.ObjectRef, inferred: int) -> None:
    """The failure path only: which movies got no served row (ids gathered here; the run stops anyway)."""
    blocks = ray.get(list(rows.select_columns(["movie_id"]).to_arrow_refs()))
    got = pa.array([i for t in blocks for i in t["movie_id"].to_pylist()], pa.string())
    wanted = ray.get(upsert)["movie_id"]
    missing = sorted(pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=got))).to_pylist())
    if missing:
        raise StoreError(
            f"{len(missing)} catalog movies have no embedding for their current content_hash "
            f"(e.g. {missing[:5]}); run the embed stage first"
        )
    raise StoreError(
        f"{inferred} served rows for {len(wanted)} movies: the embeddings hold some movie_id more than once"
    )


def _rows_for(
    rows: ray.data.Dataset, table: str, key: str, partitions: Mapping[str, str], catch_all: str, dim: int
) -> ray.data.Dataset:
    """The rows served from `table`: each batch is routed by its own partition-key column (no lookup against the
    whole catalog per batch), and gets its title_key."""
    target = served_schema(dim)

    def keep(batch: pa.Table) -> pa.Table:
        mine = batch.filter(pc.equal(route(batch[key], partitions, catch_all), table))
        return with_title_key(mine).cast(target)

    return rows.map_batches(keep, batch_format="pyarrow", num_cpus=0.25, zero_copy_batch=True)


def _restore_published(store: Store, manifest: Mapping[str, Any] | None) -> None:
    """Undo whatever an interrupted run wrote after the last switch: tables back to their manifest versions."""
    if manifest is None:
        return
    existing = table_names(store.db)
    for name, info in manifest["tables"].items():
        if name not in existing:
            raise StoreError(f"published table {name} is missing from {store.dir}")
        tbl = store.db.open_table(name)
        if tbl.version != info["version"]:
            log.warning("table %s is at version %d, published %d: restoring", name, tbl.version, info["version"])
            tbl.restore(info["version"])


def _lacks_title_key(store: Store, manifest: Mapping[str, Any]) -> bool:
    """Tables published before title_key existed are rebuilt once, so every served table carries the column."""
    return any(TITLE_KEY not in store.db.open_table(name).schema.names for name in manifest["tables"])


def _served_model(cfg: Config, layout: RunLayout, store: Store, previous: Mapping[str, Any] | None, promote: bool):
    """The model this publish serves. A rollback pins the manifest's model: unless this run trained a new one or
    was told to --promote, model/ is re-exported from the store's copy of the pinned model first. --promote also
    serves a retrain the gate held back (model_candidate/)."""
    from genre_ray.train.gate import promote_candidate

    if promote and (version := promote_candidate(layout)) is not None:
        log.warning("--promote: serving the held-back retrain %s from %s", version, layout.candidate_dir)
    loaded = load_classifier(layout.model_dir)
    if previous is None or not previous.get("pinned") or promote:
        return loaded, False
    pinned = previous["model_version"]
    if loaded.model_version != pinned:
        log.warning(
            "store is pinned to model %s by a rollback; model/ holds %s: re-exporting %s into model/ "
            "(use --retrain or --promote to serve a different model)",
            pinned,
            loaded.model_version,
            pinned,
        )
        models.restore_model(store.dir, pinned, layout.model_dir)
        loaded = load_classifier(layout.model_dir)
    return loaded, True


def publish(
    cfg: Config,
    layout: RunLayout,
    run_id: str | None = None,
    *,
    embeddings: ray.data.Dataset | pa.Table | None = None,
    promote: bool = False,
    lease: Lease | None = None,
) -> PublishResult:
    """Bring the store up to date with the catalog + embeddings + model in `layout`, then switch readers to it.

    `embeddings` defaults to the embed stage's output; pass a Dataset/Table to publish other vectors. `promote`:
    serve model/ even if a rollback pinned the store to an earlier model (a deliberate retrain sets it). `lease`:
    the writer lease the caller holds, checked right before readers are switched (a lost one switches nothing).
    """
    start = time.perf_counter()
    init_ray(cfg.ray)
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    store = Store(layout.store_dir)
    previous = store.manifest()
    _restore_published(store, previous)

    loaded, pinned = _served_model(cfg, layout, store, previous, promote)
    dim = loaded.model.spec.spectrum_dim
    key = cfg.store.partition_key
    catch_all = table_name(cfg.store.table_prefix, cfg.store.catch_all)
    full = (
        previous is None
        or previous["model_version"] != loaded.model_version
        or previous["partition_key"] != key
        or _lacks_title_key(store, previous)
    )
    plan, upsert, refresh = plan_publish(layout, cfg.store, catch_all, loaded.model_version, full)
    log.info(
        "publish %s: %d to infer, %d to delete, %d to refresh metadata only, %d unchanged%s",
        run_id,
        plan.upserted,
        plan.deleted,
        plan.refreshed,
        plan.unchanged,
        " (full rebuild)" if plan.full else "",
    )
    # what evaluate chose for this model (model/serving_params.json), else the config's recommend defaults
    serving = serving_params.to_manifest(
        serving_params.read(layout.model_dir, loaded.model_version)
        or serving_params.ServingParams(
            popularity_weight=cfg.recommend.popularity_weight, mmr_lambda=cfg.recommend.mmr_lambda, chosen_by="config"
        )
    )
    # new serving parameters alone are a change worth a manifest: evaluate runs after the publish it scores
    unchanged_serving = previous is not None and previous.get(serving_params.MANIFEST_KEY) == serving
    if (
        previous is not None
        and not plan.full
        and plan.upserted == 0
        and plan.deleted == 0
        and plan.refreshed == 0
        and unchanged_serving
    ):
        return PublishResult(
            run_id=previous["run_id"],
            rows_total=store.count(),
            upserted=0,
            deleted=0,
            unchanged=plan.unchanged,
            tables=previous["tables"],
            model_version=loaded.model_version,
            seconds=time.perf_counter() - start,
            published=False,
        )

    rows, spectrum_nodes, embeddings_read = None, [], 0
    if plan.upserted:  # a night that only removes movies infers nothing
        if embeddings is None:
            embeddings = _load_embeddings(layout, plan.fetch_ids)
        elif isinstance(embeddings, pa.Table):
            embeddings = ray.data.from_arrow(embeddings)
        embeddings_read = embeddings.count()  # a Lance scan answers from its metadata; a fetch is read once
        rows, spectrum_nodes = _spectrum_rows(cfg, layout.model_dir, embeddings, plan, upsert)

    changes = _write(store, rows, plan, previous, (key, plan.partitions, catch_all), dim, refresh)
    touched = sorted(changes)
    # one task per touched table, side by side: each table is its own Lance dataset, so they never conflict
    results = in_workers(
        finish_table, [(store.dir, name, cfg.store, dim, plan.full, changes[name]) for name in touched], num_cpus=1
    )
    finished = dict(zip(touched, results, strict=True))
    tables: dict[str, dict[str, Any]] = {}
    old_tables = previous["tables"] if previous and not plan.full else {}
    for name in sorted(set(old_tables) | set(touched)):
        if name in touched:
            info = finished[name]
        else:
            tbl = store.db.open_table(name)
            info = {"rows": tbl.count_rows(), "indexed": old_tables[name]["indexed"], "version": tbl.version}
        if info["rows"]:  # a table every movie moved out of is no longer published (the data stays for rollback)
            tables[name] = info

    models.keep_model(store.dir, layout.model_dir, loaded.model_version)
    manifest = {
        "run_id": run_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": loaded.model_version,
        # true after a rollback until a deliberate --retrain / --promote: the nightly keeps serving this model
        "pinned": pinned,
        "vocab": loaded.vocab,
        "spectrum_dim": dim,
        "partition_key": key,
        "partitions": plan.partitions,
        "catch_all": catch_all,
        "tables": tables,
        "stats": {"rows": sum(t["rows"] for t in tables.values()), "max_log_votes": math.log1p(plan.max_votes)},
        serving_params.MANIFEST_KEY: serving,
    }
    _commit(store, manifest, previous, lease)
    maintenance.retain(store, cfg.store.keep_publishes, layout)
    return PublishResult(
        run_id=run_id,
        rows_total=manifest["stats"]["rows"],
        upserted=plan.upserted,
        deleted=plan.deleted,
        unchanged=plan.unchanged,
        tables=tables,
        model_version=loaded.model_version,
        seconds=time.perf_counter() - start,
        full_rebuild=plan.full,
        spectrum_nodes=spectrum_nodes,
        embeddings_read=embeddings_read,
        refreshed=plan.refreshed,
    )


def _commit(store: Store, manifest: dict[str, Any], previous: Mapping[str, Any] | None, lease: Lease | None) -> None:
    if lease is not None:
        lease.check()  # a writer whose lease was taken over must not switch readers to what it wrote
    # switched only if no other writer switched since `previous` was read (the lease makes that the normal case)
    manifests.record(store.dir, manifest, based_on=previous)


def _write(
    store: Store,
    rows: ray.data.Dataset | None,
    plan: PublishPlan,
    previous: Mapping[str, Any] | None,
    routing: tuple[str, Mapping[str, str], str],
    dim: int,
    refresh: ray.ObjectRef,
) -> dict[str, TableChange]:
    """Every table that gets a new version, with its change. Tables written whole (a full publish, a new partition)
    are written here, by distributed fragment writes and one commit; a published table's nightly change is left to
    its table task (finish_table)."""
    import lance_ray

    published = set(previous["tables"]) if previous and not plan.full else set()
    existing = table_names(store.db)
    served = served_schema(dim)
    changes = {table: TableChange(delete=ids) for table, ids in plan.delete.items() if table in published}
    for table in plan.refresh_tables:  # a metadata refresh only ever touches published rows
        changes[table] = TableChange(changes.get(table, TableChange()).delete, refresh=refresh)
    for table in plan.targets:  # none when nothing is inferred, and only then is `rows` None
        assert rows is not None
        part = _rows_for(rows, table, *routing, dim)
        if table in published:
            # Nightly path: the delta is small; its blocks stay in the object store for the table's task.
            before = changes.get(table, TableChange())
            changes[table] = TableChange(before.delete, list(part.to_arrow_refs()), before.refresh)
        else:
            # Full path: distributed fragment writes and one commit. "overwrite" also replaces a table left by
            # an unpublished run or an older layout, as a new version (earlier versions stay for rollback).
            mode = "overwrite" if table in existing else "create"
            uri = store.dir / f"{table}.lance"
            if mode == "overwrite" and store.db.open_table(table).schema != served:
                _replace_schema(uri, served)
            lance_ray.write_lance(part, str(uri), schema=served, mode=mode, storage_options=storage.lance_options(uri))
            changes[table] = TableChange()
    return changes


def _replace_schema(uri: Any, served: pa.Schema) -> None:
    """Commit an empty version with the new schema (a retrained model with another spectrum width).

    lance-ray's overwrite writes its fragments in lance's append mode, which checks them against the table's current
    schema; after this step they match. No reader sees the empty version: readers open the versions a manifest names,
    and the older versions stay for a rollback."""
    import lance

    lance.write_dataset(served.empty_table(), str(uri), mode="overwrite", storage_options=storage.lance_options(uri))
