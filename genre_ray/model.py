"""The genre classifier: text embedding -> trunk (ending in the genre spectrum) -> linear head over genres.

Plain torch. Saved as safetensors + JSON, never pickled: loading a model never runs code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch import nn

from genre_ray import storage
from genre_ray.errors import ModelError
from genre_ray.layout import atomic_write, atomic_write_text
from genre_ray.storage import StoragePath

# the weights file of models saved before weights were named by version
WEIGHTS = "model.safetensors"
META = "model.json"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ClassifierSpec:
    input_dim: int
    num_genres: int
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    spectrum_dim: int = 64
    dropout: float = 0.2
    norm: str = "layer"


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    return nn.Identity()


class GenreClassifier(nn.Module):
    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        width = spec.input_dim
        for hidden in spec.hidden_dims:
            layers += [nn.Linear(width, hidden), _norm(spec.norm, hidden), nn.GELU(), nn.Dropout(spec.dropout)]
            width = hidden
        # The penultimate layer is the product: its activations are the genre-spectrum vector.
        layers += [nn.Linear(width, spec.spectrum_dim), _norm(spec.norm, spec.spectrum_dim), nn.GELU()]
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.spectrum_dim, spec.num_genres)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.trunk(x)))


@dataclass
class LoadedClassifier:
    model: GenreClassifier
    vocab: list[str]
    model_version: str
    # the probability above which a genre counts as predicted (tuned on the validation split, never on test)
    threshold: float = DEFAULT_THRESHOLD
    # {"seed", "val_fraction", "test_fraction"} the model was trained with; None for models saved before it was kept
    split: dict[str, Any] | None = None


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Unwrap DistributedDataParallel (Ray Train's prepare_model) so keys never carry a "module." prefix.
    inner = getattr(model, "module", model)
    return {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}


def weights_version(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: StoragePath) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_classifier(
    model: nn.Module,
    spec: ClassifierSpec,
    vocab: list[str],
    out_dir: str | StoragePath,
    threshold: float = DEFAULT_THRESHOLD,
    split: dict[str, Any] | None = None,
) -> str:
    """Write weights + spec + vocabulary + decision threshold (+ the train/val/test split the model was trained on,
    which evaluation must reuse); returns the model version (a hash of the weights).

    Crash-safe: the weights go to a file named by their version, then model.json (written atomically, last) points
    at that file with its sha256; only then are older weight files removed. A crash at any point leaves a model.json
    that names complete weights: the old model or the new one, never new weights under the old version.
    """
    out = storage.location(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _state_dict(model)
    version = weights_version(state)
    weights = f"model-{version}.safetensors"
    atomic_write(out / weights, lambda tmp: save_file(state, str(tmp)))
    meta = {
        "spec": asdict(spec),
        "vocab": list(vocab),
        "model_version": version,
        "threshold": float(threshold),
        "weights": weights,
        "weights_sha256": file_sha256(out / weights),
        "split": split,
    }
    atomic_write_text(out / META, json.dumps(meta, indent=2))
    _remove_unreferenced_weights(out, keep=weights)
    return version


def _remove_unreferenced_weights(out: StoragePath, keep: str) -> None:
    for old in out.glob("model*.safetensors"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def read_meta(model_dir: str | StoragePath) -> dict[str, Any]:
    path = storage.location(model_dir) / META
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no model at {path.parent} (run the train stage first)") from None
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err}); re-run the train stage") from None


def load_classifier(model_dir: str | StoragePath, device: str = "cpu") -> LoadedClassifier:
    path = storage.location(model_dir)
    meta = read_meta(path)
    weights = path / meta.get("weights", WEIGHTS)
    if not weights.exists():
        raise ModelError(f"{path / META} names weights {weights.name}, which are missing; re-run the train stage")
    expected = meta.get("weights_sha256")
    # model.json files written before the hash was recorded are loaded unchecked
    data = weights.read_bytes()  # one read serves the hash check and the load (one GET on object storage)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ModelError(
            f"{weights}: sha256 does not match {path / META} (model_version {meta['model_version']}); the model "
            "directory is torn or was edited: re-run the train stage"
        )
    spec = ClassifierSpec(**meta["spec"])
    model = GenreClassifier(spec)
    model.load_state_dict(load(data))
    model.to(device).eval()
    return LoadedClassifier(
        model=model,
        vocab=list(meta["vocab"]),
        model_version=meta["model_version"],
        # model.json files written before the threshold was saved used the default
        threshold=float(meta.get("threshold", DEFAULT_THRESHOLD)),
        split=meta.get("split"),
    )


def copy_classifier(src: str | StoragePath, dst: str | StoragePath) -> str:
    """Copy a saved model directory in the same crash-safe order as save_classifier; returns its version."""
    src, dst = storage.location(src), storage.location(dst)
    meta = read_meta(src)
    weights = meta.get("weights", WEIGHTS)
    data = (src / weights).read_bytes()
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write(dst / weights, lambda tmp: tmp.write_bytes(data))
    atomic_write_text(dst / META, json.dumps(meta, indent=2))
    _remove_unreferenced_weights(dst, keep=weights)
    return meta["model_version"]
