"""Retrain gating: a new classifier replaces the served one only if it is not worse on the same validation movies.

Both models are scored here, on the retrain's validation split, each at its own tuned threshold, so the comparison
does not depend on metrics recorded when the served model was trained (the catalog may have grown since). They
are compared only when that is fair: same split (seed and fractions), same genre vocabulary, same input width (an
encoder change makes the old model unable to read the new vectors). Otherwise the new model is served and the
decision says why it was not compared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from genre_ray import storage
from genre_ray.config import Config
from genre_ray.layout import RunLayout
from genre_ray.model import LoadedClassifier, copy_classifier, load_classifier
from genre_ray.train.data import TrainingData, read_arrays
from genre_ray.train.loop import classification_metrics, predict_proba

log = logging.getLogger(__name__)
GATED = ("micro_f1", "map")


@dataclass
class GateDecision:
    served: bool  # False: the new model waits in model_candidate/, the old one stays in model/
    reason: str
    new: dict[str, float] = field(default_factory=dict)  # validation metrics of the retrain
    old: dict[str, float] = field(default_factory=dict)  # ... and of the served model, on the same movies
    served_version: str | None = None


def _served(layout: RunLayout) -> tuple[str, LoadedClassifier] | None:
    from genre_ray.store.manifest import read_manifest
    from genre_ray.store.models import model_copy

    manifest = read_manifest(layout.store_dir)
    if manifest is None:
        return None
    version = manifest["model_version"]
    copy = model_copy(layout.store_dir, version)
    return (version, load_classifier(copy)) if copy.exists() else None


def _val_metrics(model: LoadedClassifier, x, y) -> dict[str, float]:
    return classification_metrics(y, predict_proba(model.model, x), model.threshold)


def check_retrain(cfg: Config, layout: RunLayout, data: TrainingData) -> GateDecision:
    """Compare model/ (just trained) with the store's served model on data.val; see the module docstring."""
    new = load_classifier(layout.model_dir)
    served = _served(layout)
    if served is None:
        return GateDecision(True, "no served model to compare with")
    version, old = served
    if version == new.model_version:
        return GateDecision(True, "the retrain reproduced the served model", served_version=version)
    if old.split != new.split:
        return GateDecision(
            True, f"not compared: split {new.split} differs from the served {old.split}", served_version=version
        )
    if old.vocab != new.vocab:
        return GateDecision(True, "not compared: the genre vocabulary changed", served_version=version)
    if old.model.spec.input_dim != new.model.spec.input_dim:
        return GateDecision(True, "not compared: the embedding width changed", served_version=version)
    x, y, _ = read_arrays(data.val)
    new_m, old_m = _val_metrics(new, x, y), _val_metrics(old, x, y)
    tol = cfg.train.max_regression
    worse = [f"{k} {new_m[k]:.3f} < {old_m[k]:.3f} - {tol:g}" for k in GATED if new_m[k] < old_m[k] - tol]
    if not worse:
        reason = ", ".join(f"{k} {new_m[k]:.3f} vs {old_m[k]:.3f}" for k in GATED) + f" (tolerance {tol:g})"
        return GateDecision(True, reason, new_m, old_m, version)
    reason = (
        f"validation {'; '.join(worse)} (train.max_regression): still serving model {version}; the retrain "
        f"{new.model_version} is in {layout.candidate_dir.name}/ (`publish --promote` serves it)"
    )
    return GateDecision(False, reason, new_m, old_m, version)


def hold_back(layout: RunLayout, decision: GateDecision) -> None:
    """Move the rejected retrain to model_candidate/ and put the served model back into model/."""
    from genre_ray.store.models import restore_model

    if layout.candidate_dir.exists():
        storage.remove_tree(layout.candidate_dir)
    copy_classifier(layout.model_dir, layout.candidate_dir)
    restore_model(layout.store_dir, decision.served_version, layout.model_dir)
    log.warning("retrain not served: %s", decision.reason)


def promote_candidate(layout: RunLayout) -> str | None:
    """`publish --promote` after a held-back retrain: the candidate becomes model/; its version, or None."""
    if not (layout.candidate_dir / "model.json").exists():
        return None
    version = copy_classifier(layout.candidate_dir, layout.model_dir)
    storage.remove_tree(layout.candidate_dir)
    return version
