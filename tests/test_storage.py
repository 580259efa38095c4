"""The storage layer on a real S3-compatible server (moto, loopback) and on local disk: the primitives the publish
switch and the writer lease rest on, errors that name the URI, and credentials that never reach an artifact.

No Ray here: these run in seconds. tests/test_object_store_run.py runs the pipeline itself on the bucket.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from s3_server import ACCESS_KEY, SECRET_KEY, no_aws_env, s3_server  # noqa: F401  (fixtures)

from genre_ray import storage
from genre_ray.catalog.sources import expand_paths, read_records
from genre_ray.config import load_config
from genre_ray.layout import RunLayout, atomic_write_text
from genre_ray.pipeline import run_stages
from genre_ray.storage import ObjectPath, StorageError, inputs
from genre_ray.store import LeaseError, Store, StoreError
from genre_ray.store import manifest as manifests
from genre_ray.store.lease import acquire, read_lease, release, writer_lease


@pytest.fixture
def bucket_root(s3_server, no_aws_env) -> ObjectPath:  # noqa: F811
    root = storage.location(f"s3://{s3_server.new_bucket()}/runs/a", s3_server.options)
    assert isinstance(root, ObjectPath)
    return root


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, s3_server, no_aws_env):  # noqa: F811
    """The same test on a local directory and under a bucket prefix."""
    if request.param == "local":
        return tmp_path
    return storage.location(f"s3://{s3_server.new_bucket()}/runs/a", s3_server.options)


def race(n: int, attempt: Callable[[int], object]) -> list[object]:
    """`attempt(i)` in n threads released together; each result (or the exception it raised)."""
    start = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = attempt(i)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_put_if_absent_has_exactly_one_winner_and_a_whole_object(root):
    target = root / "switch" / "000001.json"
    results = race(8, lambda i: storage.put_if_absent(target, json.dumps({"writer": i, "pad": "x" * 4096}).encode()))
    winners = [i for i, won in enumerate(results) if won is True]
    assert len(winners) == 1 and all(r in (True, False) for r in results)
    assert json.loads(target.read_text())["writer"] == winners[0]
    assert storage.put_if_absent(target, b"late") is False


def test_atomic_write_killed_mid_way_leaves_the_previous_content(root):
    path = root / "run.json"
    atomic_write_text(path, '{"v": 1}')

    def dies_half_way(tmp: Path) -> None:
        tmp.write_text('{"v": 2, "tru')
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        storage.atomic_write(path, dies_half_way)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in root.glob("*")] == ["run.json"]  # no temp file left behind


def test_lease_one_writer_at_a_time(root):
    store = root / "store"
    holders = race(6, lambda i: acquire(store, f"night-{i}", timeout_s=3600))
    won = [h for h in holders if isinstance(h, dict)]
    assert len(won) == 1 and all(isinstance(h, LeaseError) for h in holders if h is not won[0])
    assert f"store is being written by run {won[0]['run_id']}" in str(next(h for h in holders if h is not won[0]))
    assert read_lease(store)["run_id"] == won[0]["run_id"]
    release(store, won[0])
    assert read_lease(store) is None
    with writer_lease(store, "next", timeout_s=3600):
        with pytest.raises(LeaseError, match="run next"):
            acquire(store, "other", timeout_s=3600)
        # a live lease is only broken on request
        broken = acquire(store, "rescue", timeout_s=3600, break_lock=True)
        assert read_lease(store)["run_id"] == "rescue"
    # the broken writer's release (leaving the context) did not free the rescuer's lease
    assert read_lease(store)["run_id"] == "rescue"
    release(store, broken)


def test_stale_lease_is_taken_over(root):
    store = root / "store"
    acquire(store, "crashed", timeout_s=3600)  # never released: its writer died
    with pytest.raises(LeaseError, match="run crashed"):
        acquire(store, "night", timeout_s=3600)
    # this process is alive, so only age makes it stale: a negative timeout makes any lease stale
    assert acquire(store, "night", timeout_s=-1)["run_id"] == "night"


def test_publish_switch_lost_race_is_refused_and_readers_take_the_winner(root):
    store = root / "store"
    manifests.record(store, {"run_id": "base", "tables": {}})
    # The worst interleaving: a writer reads the store, a rival publishes, then the writer switches
    started_from = manifests.read_manifest(store)
    manifests.record(store, {"run_id": "rival", "tables": {}})
    with pytest.raises(StoreError, match="another writer switched the store at the same moment"):
        manifests.record(store, {"run_id": "late", "tables": {}}, based_on=started_from)
    assert Store(store).manifest()["run_id"] == "rival"
    # the loser left no history record: rollback only reaches publishes that were served
    assert [m["run_id"] for m in Store(store).history()] == ["base", "rival"]


def test_concurrent_publishes_never_share_a_switch_number(root):
    store = root / "store"
    results = race(5, lambda i: manifests.record(store, {"run_id": f"racer-{i}", "tables": {}}))
    won = [r for r in results if isinstance(r, dict)]
    lost = [r for r in results if not isinstance(r, dict)]
    assert won and all(isinstance(r, StoreError) and "another writer" in str(r) for r in lost), results
    assert len({m["seq"] for m in won}) == len(won)  # no two served publishes with one number
    assert Store(store).manifest()["run_id"] == max(won, key=lambda m: m["seq"])["run_id"]
    assert len(manifests.switches(store)) == len(won) == len(Store(store).history())


def test_switch_records_are_pruned_and_rollback_is_a_switch(root):
    store = root / "store"
    for i in range(12):
        manifests.record(store, {"run_id": f"r{i}", "tables": {}})
    assert len(manifests.switches(store)) == manifests.KEEP_SWITCHES
    target = Store(store).rollback("r3")
    assert target["run_id"] == "r3" and Store(store).manifest()["run_id"] == "r3"
    assert Store(store).manifest()["pinned"] is True and Store(store).manifest()["last_seq"] == 11


def test_missing_bucket_stops_a_run_naming_the_uri(s3_server, no_aws_env):  # noqa: F811
    uri = "s3://no-such-bucket-genre/nightly"
    cfg = load_config(None, {"workdir": uri, "storage.options": s3_server.options})
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-genre/nightly: bucket 'no-such-bucket-genre' does"):
        run_stages(cfg, ["ingest"], echo=lambda _: None)
    with pytest.raises(StoreError, match=r"no published store at s3://no-such-bucket-genre/nightly/store"):
        Store(RunLayout.of(uri, s3_server.options).store_dir).require_manifest()


def test_unreachable_endpoint_stops_a_run_naming_the_uri(no_aws_env):  # noqa: F811
    options = {"aws_endpoint": "http://127.0.0.1:9", "aws_access_key_id": "x", "aws_secret_access_key": "y"}
    cfg = load_config(None, {"workdir": "s3://genre-bucket/run", "storage.options": options})
    with pytest.raises(StorageError, match=r"^s3://genre-bucket/run: "):
        run_stages(cfg, ["ingest"], echo=lambda _: None)


def test_credentials_in_the_config_are_redacted_wherever_it_is_written(s3_server):  # noqa: F811
    cfg = load_config(None, {"workdir": "s3://b/p", "storage.options": s3_server.options})
    dumped = json.dumps(cfg.model_dump(mode="json"))
    assert SECRET_KEY not in dumped and ACCESS_KEY not in dumped
    assert json.loads(dumped)["storage"]["options"]["aws_endpoint"] == s3_server.endpoint
    # ... while the live object still carries them to the clients
    assert cfg.storage.options["aws_secret_access_key"] == SECRET_KEY


def test_catalog_paths_may_be_object_store_globs_and_prefixes(bucket_root):
    (bucket_root / "catalog" / "b.csv").write_text("id,title\n2,Beta\n")
    (bucket_root / "catalog" / "a.csv").write_text("id,title\n1,Alpha\n")
    (bucket_root / "catalog" / "_SUCCESS").write_text("")
    inputs.use_options(dict(bucket_root.backend.options))
    glob = f"{bucket_root}/catalog/*.csv"
    files, warnings = expand_paths([glob])
    assert [f.path for f in files] == [f"{bucket_root}/catalog/a.csv", f"{bucket_root}/catalog/b.csv"] and not warnings
    header, records = read_records(files[1])
    assert header == ["id", "title"] and [r.values for r in records] == [{"id": "2", "title": "Beta"}]
    files, _ = expand_paths([f"{bucket_root}/catalog"])
    assert [f.path.rsplit("/", 1)[1] for f in files] == ["a.csv", "b.csv"]
