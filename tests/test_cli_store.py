"""The writer's guarantees through the real command line: separate `python -m genre_ray.cli` processes on one store.

Slow by nature (every process starts its own Ray node, embeds with MiniLM and trains), so the catalog is tiny and
one base run is shared: each test works on its own copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import catalog_rows

from genre_ray.model import read_meta
from genre_ray.store import Store
from genre_ray.store.lease import read_lease

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("movie_id", "title", "genres", "language", "year", "overview", "votes", "popularity")
SETTINGS = [
    "train.epochs=2",
    "train.mixup_factor=1",
    "train.num_workers=1",
    "train.patience=0",
    "encoder.max_length=32",
    "embed.num_actors=1",
    "store.min_partition_rows=10",
    "store.spectrum_actors=1",
    "ray.num_cpus=2",
]


def write_catalog_file(path: Path, n: int) -> list[str]:
    rows = [{k: r[k] for k in FIELDS} for r in catalog_rows(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return [r["movie_id"] for r in rows]


def cli(workdir: Path, *args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    sets = [a for s in [*SETTINGS, f"catalog.paths=[{workdir / 'movies.jsonl'}]"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "genre_ray.cli", *args, "--workdir", str(workdir), *sets]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def served_ids(workdir: Path) -> list[str]:
    return sorted(Store(workdir / "store").scan(["movie_id"])["movie_id"].to_pylist())


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    write_catalog_file(root / "movies.jsonl", 48)
    proc = cli(root, "run", "--no-sample")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def copy_of(base: Path, dst: Path) -> Path:
    shutil.copytree(base, dst / "w")
    return dst / "w"


def test_retrain_trains_and_a_rollback_sticks_through_the_next_nightly(base_run, tmp_path):
    work = copy_of(base_run, tmp_path)
    v1 = Store(work / "store").require_manifest()["model_version"]

    retrained = cli(work, "nightly", "--retrain", "--set", "seed=7")
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    v2 = Store(work / "store").require_manifest()["model_version"]
    assert v2 != v1 and read_meta(work / "model")["model_version"] == v2

    rolled = cli(work, "rollback")
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert "pinned" in rolled.stdout and read_meta(work / "model")["model_version"] == v1

    # a catalog change, so the nightly really publishes: with the rolled-back model, incrementally
    ids = write_catalog_file(work / "movies.jsonl", 52)
    nightly = cli(work, "nightly")
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    manifest = Store(work / "store").require_manifest()
    assert manifest["model_version"] == v1 and manifest["pinned"]
    publish = json.loads((work / "run.json").read_text())["results"]["publish"]["result"]
    assert publish["upserted"] == 4 and not publish["full_rebuild"]
    assert served_ids(work) == sorted(ids)


def test_two_nightlies_at_once_one_publishes_the_other_gets_the_lease_message(base_run, tmp_path):
    work = copy_of(base_run, tmp_path)
    ids = write_catalog_file(work / "movies.jsonl", 56)
    procs = [cli(work, "nightly", wait=False) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], "\n----\n".join(o[-2000:] for o in outputs)
    loser = outputs[[p.returncode for p in procs].index(3)]
    assert "store is being written by run" in loser and "retry later or use --break-lock" in loser
    assert served_ids(work) == sorted(ids)  # every movie exactly once
    history = Store(work / "store").history()
    assert [m["seq"] for m in history] == [0, 1]
    assert read_lease(work / "store") is None
