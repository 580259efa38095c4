"""The stages in order, with per-stage timing and a run.json that makes a failed run diagnosable.

catalog -> text -> embed -> train -> spectrum + store -> evaluate. Each stage reads its inputs from the run's
workdir (layout.py) and writes its outputs there, so any stage can be re-run on its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

from genre_ray.config import Config
from genre_ray.layout import RunLayout, atomic_write_text

if TYPE_CHECKING:
    from genre_ray.store.lease import Lease

log = logging.getLogger(__name__)

STAGES = ("ingest", "embed", "train", "publish", "evaluate")
# The nightly job: re-read the catalog, re-embed what changed, publish what changed. It trains only when there
# is no model yet (or when asked): retraining changes every vector, which the nightly should not do by surprise.
NIGHTLY = ("ingest", "embed", "train?", "publish")
# Stages that write the run's artifacts or the store: a run with any of them holds the store's writer lease.
MUTATING = {"ingest", "embed", "train", "publish"}
# Stages that read the ingested catalog (see check_inputs).
READS_CATALOG = {"embed", "train", "publish", "evaluate"}


def nightly_plan(retrain: bool) -> list[str]:
    """The nightly's stages; --retrain makes training unconditional. The CLI and jobs/nightly.py both use this."""
    return [s.rstrip("?") for s in NIGHTLY] if retrain else ["nightly"]


def _ingest(cfg: Config, layout: RunLayout) -> Any:
    from genre_ray.catalog import ingest

    return ingest(cfg, layout)


def _embed(cfg: Config, layout: RunLayout) -> Any:
    from genre_ray.embed import embed_catalog

    return embed_catalog(cfg, layout)


def _train(cfg: Config, layout: RunLayout, promote: bool) -> Any:
    from genre_ray.train import train_classifier

    return train_classifier(cfg, layout, promote=promote)


def _publish(cfg: Config, layout: RunLayout, run_id: str, promote: bool, lease: Lease | None) -> Any:
    from genre_ray.store import publish

    return publish(cfg, layout, run_id=run_id, promote=promote, lease=lease)


def _evaluate(cfg: Config, layout: RunLayout) -> Any:
    from genre_ray.evaluate import evaluate

    return evaluate(cfg, layout)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("genre-ray", "ray", "torch", "transformers", "lancedb", "pylance", "lance-ray", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


@dataclasses.dataclass
class RunReport:
    run_id: str
    workdir: str
    stages: list[str]
    status: str = "running"
    started_at: str = ""
    finished_at: str | None = None
    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # rows through the stages of this run: the first place to look when a nightly looks wrong
    ledger: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed_stage: str | None = None
    error: str | None = None
    traceback: str | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=_versions)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    # stage name -> the stage's own result object, for callers in the same process
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "outputs"}
        return _jsonable(d)

    def write(self, layout: RunLayout) -> None:
        # Write beside the run and keep one per run id: the latest is run.json, history is runs/<id>.json.
        text = json.dumps(self.to_json(), indent=2)
        for path in (layout.run_json, layout.root / "runs" / f"{self.run_id}.json"):
            atomic_write_text(path, text)


def expand(stages: Sequence[str]) -> list[str]:
    """'all' and 'nightly' are shorthands; anything else must be a stage name."""
    out: list[str] = []
    for s in stages:
        if s == "all":
            out += list(STAGES)
        elif s == "nightly":
            out += list(NIGHTLY)
        elif s in STAGES or (s.endswith("?") and s[:-1] in STAGES):
            out.append(s)
        else:
            raise ValueError(f"unknown stage {s!r}: choose from {', '.join((*STAGES, 'all', 'nightly'))}")
    return out


def check_inputs(cfg: Config, stages: Sequence[str]) -> None:
    """Fail in a second, on the driver, naming the path and the fix, where a stage would fail on an input that is
    not there only after Ray has started: a catalog no ingest wrote (CatalogMissing), evaluate's ratings files."""
    from genre_ray import storage

    layout = RunLayout.of(cfg.workdir, cfg.storage.options)
    names = [s.rstrip("?") for s in expand(stages)]
    first_reader = next((i for i, name in enumerate(names) if name in READS_CATALOG), None)
    if first_reader is not None and "ingest" not in names[:first_reader]:
        from genre_ray.catalog.reader import catalog_files

        catalog_files(layout)
    if "evaluate" in names:
        from genre_ray.errors import PreconditionError

        for key in ("ratings_path", "links_path"):
            value = getattr(cfg.eval, key)
            if not storage.location(value, cfg.storage.options).is_file():
                raise PreconditionError(
                    f"eval.{key}: {value} is not a file; evaluate needs MovieLens' ratings.csv and links.csv "
                    "(the defaults are in data/movielens-latest-small/; set this key to your copy)"
                )


def run_stages(
    cfg: Config,
    stages: Sequence[str],
    *,
    run_id: str | None = None,
    echo: Callable[[str], None] = print,
    promote: bool = False,
    break_lock: bool = False,
) -> RunReport:
    """Run stages in order. A stage suffixed "?" (train?) runs only if its output is missing.

    A run that writes anything holds the store's writer lease throughout (a second writer fails at once with
    store.LeaseError, before it touches even run.json). `promote`: publish model/ even if a rollback pinned the
    store's model; a run that trains a model promotes it anyway.
    """
    layout = RunLayout.of(cfg.workdir, cfg.storage.options)
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    plan = expand(stages)
    check_inputs(cfg, plan)
    from genre_ray.runtime import init_ray

    if not MUTATING & {s.rstrip("?") for s in plan}:
        init_ray(cfg.ray)
        return _run_plan(cfg, layout, run_id, plan, echo, promote)
    from genre_ray import storage

    # a missing bucket or a denied permission stops the run here, naming the URI, before anything is written
    storage.check_access(layout.root)
    from genre_ray.store import writer_lease

    with writer_lease(layout.store_dir, run_id, cfg.store.lease_timeout_s, break_lock) as lease:
        init_ray(cfg.ray)  # after the lease: a refused writer exits 3 at once, without starting a Ray node
        return _run_plan(cfg, layout, run_id, plan, echo, promote, lease)


def _run_plan(
    cfg: Config,
    layout: RunLayout,
    run_id: str,
    plan: list[str],
    echo: Callable[[str], None],
    promote: bool,
    lease: Lease | None = None,
) -> RunReport:
    """`lease`: the writer lease a mutating run holds, checked before each stage (a lost one stops the run)."""
    report = RunReport(
        run_id=run_id,
        workdir=str(layout.root),
        stages=plan,
        started_at=datetime.now(UTC).isoformat(),
        config=cfg.model_dump(mode="json"),
    )
    report.write(layout)
    runners: dict[str, Callable[[], Any]] = {
        "ingest": lambda: _ingest(cfg, layout),
        "embed": lambda: _embed(cfg, layout),
        "train": lambda: _train(cfg, layout, promote),
        # a retrain the gate served is promoted over a rollback's pin; one it held back publishes nothing new
        "publish": lambda: _publish(
            cfg, layout, run_id, promote or getattr(report.outputs.get("train"), "served", False), lease
        ),
        "evaluate": lambda: _evaluate(cfg, layout),
    }
    name = plan[0].rstrip("?") if plan else ""
    try:
        for stage in plan:
            name = stage.rstrip("?")
            if stage.endswith("?") and _has_output(name, layout):
                echo(f"[{name}] skipped: output already in {layout.root}")
                report.results[name] = {"status": "skipped"}
                continue
            if lease is not None:
                lease.check()
            echo(f"[{name}] running")
            t0 = time.perf_counter()
            result = runners[name]()
            seconds = time.perf_counter() - t0
            report.outputs[name] = result
            report.results[name] = {"status": "ok", "seconds": round(seconds, 3), "result": _jsonable(result)}
            summary = result.summary() if hasattr(result, "summary") else ""
            echo(f"[{name}] done in {seconds:.1f}s {summary}".rstrip())
            report.ledger = _ledger(report.outputs)
            report.write(layout)
        report.status = "succeeded"
    except BaseException as err:
        report.status = "failed"
        report.failed_stage = name
        report.error = "".join(traceback.format_exception_only(type(err), err)).strip()
        report.traceback = traceback.format_exc()
        _record_partial(report, name, err)
        raise
    finally:
        report.finished_at = datetime.now(UTC).isoformat()
        report.write(layout)
    return report


def _record_partial(report: RunReport, stage: str, err: BaseException) -> None:
    """A stage that refused its input (ingest: catalog unusable) still records what it counted, for diagnosis."""
    partial = getattr(err, "result", None)
    if partial is None:
        return
    report.outputs[stage] = partial
    report.results[stage] = {"status": "failed", "result": _jsonable(partial)}
    report.ledger = _ledger(report.outputs)


def _ledger(outputs: dict[str, Any]) -> dict[str, Any]:
    """Row counts across stages; `consistent` is the invariant a published run must hold."""
    out: dict[str, Any] = {}
    if (ingest := outputs.get("ingest")) is not None:
        out.update(catalog_in=ingest.rows_in, catalog_ok=ingest.rows_ok, catalog_rejected=ingest.rows_rejected)
        out["accounted"] = ingest.rows_in == ingest.rows_ok + ingest.rows_rejected
    if (embed := outputs.get("embed")) is not None:
        out.update(embedded=embed.docs_embedded, reused=embed.docs_reused, removed=embed.docs_removed)
    if (publish := outputs.get("publish")) is not None:
        out.update(published=publish.rows_total, upserted=publish.upserted, deleted=publish.deleted)
        if ingest is not None:
            out["consistent"] = publish.rows_total == ingest.rows_ok
    return out


def _served(trained: Any) -> bool:
    """Whether this run's train stage (None: none ran) produced the model to serve."""
    return trained is not None and trained.served


def _has_output(stage: str, layout: RunLayout) -> bool:
    if stage == "train":
        from genre_ray.model import META

        return (layout.model_dir / META).exists()
    return False
