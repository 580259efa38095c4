"""A retrain is served only if it is not worse than the served model on the same validation movies: a deliberately
worse one (1 epoch, a 2-wide layer, a tiny learning rate) leaves the store and model/ on the old model, says why,
and waits in model_candidate/ until `publish --promote` serves it."""

from __future__ import annotations

from factories import catalog_table
from test_store import make_run, write_embeddings

from genre_ray.model import load_classifier
from genre_ray.pipeline import run_stages
from genre_ray.store import Store

GOOD = {"hidden_dims": [32], "spectrum_dim": 8, "epochs": 6, "lr": 5e-3, "mixup_factor": 1, "num_workers": 1}
WORSE = {**GOOD, "hidden_dims": [2], "epochs": 1, "lr": 1e-5}


def test_a_worse_retrain_is_not_served_until_promoted(ray_session, tmp_path) -> None:
    catalog = catalog_table(200)
    cfg, layout = make_run(tmp_path, catalog)
    write_embeddings(layout, catalog)
    good = cfg.model_copy(update={"train": cfg.train.model_validate(GOOD)})
    first = run_stages(good, ["train", "publish"], echo=lambda _: None)
    served = first.outputs["train"].model_version
    assert first.outputs["train"].served
    assert Store(layout.store_dir).manifest()["model_version"] == served

    worse = cfg.model_copy(update={"train": cfg.train.model_validate(WORSE)})
    lines: list[str] = []
    second = run_stages(worse, ["train", "publish"], echo=lines.append)
    trained = second.outputs["train"]
    assert not trained.served
    assert trained.gate.old["map"] - trained.gate.new["map"] > worse.train.max_regression
    assert "NOT SERVED" in "\n".join(lines) and "train.max_regression" in trained.gate.reason
    # the store, model/ and the publish stay on the served model; the retrain waits beside it
    assert Store(layout.store_dir).manifest()["model_version"] == served
    assert load_classifier(layout.model_dir).model_version == served
    candidate = load_classifier(layout.candidate_dir).model_version
    assert candidate == trained.model_version != served
    assert second.outputs["publish"].model_version == served
    assert second.results["train"]["result"]["gate"]["served"] is False  # run.json records the decision

    # publish --promote overrides the gate and serves the held-back retrain
    promoted = run_stages(worse, ["publish"], promote=True, echo=lambda _: None)
    assert promoted.outputs["publish"].model_version == load_classifier(layout.model_dir).model_version != served
    assert Store(layout.store_dir).manifest()["model_version"] == promoted.outputs["publish"].model_version
    assert not layout.candidate_dir.exists()
