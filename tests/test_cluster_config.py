"""The deployment files are checked against what consumes them: Ray's own launcher schema, our Config, the jobs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shlex
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from genre_ray.cli import parse_overrides
from genre_ray.config import Config, ConfigError, load_config
from genre_ray.layout import RunLayout
from genre_ray.storage import ObjectPath

REPO = Path(__file__).resolve().parent.parent
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
RAY_VERSION = metadata.version("ray")


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _job_module(entrypoint: str) -> str:
    """`python -m jobs.nightly --config x` -> "jobs.nightly"."""
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], f"entrypoint must run a module: {entrypoint!r}"
    return argv[2]


def test_cluster_yaml_validates_against_rays_schema() -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    cluster = _yaml(REPO / "cluster.yaml")
    jsonschema.validate(cluster, schema)

    # The schema is permissive about cross-references; the launcher is not.
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    gpu_groups = [t for name, t in types.items() if name != cluster["head_node_type"] and t["resources"].get("GPU")]
    assert gpu_groups, "no GPU worker group"
    assert all(g["min_workers"] == 0 and g["max_workers"] >= 1 for g in gpu_groups), "GPU group must autoscale"
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_cluster_yaml_pins_the_installed_ray_and_installs_the_package() -> None:
    cluster = _yaml(REPO / "cluster.yaml")
    # A head image on another Ray version than the submitting client breaks `ray job submit`.
    assert f"ray:{RAY_VERSION}-" in cluster["docker"]["image"]
    assert "gpu" in cluster["docker"]["image"] or "cu" in cluster["docker"]["image"]
    assert "--env HF_HUB_OFFLINE=1" in cluster["docker"]["run_options"]
    remote = next(r for r, local in cluster["file_mounts"].items() if local == ".")
    assert any(f"pip install --quiet -e {remote}" in c for c in cluster["setup_commands"])


def test_a_broken_cluster_yaml_is_rejected_by_the_schema() -> None:
    # Guards the test above: the schema really is strict about what we write.
    schema = json.loads(RAY_SCHEMA.read_text())
    cluster = _yaml(REPO / "cluster.yaml")
    cluster["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, schema)


def test_cluster_config_loads_into_config() -> None:
    cfg = load_config(REPO / "configs" / "cluster.yaml")
    assert isinstance(cfg, Config)
    assert cfg.embed.use_gpu == "yes" and cfg.train.use_gpu == "yes"
    # Every node must reach the workdir: a bucket by default (the shared mount cluster.yaml and the RayJob describe
    # is the alternative), never a node-local path
    assert cfg.workdir.startswith("s3://")
    assert isinstance(RunLayout.of(cfg.workdir, cfg.storage.options).root, ObjectPath)
    for path in cfg.catalog.paths:
        if "://" not in path:
            assert (REPO / path).exists(), f"catalog path {path} is not in the uploaded working dir"


def test_set_overrides_are_typed_and_validated() -> None:
    overrides = parse_overrides(
        ["train.epochs=3", "embed.use_gpu=no", "catalog.paths=[a.csv, b.csv]", "workdir=/tmp/x"]
    )
    assert overrides == {
        "train.epochs": 3,
        "embed.use_gpu": "no",
        "catalog.paths": ["a.csv", "b.csv"],
        "workdir": "/tmp/x",
    }
    cfg = load_config(REPO / "configs" / "cluster.yaml", overrides)
    assert cfg.train.epochs == 3 and cfg.embed.use_gpu == "no" and cfg.workdir == "/tmp/x"
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(REPO / "configs" / "cluster.yaml", parse_overrides(["train.epochs=-1"]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_rayjob_manifest_runs_an_existing_job_on_the_cluster_config() -> None:
    manifest = _yaml(REPO / "deploy" / "rayjob-nightly.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]

    module = _job_module(spec["entrypoint"])
    assert module == "jobs.nightly"
    assert importlib.util.find_spec(module) is not None
    argv = shlex.split(spec["entrypoint"])
    config_path = argv[argv.index("--config") + 1]
    load_config(REPO / config_path)  # the entrypoint's config is valid

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    # env var values in a runtime env must be strings, or Ray rejects the job at submission
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    gpu = [
        g
        for g in cluster["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu and gpu[0]["minReplicas"] == 0


def test_raycronjob_schedules_the_rayjob_unchanged_and_never_overlaps() -> None:
    cron = _yaml(REPO / "deploy" / "raycronjob-nightly.yaml")
    assert cron["apiVersion"] == "ray.io/v1" and cron["kind"] == "RayCronJob"
    assert cron["spec"]["jobTemplate"] == _yaml(REPO / "deploy" / "rayjob-nightly.yaml")["spec"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    minute, hour, *rest = cron["spec"]["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"]


@pytest.mark.parametrize("name", ["embed", "train", "publish", "nightly", "evaluate"])
def test_every_job_module_parses_its_arguments(name: str) -> None:
    module = importlib.import_module(f"jobs.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0


def test_a_bad_config_fails_the_job_before_ray_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    import genre_ray.runtime
    from jobs import nightly

    def no_ray(*args, **kwargs):
        raise AssertionError("a bad config must fail before Ray starts")

    # Other tests share one Ray session, so "is Ray initialised" says nothing here: trap the call itself.
    monkeypatch.setattr(genre_ray.runtime, "init_ray", no_ray)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    assert nightly.main(["--config", str(bad)]) == 2
    assert "train.epoch: unknown key" in capsys.readouterr().err


def test_a_local_node_gets_laptop_defaults_and_a_variable_already_set_wins(monkeypatch) -> None:
    from genre_ray.runtime import FOOTER_READERS_ENV, PREEMPTION_WATCHER_ENV, TRAIN_POLL_ENV, set_local_node_env

    monkeypatch.delenv(FOOTER_READERS_ENV, raising=False)
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)
    monkeypatch.setenv(TRAIN_POLL_ENV, "3")
    set_local_node_env(8)
    assert os.environ[FOOTER_READERS_ENV] == "2"  # one footer reader per 4 CPUs
    assert os.environ[TRAIN_POLL_ENV] == "3"  # the user's value, not ours
    assert os.environ[PREEMPTION_WATCHER_ENV] == "0"  # no autoscaler drains a node this process started

    monkeypatch.delenv(TRAIN_POLL_ENV)
    set_local_node_env(1)
    assert os.environ[FOOTER_READERS_ENV] == "2"  # still the first value: setdefault, never overwritten
    assert float(os.environ[TRAIN_POLL_ENV]) < 2.0  # Ray Train's own default is 2 s
