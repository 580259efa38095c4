"""Connecting to Ray: a running cluster when there is one, a local single-node one otherwise."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.data import DataContext
from ray.exceptions import AuthenticationError

from genre_ray.config import RayConfig
from genre_ray.errors import RayConnectError
from genre_ray.output import OUTPUT, route_ray_loggers

log = logging.getLogger(__name__)

# Nothing may reach a model hub at run time; workers inherit these through the runtime env. LANCE_LOG=error keeps
# Lance's per-write "No existing dataset ... will be created" warnings out of the output.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "LANCE_LOG": "error",
}
# Ray Data's Parquet reader reads file footers on a pool of FooterReader actors, 32 by default, started anew for
# every read; on a laptop-sized node each start costs seconds of CPU for a catalog of a few files (a 5k-movie read:
# 3.4 s with the default, 2.1 s with one). A local node gets one per 4 CPUs unless the variable is already set.
FOOTER_READERS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
# Ray Train's controller acts on its workers' state (started, reported, finished) only when it polls them, every
# 2 s by default: on the TMDB run's train stage that waiting was ~11 s of 68 (0.5 s: 56-58 s, same model). A local
# node polls every 0.5 s unless the variable is already set; a cluster keeps Ray's default. The driver hands the
# variable to the controller (Ray Train propagates it), so it must be set before fit().
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
LOCAL_TRAIN_POLL_S = "0.5"
# Ray Train starts a PreemptionWatcher actor per run to notice nodes an autoscaler drains; a node this process
# started has no autoscaler, and the actor is one more process start (~3 CPU-s) on a laptop's cores.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Ray's job supervisor hands a submitted driver its job config (runtime_env included) in this variable.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
AUTH_HINT = (
    "this Ray cluster uses token authentication (Ray >= 2.60 turns it on): set RAY_AUTH_MODE=token and, if the "
    "token is not in ~/.ray/auth_token (where `ray start --head` writes it), RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
)


def set_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def quiet_progress_in_logs() -> None:
    """One progress bar per dataset (rows done / total, rate, ETA), not one per operator: in a terminal the
    per-operator bars are noise, and outside one (CI, `ray job submit` logs) Ray Data logs every operator's
    progress every few seconds, which buries the stage summaries. --verbose keeps them all."""
    ctx = DataContext.get_current()
    ctx.enable_operator_progress_bars = OUTPUT.verbose
    # The "Execution plan / Starting execution" banners go to Ray Data's own log file either way.
    ctx.print_on_execution_start = OUTPUT.verbose and sys.stdout.isatty()


def set_local_node_env(num_cpus: int | None = None) -> None:
    """Defaults for a Ray node this process starts on its own machine (a laptop, CI, a test session), before
    ray.init; a variable already set wins."""
    os.environ.setdefault(FOOTER_READERS_ENV, str(max(1, (num_cpus or os.cpu_count() or 1) // 4)))
    os.environ.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")


def init_ray(cfg: RayConfig) -> None:
    """Idempotent: a driver that already called ray.init (a test session, a Ray job) keeps its connection."""
    set_offline_env()
    quiet_progress_in_logs()
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": _missing_job_env_vars(OFFLINE_ENV)}
    # Worker stdout/stderr (Ray Train's stale dataset progress line, PlacementGroupCleaner warnings, Lance and
    # transformers output in actors) stays in Ray's session logs unless --verbose; failures still raise here.
    log_to_driver = OUTPUT.verbose
    route_ray_loggers()  # before too: ray.init itself logs through the handlers `import ray` installed
    try:
        if address:
            log.info("connecting to Ray cluster at %s", address)
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=log_to_driver)
        else:
            log.info("starting a local Ray node")
            set_local_node_env(cfg.num_cpus)
            ray.init(
                address="local",
                num_cpus=cfg.num_cpus,
                include_dashboard=cfg.include_dashboard,
                runtime_env=runtime_env,
                configure_logging=False,
                log_to_driver=log_to_driver,
            )
    except AuthenticationError as err:
        raise RayConnectError(f"cannot connect to Ray at {address or 'a local node'}: {AUTH_HINT}") from err
    route_ray_loggers()


def _missing_job_env_vars(wanted: dict[str, str]) -> dict[str, str]:
    """The variables a submitted job's runtime_env does not already set.

    Under `ray job submit` (or a KubeRay RayJob) ray.init refuses a runtime_env that sets an env var the job's own
    runtime_env also sets. The job's value wins: it is what the platform team asked for.
    """
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return dict(wanted)
    job_env = (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}
    return {k: v for k, v in wanted.items() if k not in job_env}


def in_workers(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], **options: Any) -> list[Any]:
    """fn(*args) for each args in `calls`, as Ray tasks running side by side; their results in order.

    Work that reads or rewrites a whole dataset (plans, merges, Lance compaction and index builds) runs next to the
    data in a worker, not in the driver, whose memory must stay flat at any catalog size. Workers are pooled, not
    fresh per task (max_calls=1): a fresh process re-imports torch and Lance for every table, seconds each on a
    small node. A failing task raises its own exception (StoreError, a missing file), not Ray's wrapper.
    """
    task = ray.remote(**{"max_retries": 1, **options})(fn)
    return worker_result([task.remote(*args) for args in calls])


def worker_result(refs: Any) -> Any:
    """ray.get, raising a failed task's own exception (StoreError, a missing file) instead of Ray's wrapper around
    the remote traceback."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        raise (e.cause or e) from None


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


@ray.remote(num_cpus=0)
class NodeLog:
    """Where a stage's actors ran: each actor adds its Ray node id once, and run.json records the set."""

    def __init__(self) -> None:
        self.nodes: set[str] = set()

    def add(self, node: str) -> None:
        self.nodes.add(node)

    def get(self) -> list[str]:
        return sorted(self.nodes)
