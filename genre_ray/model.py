"""The genre classifier: text embedding -> trunk (ending in the genre spectrum) -> linear head over genres.

Plain torch. Saved as safetensors + JSON, never pickled: loading a model never runs code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

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


def save_classifier(
    model: nn.Module,
    spec: ClassifierSpec,
    vocab: list[str],
    out_dir: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
) -> str:
    """Write weights + spec + vocabulary + decision threshold; returns the model version (a hash of the weights)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _state_dict(model)
    version = weights_version(state)
    save_file(state, str(out / WEIGHTS))
    meta = {"spec": asdict(spec), "vocab": list(vocab), "model_version": version, "threshold": float(threshold)}
    (out / META).write_text(json.dumps(meta, indent=2))
    return version


def load_classifier(model_dir: str | Path, device: str = "cpu") -> LoadedClassifier:
    path = Path(model_dir)
    meta = json.loads((path / META).read_text())
    spec = ClassifierSpec(**meta["spec"])
    model = GenreClassifier(spec)
    model.load_state_dict(load_file(str(path / WEIGHTS), device=device))
    model.to(device).eval()
    return LoadedClassifier(
        model=model,
        vocab=list(meta["vocab"]),
        model_version=meta["model_version"],
        # model.json files written before the threshold was saved used the default
        threshold=float(meta.get("threshold", DEFAULT_THRESHOLD)),
    )
