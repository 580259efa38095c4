"""The whole life of a store with its workdir and its catalog in a bucket of a real S3-compatible server (moto on
loopback), against the same commands on a local workdir: run -> similar -> nightly (1% changed; its first attempt
killed before the switch) -> rollback. Same ids, vectors within 1e-5, same manifests; no credential anywhere.

The settings reach the run through `storage.options` only (the AWS environment is cleared), so every Ray task,
actor and Train worker must get them from the config, as on a cluster whose nodes have no credentials of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import catalog_rows
from s3_server import ACCESS_KEY, SECRET_KEY, no_aws_env, s3_server  # noqa: F401  (fixtures)

from genre_ray import storage, store
from genre_ray.cli import main
from genre_ray.config import load_config
from genre_ray.layout import RunLayout
from genre_ray.pipeline import run_stages
from genre_ray.store import Store

pytestmark = pytest.mark.slow

FIELDS = ("movie_id", "title", "genres", "language", "year", "overview", "votes", "popularity")
SETTINGS = {
    "train.epochs": 1,
    "train.mixup_factor": 1,
    "train.num_workers": 1,
    "train.patience": 0,
    "encoder.max_length": 32,
    "embed.num_actors": 1,
    "store.min_partition_rows": 10,
    "store.spectrum_actors": 1,
}
N = 100
# fields that differ between two runs of the same commands: who and when
VOLATILE = ("run_id", "published_at")


def catalog_jsonl(changed: set[str] = frozenset()) -> bytes:
    rows = [{k: r[k] for k in FIELDS} for r in catalog_rows(N)]
    for r in rows:
        if r["movie_id"] in changed:
            r["overview"] += " Now in a director's cut."
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Run:
    """One workdir driven through the CLI, as an operator would (in this process, on the test session's Ray)."""

    def __init__(self, workdir: str, catalog: str, options: dict[str, str] | None = None):
        self.workdir = workdir
        self.sets = {**SETTINGS, "catalog.paths": [catalog]}
        if options:
            self.sets["storage.options"] = options
        self.layout = RunLayout.of(workdir, options)

    def cli(self, capsys: pytest.CaptureFixture, *args: str) -> str:
        sets = [a for k, v in self.sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        code = main([*args, "--workdir", self.workdir, *sets])
        out = capsys.readouterr()
        assert code == 0, out.err[-3000:] + out.out[-3000:]
        return out.out

    def config(self):
        return load_config(None, {"workdir": self.workdir, **self.sets})

    def store(self) -> Store:
        return Store(self.layout.store_dir)

    def served(self) -> dict[str, np.ndarray]:
        rows = self.store().scan(["movie_id", "vector"])
        return dict(zip(rows["movie_id"].to_pylist(), np.asarray(rows["vector"].to_pylist()), strict=True))

    def manifest(self) -> dict:
        return {k: v for k, v in self.store().require_manifest().items() if k not in VOLATILE}


def assert_same_state(local: Run, remote: Run) -> None:
    a, b = local.served(), remote.served()
    assert sorted(a) == sorted(b) and len(a) == N
    np.testing.assert_allclose(np.stack([a[k] for k in sorted(a)]), np.stack([b[k] for k in sorted(a)]), atol=1e-5)
    assert local.manifest() == remote.manifest()


def similar_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:3].strip().isdigit()]


def test_object_store_run_matches_a_local_run(ray_session, s3_server, no_aws_env, tmp_path, capsys, monkeypatch):  # noqa: F811
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    local_catalog = tmp_path / "catalog" / "movies.jsonl"
    local_catalog.parent.mkdir()

    def write_catalogs(data: bytes) -> None:
        local_catalog.write_bytes(data)
        s3.put_object(Bucket=bucket, Key="catalog/movies.jsonl", Body=data)

    local = Run(str(tmp_path / "local"), str(local_catalog))
    remote = Run(f"s3://{bucket}/genre/nightly", f"s3://{bucket}/catalog/*.jsonl", s3_server.options)

    # night 1: ingest -> embed -> train -> publish, then a query
    write_catalogs(catalog_jsonl())
    for run in (local, remote):
        run.cli(capsys, "run", "--no-sample")
    assert_same_state(local, remote)
    assert remote.manifest()["seq"] == 0
    hits = [similar_lines(run.cli(capsys, "similar", "Movie 7", "--k", "5")) for run in (local, remote)]
    assert hits[0] == hits[1] and len(hits[0]) == 5

    # night 2, 1% of the catalog changed; its first attempt is killed before the switch (on both sides, so the Lance
    # version numbers stay comparable): readers stay on night 1 ...
    write_catalogs(catalog_jsonl(changed={"1042"}))
    served_before, manifest_before = remote.served(), remote.manifest()

    def killed(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("killed before the switch")

    with monkeypatch.context() as patched:
        patched.setattr(store.writer, "_commit", killed)
        for run in (local, remote):
            with pytest.raises(RuntimeError, match="killed before the switch"):
                run_stages(run.config(), ["nightly"], echo=lambda _: None)
    assert remote.manifest() == manifest_before
    after = remote.served()
    assert after.keys() == served_before.keys() and all(np.array_equal(after[k], v) for k, v in served_before.items())

    # ... and the next nightly completes it: incremental embed (already done) and publish
    for run in (local, remote):
        run.cli(capsys, "nightly")
    assert_same_state(local, remote)
    night = json.loads(remote.layout.run_json.read_text())
    assert night["status"] == "succeeded" and night["results"]["publish"]["result"]["upserted"] == 1
    assert remote.manifest()["seq"] == 1

    # rollback: both back on night 1, model pinned
    for run in (local, remote):
        assert "pinned" in run.cli(capsys, "rollback")
    assert_same_state(local, remote)
    assert remote.manifest()["pinned"] is True and remote.manifest()["tables"] == manifest_before["tables"]

    # everything lives in the bucket, and no credential is in any object of it
    objects = s3_server.objects(bucket)
    for key in (
        "genre/nightly/run.json",
        "genre/nightly/catalog/movies/_current.json",
        "genre/nightly/catalog/accounting.json",
        "genre/nightly/catalog/rejects.parquet",
        "genre/nightly/model/model.json",
        "genre/nightly/logs/genre-ray.log",
    ):
        assert key in objects, key
    for prefix in ("embeddings/embeddings.lance/", "checkpoints/", "store/serving/", "store/movies_en.lance/"):
        assert any(k.startswith(f"genre/nightly/{prefix}") for k in objects), prefix
    leaks = [k for k, data in objects.items() if ACCESS_KEY.encode() in data or SECRET_KEY.encode() in data]
    assert leaks == []
    log = storage.local_log_file(remote.layout.root).read_text()
    assert ACCESS_KEY not in log and SECRET_KEY not in log
    assert json.loads(objects["genre/nightly/run.json"])["config"]["storage"]["options"]["aws_secret_access_key"] == (
        "<redacted>"
    )


def test_local_artifacts_are_untouched_by_the_storage_layer(tmp_path: Path):
    """A local workdir stays a plain pathlib.Path: every POSIX guarantee the stages had is kept."""
    layout = RunLayout.of(tmp_path / "w")
    assert isinstance(layout.root, Path) and layout.root == (tmp_path / "w").resolve()
    assert storage.arrow_fs(layout.movies) == (None, str(layout.movies))
    assert storage.lance_options(layout.store_dir) is None
