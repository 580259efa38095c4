"""The Ray embedding stage: equality with the plain encoder, incremental re-embedding, actor planning."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from factories import catalog_table, write_catalog

from genre_ray import schema
from genre_ray.config import Config, EmbedConfig
from genre_ray.embed import embed_catalog, embeddings_uri, load_embeddings, read_embeddings
from genre_ray.embed.actors import ActorPlan, TokenizerPlan, plan_actors, plan_tokenizers, tokenize_in_stage
from genre_ray.encoder import TextEncoder
from genre_ray.layout import RunLayout
from genre_ray.text import DocumentBuilder, content_hash, encoder_id

N = 40


def _cfg(workdir: Path) -> Config:
    cfg = Config(workdir=str(workdir))
    # small windows so even a tiny catalog goes through several sorted windows and batches
    cfg.embed.batch_size = 8
    cfg.embed.sort_window = 16
    return cfg


def _by_id(table: pa.Table) -> dict[str, tuple[str, np.ndarray]]:
    vectors = schema.vector_matrix(table["embedding"])
    return {
        m: (h, vectors[i])
        for i, (m, h) in enumerate(zip(table["movie_id"].to_pylist(), table["content_hash"].to_pylist(), strict=True))
    }


@pytest.fixture(scope="module")
def base_run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed-base")
    layout = RunLayout.of(root)
    catalog = catalog_table(N)
    write_catalog(catalog, layout.movies)
    stats = embed_catalog(_cfg(root), layout)
    return layout, catalog, stats


def test_ray_pipeline_equals_plain_encoder_loop(base_run):
    layout, catalog, stats = base_run
    assert (stats.docs_total, stats.docs_embedded, stats.docs_reused, stats.mode) == (N, N, 0, "full")
    assert stats.tokens > 0 and stats.tokens_per_s > 0 and 0.0 <= stats.padding_fraction < 0.5
    assert "40 embedded" in stats.summary()
    assert stats.encoder_id == encoder_id("minilm", 256, "mean", True)

    table = read_embeddings(layout)
    assert table.schema.equals(schema.embeddings_schema(384))
    stored = _by_id(table)
    assert sorted(stored) == sorted(catalog["movie_id"].to_pylist())

    cfg = _cfg(layout.root)
    plain = TextEncoder(cfg.encoder).encode(catalog["document"].to_pylist(), batch_size=8, sort_by_length=False)
    for i, (movie_id, chash) in enumerate(
        zip(catalog["movie_id"].to_pylist(), catalog["content_hash"].to_pylist(), strict=True)
    ):
        got_hash, got = stored[movie_id]
        assert got_hash == chash
        assert float(got @ plain[i]) > 0.999, movie_id
    assert set(table["encoder_id"].to_pylist()) == {encoder_id("minilm", 256, "mean", True)}


def test_tokenizer_stage_layout_gives_the_same_fp32_vectors(base_run, tmp_path):
    layout, catalog, _ = base_run
    staged = RunLayout.of(tmp_path)
    write_catalog(catalog, staged.movies)
    cfg = _cfg(tmp_path)
    cfg.embed.tokenize = "stage"
    stats = embed_catalog(cfg, staged)
    assert stats.docs_embedded == N and stats.tokenize.startswith("stage")
    in_actor, in_stage = _by_id(read_embeddings(layout)), _by_id(read_embeddings(staged))
    assert sorted(in_stage) == sorted(in_actor)
    for movie_id, (chash, vector) in in_actor.items():
        assert in_stage[movie_id][0] == chash
        # the same sorted batches either way; fp32 sums may still differ in their last bit
        np.testing.assert_allclose(in_stage[movie_id][1], vector, atol=1e-6)


def test_load_embeddings_is_a_ray_dataset_of_the_same_rows(base_run):
    layout, _, _ = base_run
    ds = load_embeddings(layout)
    assert ds.count() == N
    batch = ds.take_batch(N, batch_format="pyarrow")
    assert schema.vector_matrix(batch["embedding"]).shape == (N, 384)


def _change_overviews(catalog: pa.Table, cfg: Config, ids: set[str]) -> pa.Table:
    build = DocumentBuilder(cfg.text)
    enc = encoder_id(cfg.encoder.model, cfg.encoder.max_length, cfg.encoder.pooling, cfg.encoder.normalize)
    rows = catalog.to_pylist()
    for row in rows:
        if row["movie_id"] in ids:
            row["overview"] = "A lonely lighthouse keeper befriends a sea monster during a winter storm."
            row["document"] = build(row)
            row["content_hash"] = content_hash(row["document"], enc)
    return pa.Table.from_pylist(rows, schema=schema.CATALOG)


def test_incremental_embeds_only_changed_and_drops_removed(base_run, tmp_path):
    base_layout, catalog, _ = base_run
    layout = RunLayout.of(tmp_path)
    shutil.copytree(base_layout.embeddings_dir, layout.embeddings_dir)
    cfg = _cfg(tmp_path)
    before = _by_id(read_embeddings(layout))

    ids = catalog["movie_id"].to_pylist()
    changed, removed = set(ids[:3]), set(ids[-5:])
    updated = _change_overviews(catalog, cfg, changed).filter(
        pa.compute.invert(pa.compute.is_in(catalog["movie_id"], pa.array(sorted(removed))))
    )
    write_catalog(updated, layout.movies)

    stats = embed_catalog(cfg, layout)
    assert (stats.docs_embedded, stats.docs_reused, stats.docs_removed) == (3, N - 3 - 5, 5)
    assert stats.mode == "incremental"

    after = _by_id(read_embeddings(layout))
    assert sorted(after) == sorted(updated["movie_id"].to_pylist())
    new_docs = {r["movie_id"]: r for r in updated.to_pylist()}
    fresh = TextEncoder(cfg.encoder).encode([new_docs[m]["document"] for m in sorted(changed)], batch_size=8)
    for movie_id, vector in zip(sorted(changed), fresh, strict=True):
        assert after[movie_id][0] == new_docs[movie_id]["content_hash"] != before[movie_id][0]
        assert float(after[movie_id][1] @ vector) > 0.999
        assert float(after[movie_id][1] @ before[movie_id][1]) < 0.99
    for movie_id in set(after) - changed:
        # reused rows are the stored bytes, not a re-encode
        assert after[movie_id][0] == before[movie_id][0]
        np.testing.assert_array_equal(after[movie_id][1], before[movie_id][1])

    # the previous version is untouched by the incremental commit: readers pinned to it, and a rollback, still work
    assert lance.dataset(str(embeddings_uri(layout)), version=stats.version - 1).count_rows() == N

    version = stats.version
    again = embed_catalog(cfg, layout)
    assert (again.docs_embedded, again.docs_reused, again.docs_removed, again.mode) == (0, N - 5, 0, "unchanged")
    assert again.version == version, "a no-op run must not commit a new version"

    # removals alone need no encoder at all: a delete commit
    write_catalog(updated.slice(2), layout.movies)
    shrunk = embed_catalog(cfg, layout)
    assert (shrunk.docs_embedded, shrunk.docs_removed, shrunk.plan) == (0, 2, None)
    assert sorted(read_embeddings(layout)["movie_id"].to_pylist()) == sorted(updated.slice(2)["movie_id"].to_pylist())


# ------------------------------------------------------------------------------------------- plan_actors


def test_plan_picks_one_gpu_actor_per_gpu():
    plan = plan_actors(EmbedConfig(), {"CPU": 32.0, "GPU": 4.0})
    assert (plan.num_actors, plan.num_gpus, plan.device) == (4, 1.0, "cuda")


def test_plan_ignores_gpus_when_told_to():
    plan = plan_actors(EmbedConfig(use_gpu="no"), {"CPU": 16.0, "GPU": 2.0})
    assert plan.device == "cpu" and plan.num_gpus == 0.0


def test_plan_refuses_gpu_yes_without_gpus_and_more_actors_than_gpus():
    with pytest.raises(ValueError, match="no GPUs"):
        plan_actors(EmbedConfig(use_gpu="yes"), {"CPU": 8.0})
    with pytest.raises(ValueError, match="one actor per GPU"):
        plan_actors(EmbedConfig(num_actors=3), {"CPU": 8.0, "GPU": 2.0})


@pytest.mark.parametrize("cpus", [1.0, 2.0, 4.0, 16.0, 64.0])
def test_cpu_plan_never_oversubscribes_and_leaves_a_cpu_for_ray_data(cpus):
    plan = plan_actors(EmbedConfig(), {"CPU": cpus})
    assert plan.device == "cpu" and plan.num_gpus == 0.0
    assert plan.num_actors * plan.threads <= max(1, cpus)
    assert plan.num_actors * plan.num_cpus <= (cpus - 1 if cpus >= 2 else cpus)
    assert plan.threads >= 1 and plan.num_cpus > 0


def test_cpu_plan_on_this_kind_of_node_is_one_actor_with_two_threads():
    assert plan_actors(EmbedConfig(), {"CPU": 2.0}) == ActorPlan(1, 0.0, 1.0, 2, "cpu")
    assert plan_actors(EmbedConfig(), {"CPU": 64.0}).num_actors == 8


def test_cpu_plan_honours_explicit_sizes_and_rejects_oversubscription():
    plan = plan_actors(EmbedConfig(num_actors=4), {"CPU": 16.0})
    assert (plan.num_actors, plan.threads) == (4, 4)
    plan = plan_actors(EmbedConfig(cpu_threads=2), {"CPU": 16.0})
    assert (plan.num_actors, plan.threads) == (8, 2)
    with pytest.raises(ValueError, match="oversubscribes"):
        plan_actors(EmbedConfig(num_actors=4, cpu_threads=4), {"CPU": 8.0})


def test_tokenizers_get_a_stage_when_encoders_have_gpus_or_when_forced():
    gpu = plan_actors(EmbedConfig(), {"CPU": 16.0, "GPU": 2.0})
    cpu = plan_actors(EmbedConfig(), {"CPU": 2.0})
    assert tokenize_in_stage(EmbedConfig(), gpu) and not tokenize_in_stage(EmbedConfig(), cpu)
    assert tokenize_in_stage(EmbedConfig(tokenize="stage"), cpu)
    assert not tokenize_in_stage(EmbedConfig(tokenize="actor"), gpu)


@pytest.mark.parametrize("cpus", [2.0, 4.0, 16.0, 64.0])
def test_tokenizer_pool_takes_what_the_encoders_leave_and_a_cpu_stays_free(cpus):
    for resources in ({"CPU": cpus}, {"CPU": cpus, "GPU": 1.0}):
        encoders, tokenizers = plan_tokenizers(plan_actors(EmbedConfig(), resources), resources)
        reserved = encoders.num_actors * encoders.num_cpus + tokenizers.num_actors * tokenizers.num_cpus
        assert reserved <= cpus - 1 and tokenizers.num_cpus > 0 and encoders.num_cpus > 0
    _, tokenizers = plan_tokenizers(plan_actors(EmbedConfig(), {"CPU": 16.0, "GPU": 2.0}), {"CPU": 16.0, "GPU": 2.0})
    assert tokenizers == TokenizerPlan(13, 1.0)


def test_plan_is_limited_to_the_windows_there_are():
    assert plan_actors(EmbedConfig(), {"CPU": 64.0}).limited_to(3).num_actors == 3


def test_rows_of_another_cpu_backend_are_reembedded_and_still_count_for_removals(tmp_path):
    from genre_ray.embed.diff import current_keys, diff_keys

    torch_id = encoder_id("minilm", 256, "mean", True)
    int8_id = encoder_id("minilm", 256, "mean", True, backend="onnx-int8")
    stored = pa.table(
        {
            "movie_id": ["a", "b", "gone"],
            "content_hash": ["ha", "hb", "hg"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(12, np.float32)), 4),
            "encoder_id": [int8_id, torch_id, torch_id],
        },
        schema=schema.embeddings_schema(4),
    )
    lance.write_dataset(stored, str(tmp_path / "e.lance"))
    catalog = pa.table({"movie_id": ["a", "b"], "content_hash": ["ha", "hb"]})
    diff = diff_keys(catalog, current_keys(lance.dataset(str(tmp_path / "e.lance")), torch_id))
    # "a" was made by onnx-int8: this torch run re-embeds it; "b" is reused; "gone" is removed either way
    assert diff.to_embed.to_pylist() == ["a"] and diff.removed.to_pylist() == ["gone"]


# ------------------------------------------------------------------------------------------- what a process imports

_IMPORTED = """
import json, sys
import {module}
heavy = ("torch", "transformers", "lance_ray", "genre_ray.embed.stage")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        # an encoder actor's process: the encoder, not the stage's Lance writer
        ("genre_ray.embed.actors", ["torch", "transformers"]),
        # retention's compaction and the diff task: neither the encoder nor lance_ray
        ("genre_ray.embed.dataset", []),
        ("genre_ray.embed.diff", []),
        ("genre_ray.store.maintenance", []),
    ],
)
def test_a_worker_imports_only_what_its_job_needs(module: str, heavy: list[str]) -> None:
    """Ray imports a function's or actor's module (and its package) in every process that runs it: each second of
    imports is paid once per actor or pooled worker."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED.format(module=module)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == heavy
