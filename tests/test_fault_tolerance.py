"""Faults injected for real into the stages the nightly job runs, each checked for "nothing lost, nothing doubled".

1. embed: an encoder actor process dies mid-run (os._exit in its second window) -> Ray Data restarts the actor and
   retries the window; every movie is embedded exactly once.
2. train: a Ray Train worker process is SIGKILLed after the first checkpoint -> the worker group restarts and
   resumes from the latest checkpoint (the epochs before it are not re-run) and finishes every epoch once.
   (tests/test_train.py covers an exception raised inside the loop; this one kills the process.)
3. publish: the publish job process is SIGKILLed after it wrote every table but before it switched the manifest
   -> readers keep the previous version; the next run restores the half-written tables and completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import torch
from factories import GENRES, catalog_table, clustered_embeddings, write_catalog

import genre_ray.embed.actors as embed_actors
from genre_ray.config import Config
from genre_ray.embed import embed_catalog, embeddings_uri, read_embeddings
from genre_ray.layout import RunLayout
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
from genre_ray.schema import vector_matrix
from genre_ray.store import Store, publish
from genre_ray.train import load_training_table, train_on_table

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------- process helpers


def _ppid(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces, so split after the last ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def my_processes(token: str) -> list[int]:
    """Live descendants of this process whose command line (Ray's proctitle) contains `token`.

    Only descendants: other sessions run their own Ray nodes on this machine, and their workers must never be hit.
    """
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if token not in cmdline:
                continue
            parent = pid
            while parent > 1 and parent != me:
                parent = _ppid(parent)
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if parent == me:
            found.append(pid)
    return found


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# ----------------------------------------------------------------------------------------------- 1. embed


def test_killed_embedding_actor_is_restarted_and_every_row_embedded_once(ray_session, tmp_path, monkeypatch) -> None:
    n = 48
    layout = RunLayout.of(tmp_path)
    catalog = catalog_table(n)
    write_catalog(catalog, layout.movies)
    # 16-doc windows: 3 map tasks, so the actor dies with work behind it and work ahead of it.
    cfg = Config.model_validate(
        {"workdir": str(tmp_path), "embed": {"batch_size": 16, "sort_window": 16, "use_gpu": "no"}}
    )
    marker = tmp_path / "actor-died"

    original = embed_actors.EmbedBatch

    # Defined in the test (pickled by value into the actor). The process exits in its second window, once: the
    # marker survives the restart, so the replacement actor runs normally.
    class DiesInSecondWindow(original):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.windows = 0

        def __call__(self, batch: pa.Table) -> pa.Table:
            self.windows += 1
            if self.windows == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # a hard crash: no exception, no cleanup, like an OOM kill
            return super().__call__(batch)

    monkeypatch.setattr(embed_actors, "EmbedBatch", DiesInSecondWindow)
    stats = embed_catalog(cfg, layout)

    assert marker.exists(), "the injected actor crash never happened"
    dead_pid = int(marker.read_text())
    assert dead_pid not in my_processes("ray::"), "the crashed actor process is still alive"
    table = read_embeddings(layout)
    ids = table["movie_id"].to_pylist()
    assert len(ids) == n, f"{len(ids)} rows for {n} movies"
    assert len(set(ids)) == n, "a movie was embedded twice"
    assert set(ids) == set(catalog["movie_id"].to_pylist())
    assert stats.docs_embedded == n
    vectors = vector_matrix(table["embedding"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # real (normalised) vectors
    # the window that was in flight when the actor died was recomputed correctly, not filled with garbage
    hashes = dict(zip(catalog["movie_id"].to_pylist(), catalog["content_hash"].to_pylist(), strict=True))
    assert all(hashes[m] == h for m, h in zip(ids, table["content_hash"].to_pylist(), strict=True))


# ----------------------------------------------------------------------------------------------- 2. train

DIM = 16
EPOCHS = 6


def _committed_progress(checkpoints: Path) -> dict | None:
    """Training progress in the latest checkpoint Ray Train has *committed* (None before the first).

    A checkpoint directory appears on storage before every worker has reported it; only the controller's snapshot
    (checkpoint_manager_snapshot.json) says which checkpoint a restarted worker group will resume from.
    """
    for snapshot in checkpoints.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
            if latest:
                return json.loads((snapshot.parent / latest["checkpoint_dir_name"] / "progress.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being rewritten
    return None


def test_killed_train_worker_resumes_from_last_checkpoint(ray_session, tmp_path) -> None:
    layout = RunLayout.of(tmp_path)
    catalog = catalog_table(240)
    write_catalog(catalog, layout.movies)
    cfg = Config.model_validate(
        {
            "workdir": str(tmp_path),
            "train": {
                "hidden_dims": [32],
                "spectrum_dim": 8,
                "epochs": EPOCHS,
                "batch_size": 32,
                "mixup_factor": 2,
                "patience": EPOCHS,
                "num_workers": 2,
                "cpus_per_worker": 0.5,
                "max_failures": 2,
            },
        }
    )
    killed: dict[str, object] = {}

    def kill_a_worker_after_first_commit() -> None:
        try:
            snapshot = wait_for(
                lambda: _committed_progress(layout.checkpoints_dir), 300, "the first committed checkpoint"
            )
            workers = wait_for(lambda: my_processes("RayTrainWorker"), 10, "a Train worker process")
            killed["snapshot"] = snapshot
            killed["pid"] = workers[0]
            os.kill(workers[0], signal.SIGKILL)
        except Exception as err:  # surfaced by the assertions below
            killed["error"] = err

    killer = threading.Thread(target=kill_a_worker_after_first_commit, daemon=True)
    killer.start()
    result = train_on_table(cfg, layout, load_training_table(layout, clustered_embeddings(catalog)))
    killer.join(timeout=5)

    assert "error" not in killed, killed.get("error")
    assert "pid" in killed, "no worker was killed"
    snapshot = killed["snapshot"]
    done_before_kill = snapshot["epoch"]
    assert done_before_kill < EPOCHS - 1, "training had finished before the kill: not a mid-run fault"
    # Every epoch exactly once, in order: nothing lost, nothing re-run twice into the history.
    assert [h["epoch"] for h in result.history] == list(range(EPOCHS))
    assert result.epochs_run == EPOCHS
    # Resumed, not restarted: the epochs in the checkpoint come back bit-for-bit (a rerun would re-time them).
    before = [h["train_seconds"] for h in snapshot["history"]]
    assert [h["train_seconds"] for h in result.history[: len(before)]] == before
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


# ----------------------------------------------------------------------------------------------- 3. publish


def _save_model(layout: RunLayout, seed: int) -> str:
    """An untrained classifier is enough here: publish only needs a model version and a forward pass."""
    torch.manual_seed(seed)
    spec = ClassifierSpec(input_dim=DIM, num_genres=len(GENRES), hidden_dims=[16], spectrum_dim=8, dropout=0.0)
    return save_classifier(GenreClassifier(spec), spec, sorted(GENRES), layout.model_dir)


def _published(store_dir: Path) -> tuple[str, set[str], int]:
    """(model_version, movie ids, row count) as a fresh reader sees them."""
    store = Store(store_dir)
    manifest = store.require_manifest()
    ids: list[str] = []
    for tbl in store.open_tables().values():
        ids += tbl.search().select(["movie_id"]).limit(None).to_arrow()["movie_id"].to_pylist()
    return manifest["model_version"], set(ids), len(ids)


# Runs the real publish job entry point, with the manifest switch replaced by a SIGKILL of the job's own process:
# the worst moment to die, every table written and nothing published.
_KILLED_BEFORE_SWITCH = """
import os, signal, sys
import genre_ray.store.writer
genre_ray.store.writer._commit = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from jobs.publish import main
sys.exit(main(sys.argv[1:]))
"""


def test_publish_killed_before_switch_keeps_readers_on_previous_version(ray_session, tmp_path) -> None:
    n = 120
    layout = RunLayout.of(tmp_path)
    catalog = catalog_table(n)
    write_catalog(catalog, layout.movies)
    lance.write_dataset(clustered_embeddings(catalog), str(embeddings_uri(layout)))
    # two language tables (en, fr) and no catch-all: the interrupted run has more than one table to leave behind
    overrides = {"store": {"min_partition_rows": 10, "spectrum_actors": 1}}
    cfg = Config.model_validate({"workdir": str(tmp_path), **overrides})

    v1 = _save_model(layout, seed=1)
    publish(cfg, layout, run_id="night-1")
    assert _published(layout.store_dir) == (v1, set(catalog["movie_id"].to_pylist()), n)
    tables_v1 = Store(layout.store_dir).require_manifest()["tables"]

    # A retrained model: the next publish rewrites every table. The job process dies before the switch.
    v2 = _save_model(layout, seed=2)
    assert v2 != v1
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not ours
    argv = ["--workdir", str(tmp_path), "--set", "store.min_partition_rows=10", "--set", "store.spectrum_actors=1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BEFORE_SWITCH, *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the job and the Ray node it starts form their own process group, reaped below
    )
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        _reap_group(proc.pid)
    assert proc.returncode == -signal.SIGKILL, f"job was not killed (rc={proc.returncode}):\n{output[-3000:]}"

    # The job wrote new versions of the tables...
    store = Store(layout.store_dir)
    assert any(store.db.open_table(t).version > info["version"] for t, info in tables_v1.items()), (
        "the killed run wrote nothing: the fault came too early to test anything"
    )
    # ...but readers still get the previous publish, whole.
    assert _published(layout.store_dir) == (v1, set(catalog["movie_id"].to_pylist()), n)

    # The next run restores the half-written tables and completes: the new model, every movie once.
    result = publish(cfg, layout, run_id="night-2")
    assert result.full_rebuild and result.model_version == v2
    version, ids, count = _published(layout.store_dir)
    assert (version, ids, count) == (v2, set(catalog["movie_id"].to_pylist()), n)
    assert [m["run_id"] for m in Store(layout.store_dir).history()] == ["night-1", "night-2"]


def _reap_group(pgid: int) -> None:
    """Kill what is left of the process group we started (its Ray node); never anything else."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
