"""The ranking parameters a publish serves: chosen by evaluation for one model, carried by the manifest.

`genre-ray evaluate` picks the served content method's parameters on its validation slice and writes them beside
the model they were chosen for (`model/serving_params.json`, keyed by `model_version`). The next publish copies
them into its manifest under `serving`, so a rollback restores them together with its model, and every reader
(CLI, `Recommender`, the HTTP service) takes them from the manifest it serves. Parameters written for another model
version are ignored: they were chosen for a different spectrum.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genre_ray.layout import atomic_write_text
from genre_ray.storage import StoragePath

FILE = "serving_params.json"
# the manifest key that carries them
MANIFEST_KEY = "serving"


class ServingParams(BaseModel):
    """How the served ranking turns ANN hits into a top k (see recommend.py for the formula)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # score = (1 - w) * cosine + w * log1p(votes) / log1p(max votes): w over the catalog's TMDB votes
    popularity_weight: float = Field(0.0, ge=0.0, le=1.0)
    # ANN candidates per requested result that the re-rankers see
    pool_factor: int = Field(4, ge=1)
    # MMR trade-off (1 = pure relevance); None = no MMR
    mmr_lambda: float | None = Field(None, ge=0.0, le=1.0)
    # the model these were chosen for (None: defaults, not chosen for any model)
    model_version: str | None = None
    # who chose them: "default", "config", or "evaluate:<method>"
    chosen_by: str = "default"


def path(model_dir: StoragePath) -> StoragePath:
    return model_dir / FILE


def write(model_dir: StoragePath, params: ServingParams) -> None:
    atomic_write_text(path(model_dir), params.model_dump_json(indent=2))


def read(model_dir: StoragePath, model_version: str) -> ServingParams | None:
    """The parameters chosen for `model_version`, or None (no file, or chosen for another model)."""
    f = path(model_dir)
    if not f.exists():
        return None
    params = ServingParams.model_validate_json(f.read_text(encoding="utf-8"))
    return params if params.model_version == model_version else None


def from_manifest(manifest: dict[str, Any]) -> ServingParams:
    """A manifest's served parameters; a manifest from before they existed serves the defaults."""
    data = manifest.get(MANIFEST_KEY)
    return ServingParams.model_validate(data) if data else ServingParams()


def to_manifest(params: ServingParams) -> dict[str, Any]:
    return json.loads(params.model_dump_json())
