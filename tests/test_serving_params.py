from pathlib import Path

import pytest
from pydantic import ValidationError

from genre_ray import serving_params
from genre_ray.serving_params import ServingParams


def test_params_are_read_only_for_the_model_they_were_chosen_for(tmp_path: Path) -> None:
    chosen = ServingParams(popularity_weight=0.3, pool_factor=8, mmr_lambda=0.8, model_version="m1", chosen_by="x")
    serving_params.write(tmp_path, chosen)
    assert serving_params.read(tmp_path, "m1") == chosen
    assert serving_params.read(tmp_path, "m2") is None
    assert serving_params.read(tmp_path / "nothing", "m1") is None


def test_manifest_round_trip_and_defaults() -> None:
    chosen = ServingParams(popularity_weight=0.1, model_version="m1", chosen_by="evaluate:spectrum")
    manifest = {serving_params.MANIFEST_KEY: serving_params.to_manifest(chosen)}
    assert serving_params.from_manifest(manifest) == chosen
    assert serving_params.from_manifest({}) == ServingParams()


def test_out_of_range_params_are_refused() -> None:
    with pytest.raises(ValidationError, match="popularity_weight"):
        ServingParams(popularity_weight=1.5)
