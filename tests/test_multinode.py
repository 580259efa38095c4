"""A real multi-node Ray cluster on one machine: a head and two worker nodes, each its own raylet
(ray.cluster_utils.Cluster). ingest -> embed -> train -> publish runs there in a child process (a driver attaches to
one cluster per process), and the store it publishes must equal a single-node run's: same ids, vectors within
1e-5. Training draws its rows by id hash, not by block placement, so the model does not depend on the cluster shape.

The encoder is a random-initialised 1-layer BERT built here from MiniLM's tokenizer: this test is about placement
and equality, not about the encoder's FLOPs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import catalog_rows

from genre_ray.config import load_config
from genre_ray.layout import RunLayout
from genre_ray.pipeline import run_stages
from genre_ray.schema import vector_matrix
from genre_ray.store import Store

REPO = Path(__file__).resolve().parent.parent
STAGES = ["ingest", "embed", "train", "publish"]

_ON_THREE_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster

from genre_ray.runtime import set_local_node_env

set_local_node_env(1)  # one machine, as a local node: the same defaults
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
for _ in range(2):
    cluster.add_node(num_cpus=1, wait=False)  # both raylets start at once; wait_for_nodes waits for them
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
# Ray Data starts an actor pool's actors asynchronously and ends the pool once its input is done: a 160-row stage
# can finish on the first actor before the second has started. Here every pool waits for all its actors, so where
# they ran is decided by placement, not by that race.
ray.data.DataContext.get_current().wait_for_min_actors_s = 120
from genre_ray.config import config_from_dict
from genre_ray.pipeline import run_stages

try:
    report = run_stages(config_from_dict(json.loads(sys.argv[1])), sys.argv[2].split(","), echo=lambda _: None)
    print(json.dumps({"nodes": len(ray.nodes()), "status": report.status}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def _tiny_encoder(out: Path) -> Path:
    from bench.nightly import tiny_encoder

    return tiny_encoder(out)


def _overrides(tmp: Path, name: str, source: Path, encoder: Path) -> dict:
    return {
        "workdir": str(tmp / name),
        "catalog.paths": [str(source)],
        "encoder.model": str(encoder),
        "embed.num_actors": 2,
        "embed.sort_window": 16,
        "store.spectrum_actors": 2,
        "store.spectrum_batch_size": 32,
        "train.epochs": 3,
        "train.hidden_dims": [32],
        "train.spectrum_dim": 8,
        "train.num_workers": 2,
        "train.batch_size": 32,
        "train.mixup_factor": 2,
        "store.min_partition_rows": 1000,  # one table: the comparison is about rows, not partitions
    }


def _served(workdir: Path) -> dict[str, np.ndarray]:
    store = Store(RunLayout.of(workdir).store_dir)
    out: dict[str, np.ndarray] = {}
    for tbl in store.open_tables().values():
        rows = tbl.search().select(["movie_id", "vector"]).limit(None).to_arrow()
        out.update(zip(rows["movie_id"].to_pylist(), vector_matrix(rows["vector"]), strict=True))
    return out


@pytest.mark.slow
def test_three_node_cluster_spreads_work_and_publishes_the_single_node_store(ray_session, tmp_path) -> None:
    source = tmp_path / "catalog.jsonl"
    rows = catalog_rows(160)
    source.write_text(
        "".join(
            json.dumps({k: r[k] for k in ("movie_id", "title", "genres", "language", "year", "overview")}) + "\n"
            for r in rows
        )
    )
    encoder = _tiny_encoder(tmp_path / "encoder")

    multi = _overrides(tmp_path, "multi", source, encoder)
    # Placement is forced, not left to Ray's best effort: training ranks SPREAD, and every encoder and spectrum
    # actor takes a whole CPU of a 1-CPU node, so two of them cannot share one.
    multi["train.placement_strategy"] = "SPREAD"
    multi["store.spectrum_cpus"] = 1.0
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cfg_multi = load_config(None, multi)
    child = subprocess.run(
        [sys.executable, "-c", _ON_THREE_NODES, json.dumps(cfg_multi.model_dump(mode="json")), ",".join(STAGES)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == {"nodes": 3, "status": "succeeded"}

    run = json.loads(RunLayout.of(cfg_multi.workdir).run_json.read_text())
    embed_nodes = set(run["results"]["embed"]["result"]["nodes"])
    train_nodes = set(run["results"]["train"]["result"]["worker_nodes"])
    spectrum_nodes = set(run["results"]["publish"]["result"]["spectrum_nodes"])
    assert len(embed_nodes) > 1, f"encoder actors ran on one node: {embed_nodes}"
    assert len(train_nodes) == 2, f"training workers share a node: {train_nodes}"
    assert len(spectrum_nodes) == 2, f"spectrum actors ran on one node: {spectrum_nodes}"

    # The reference runs one encoder and one spectrum actor: vectors do not depend on how many actors made them
    # (windows are cut from blocks, not per actor), and two fewer process starts on the test's 2 cores.
    single_overrides = _overrides(tmp_path, "single", source, encoder)
    single_overrides.update({"embed.num_actors": 1, "store.spectrum_actors": 1})
    single = load_config(None, single_overrides)
    assert run_stages(single, STAGES, echo=lambda _: None).status == "succeeded"

    a, b = _served(Path(cfg_multi.workdir)), _served(Path(single.workdir))
    assert sorted(a) == sorted(b) and len(a) == 160
    diff = max(float(np.abs(a[m] - b[m]).max()) for m in a)
    assert diff <= 1e-5, f"multi-node and single-node vectors differ by {diff}"
