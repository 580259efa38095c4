"""The store's own copy of every model a kept publish serves, so a rollback can put that exact model back."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from genre_ray import storage
from genre_ray.errors import StoreError
from genre_ray.storage import StoragePath

log = logging.getLogger(__name__)

MODELS_DIR = "models"


def model_copy(store_dir: StoragePath, version: str) -> StoragePath:
    return store_dir / MODELS_DIR / version


def keep_model(store_dir: StoragePath, model_dir: StoragePath, version: str) -> None:
    """Copy model/ into the store (once per version) before a manifest starts serving it."""
    # here, not at the top: genre_ray.model imports torch, which maintenance's table and retention tasks never need
    from genre_ray.model import copy_classifier, read_meta

    dst = model_copy(store_dir, version)
    if dst.exists() and read_meta(dst)["model_version"] == version:
        return
    copy_classifier(model_dir, dst)


def restore_model(store_dir: StoragePath, version: str, model_dir: StoragePath) -> None:
    """Re-export the store's copy of model `version` into model/ (crash-safe, like a fresh export)."""
    from genre_ray.model import copy_classifier

    src = model_copy(store_dir, version)
    if not src.exists():
        raise StoreError(
            f"the store serves model {version} but keeps no copy of it ({src}); retrain with --retrain "
            "or publish model/ with --promote"
        )
    copy_classifier(src, model_dir)
    log.info("model %s re-exported from %s into %s", version, src, model_dir)


def prune_models(store_dir: StoragePath, keep: Iterable[str]) -> list[str]:
    keep = set(keep)
    removed = []
    for d in sorted((store_dir / MODELS_DIR).glob("*")):
        if d.is_dir() and d.name not in keep:
            storage.remove_tree(d)
            removed.append(d.name)
    return removed
