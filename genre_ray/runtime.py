"""Connecting to Ray: a running cluster when there is one, a local single-node one otherwise."""

from __future__ import annotations

import json
import logging
import os
import sys

import ray
from ray.data import DataContext

from genre_ray.config import RayConfig

log = logging.getLogger(__name__)

# Nothing may reach a model hub at run time; workers inherit these through the runtime env.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Ray's job supervisor hands a submitted driver its job config (runtime_env included) in this variable.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def set_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def quiet_progress_in_logs() -> None:
    """Outside a terminal (CI, `ray job submit` logs) Ray Data logs every operator's progress every few seconds,
    which buries the stage summaries; keep its total-progress lines there. A terminal keeps the full bars."""
    if not sys.stdout.isatty():
        DataContext.get_current().enable_operator_progress_bars = False


def init_ray(cfg: RayConfig) -> None:
    """Idempotent: a driver that already called ray.init (a test session, a Ray job) keeps its connection."""
    set_offline_env()
    quiet_progress_in_logs()
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": _missing_job_env_vars(OFFLINE_ENV)}
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    log.info("starting a local Ray node")
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.include_dashboard,
        runtime_env=runtime_env,
        configure_logging=False,
    )


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


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))
