"""The store as a long-lived system: the writer lease, crash-safe model export, retention and compaction."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lancedb
import pyarrow.compute as pc
import pytest
import torch
from factories import catalog_table
from test_store import edit_overview, embeddings_for, make_run, rewrite_catalog

from genre_ray.model import (
    META,
    ClassifierSpec,
    GenreClassifier,
    ModelError,
    load_classifier,
    read_meta,
    save_classifier,
)
from genre_ray.storage import put_if_absent
from genre_ray.store import LeaseError, Store, StoreError, publish
from genre_ray.store.lease import LEASE_DIR, acquire, read_lease, release, writer_lease
from genre_ray.store.maintenance import format_status, status

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------- writer lease


def test_second_writer_fails_at_once_with_the_holder_named(tmp_path):
    with writer_lease(tmp_path, "night-1", timeout_s=3600) as holder:
        assert read_lease(tmp_path)["run_id"] == "night-1"
        with pytest.raises(LeaseError, match=r"store is being written by run night-1 on .* since .*--break-lock"):
            acquire(tmp_path, "night-2", timeout_s=3600)
        assert holder.holder["pid"] == os.getpid()
    # released in `finally`: the next writer gets it
    assert read_lease(tmp_path) is None
    release(tmp_path, acquire(tmp_path, "night-3", timeout_s=3600))


def test_lease_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), writer_lease(tmp_path, "r1", timeout_s=3600):
        raise RuntimeError("boom")
    assert read_lease(tmp_path) is None


def _plant(store_dir: Path, **fields: object) -> None:
    """A lease record as another writer would have left it: the next number, created like acquire does."""
    holder = {"run_id": "old", "host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()} | fields
    numbers = sorted(int(f.stem) for f in (store_dir / LEASE_DIR).glob("*.json"))
    n = numbers[-1] + 1 if numbers else 0
    assert put_if_absent(store_dir / LEASE_DIR / f"{n:012d}.json", json.dumps(holder).encode())


def _now(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat(timespec="seconds")


def test_stale_leases_are_taken_over_and_live_ones_only_broken_on_request(tmp_path):
    _plant(tmp_path, started_at=_now(-7200))  # older than the timeout
    release(tmp_path, acquire(tmp_path, "r2", timeout_s=3600))

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _plant(tmp_path, pid=int(dead.stdout))  # fresh, but its process on this host is gone
    assert acquire(tmp_path, "r3", timeout_s=3600)["run_id"] == "r3"

    _plant(tmp_path, host="other-host")  # fresh and elsewhere: cannot be judged dead
    with pytest.raises(LeaseError, match="run old on other-host"):
        acquire(tmp_path, "r4", timeout_s=3600)
    assert acquire(tmp_path, "r4", timeout_s=3600, break_lock=True)["run_id"] == "r4"
    # a writer whose lease was broken does not remove the new holder's lease
    release(tmp_path, {"run_id": "old", "pid": os.getpid()})
    assert read_lease(tmp_path)["run_id"] == "r4"


# ----------------------------------------------------------------------------------------------- model export


def _model(seed: int) -> tuple[GenreClassifier, ClassifierSpec]:
    torch.manual_seed(seed)
    spec = ClassifierSpec(input_dim=8, num_genres=3, hidden_dims=[8], spectrum_dim=4)
    return GenreClassifier(spec), spec


_KILLED_BETWEEN_FILES = """
import os, signal, sys, torch
import genre_ray.model as m
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
real = m.atomic_write_text
def die(path, text):
    if path.name == m.META:
        os.kill(os.getpid(), signal.SIGKILL)  # the new weights are on disk, model.json not yet
    real(path, text)
m.atomic_write_text = die
torch.manual_seed(2)
spec = ClassifierSpec(input_dim=8, num_genres=3, hidden_dims=[8], spectrum_dim=4)
save_classifier(GenreClassifier(spec), spec, ["a", "b", "c"], sys.argv[1])
"""


def test_process_killed_between_model_files_leaves_a_loadable_model(tmp_path):
    model, spec = _model(1)
    v1 = save_classifier(model, spec, ["a", "b", "c"], tmp_path, split={"seed": 0, "val_fraction": 0.2})
    proc = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_FILES, str(tmp_path)], cwd=REPO, env=os.environ)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 2, "the kill came before the new weights were written"
    # model.json still names the old weights, whose hash matches: the old model, whole
    loaded = load_classifier(tmp_path)
    assert loaded.model_version == v1 and loaded.split == {"seed": 0, "val_fraction": 0.2}

    # the next export completes and removes the orphaned weights
    model3, spec3 = _model(3)
    v3 = save_classifier(model3, spec3, ["a", "b", "c"], tmp_path)
    assert load_classifier(tmp_path).model_version == v3 != v1
    assert [p.name for p in tmp_path.glob("model-*.safetensors")] == [f"model-{v3}.safetensors"]


def test_weights_that_do_not_match_model_json_are_rejected(tmp_path):
    model, spec = _model(1)
    save_classifier(model, spec, ["a", "b", "c"], tmp_path)
    weights = tmp_path / read_meta(tmp_path)["weights"]
    other, _ = _model(2)
    other_dir = tmp_path / "other"
    save_classifier(other, spec, ["a", "b", "c"], other_dir)
    weights.write_bytes((other_dir / read_meta(other_dir)["weights"]).read_bytes())
    with pytest.raises(ModelError, match=r"sha256 does not match .*model.json"):
        load_classifier(tmp_path)
    (tmp_path / META).write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_classifier(tmp_path)


# ----------------------------------------------------------------------------------------------- retention


def _counts(store_dir: Path) -> dict[str, tuple[int, int]]:
    """table -> (Lance versions on disk, fragments of the latest version)."""
    db = lancedb.connect(str(store_dir))
    out = {}
    for name in db.list_tables().tables:
        ds = db.open_table(name).to_lance()
        out[name] = (len(ds.versions()), len(ds.get_fragments()))
    return out


def test_twenty_nightlies_stay_bounded_and_every_kept_publish_rolls_back(ray_session, tmp_path):
    keep = 5
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path, catalog, keep_publishes=keep)
    publish(cfg, layout, run_id="n00", embeddings=embeddings_for(catalog))
    ids = catalog["movie_id"].to_pylist()
    night = catalog
    for i in range(1, 20):
        night = edit_overview(night, {ids[i], ids[(i * 7) % len(ids)]})
        rewrite_catalog(layout, night)
        result = publish(cfg, layout, run_id=f"n{i:02d}", embeddings=embeddings_for(night))
        assert result.published and result.upserted == 2

    store = Store(layout.store_dir)
    history = store.history()
    assert [m["run_id"] for m in history] == [f"n{i:02d}" for i in range(15, 20)]
    for name, (versions, fragments) in _counts(layout.store_dir).items():
        # kept publishes' versions (<= keep) + the latest; compaction keeps fragments to a handful
        assert versions <= keep + 1, (name, versions)
        assert fragments <= 2, (name, fragments)

    # every kept publish is still whole; older ones are refused with a clear message
    for m in reversed(history[:-1]):
        target = store.rollback(m["run_id"])
        assert Store(layout.store_dir).count() == 40 and target["run_id"] == m["run_id"]
    with pytest.raises(StoreError, match=r"no kept publish with run id 'n10' .*keep_publishes"):
        store.rollback("n10")
    text = format_status(status(store))
    assert "movies_en" in text and "#19" in text and "pinned by rollback" in text


def test_sequence_numbers_come_from_the_manifest_not_the_history_files(ray_session, tmp_path):
    catalog = catalog_table(20)
    cfg, layout = make_run(tmp_path, catalog, keep_publishes=1)
    publish(cfg, layout, run_id="a", embeddings=embeddings_for(catalog))
    night = edit_overview(catalog, {"1001"})
    rewrite_catalog(layout, night)
    publish(cfg, layout, run_id="b", embeddings=embeddings_for(night))
    # keep_publishes=1 left one history file; a glob count would hand out seq 1 again
    night = edit_overview(night, {"1002"})
    rewrite_catalog(layout, night)
    publish(cfg, layout, run_id="c", embeddings=embeddings_for(night))
    assert [(m["run_id"], m["seq"]) for m in Store(layout.store_dir).history()] == [("c", 2)]


def test_served_tables_mark_movie_id_as_primary_key(ray_session, tmp_path):
    catalog = catalog_table(20)
    cfg, layout = make_run(tmp_path, catalog)
    publish(cfg, layout, run_id="a", embeddings=embeddings_for(catalog))
    for tbl in Store(layout.store_dir).open_tables().values():
        meta = tbl.schema.field("movie_id").metadata or {}
        assert meta.get(b"lance-schema:unenforced-primary-key") == b"true"
        assert pc.count_distinct(tbl.to_arrow()["movie_id"]).as_py() == tbl.count_rows()
