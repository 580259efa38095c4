"""The encoder on its own: offline load, vector shape and norm, pooling, length-sorted batching."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from genre_ray.config import EncoderConfig
from genre_ray.encoder import TextEncoder, encoder_dim, resolve_dtype

TEXTS = [
    "A haunted house, a ghost and a night of terror.",
    "Space marines fight an alien invasion on a distant planet in the far future, with robots and starships.",
    "Love.",
    "Two strangers fall in love at a wedding in Paris.",
    "A ghost haunts a family in an old house; screams at night.",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(EncoderConfig())


def test_loads_offline_and_gives_unit_384d_vectors(encoder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    vectors = encoder.encode(TEXTS, batch_size=2)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert encoder.dim == encoder_dim(EncoderConfig()) == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_meaning_drives_similarity(encoder):
    v = encoder.encode(TEXTS, batch_size=8)
    sims = v @ v.T
    # the two ghost stories are closer to each other than to the space opera
    assert sims[0, 4] > sims[0, 1] + 0.2


def test_sorted_batching_is_order_preserving_and_pads_less(encoder):
    sorted_v, sorted_stats = encoder.encode_with_stats(TEXTS, batch_size=2, sort_by_length=True)
    plain_v, plain_stats = encoder.encode_with_stats(TEXTS, batch_size=2, sort_by_length=False)
    np.testing.assert_allclose((sorted_v * plain_v).sum(axis=1), 1.0, atol=1e-4)
    assert sorted_stats.tokens == plain_stats.tokens == int(encoder.token_lengths(TEXTS).sum())
    assert sorted_stats.padded_tokens < plain_stats.padded_tokens
    assert 0.0 <= sorted_stats.padding_fraction < plain_stats.padding_fraction < 1.0


def test_single_text_matches_batched(encoder):
    # padding must not leak into the mean: a text alone and inside a padded batch embed the same
    alone = encoder.encode([TEXTS[2]], batch_size=1)[0]
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS), sort_by_length=False)[2]
    assert float(alone @ batched) > 0.9999


def test_max_length_truncates():
    enc = TextEncoder(EncoderConfig(max_length=8))
    assert enc.token_lengths(TEXTS).max() == 8


def test_cls_pooling_and_no_normalisation_are_honoured():
    enc = TextEncoder(EncoderConfig(pooling="cls", normalize=False))
    v = enc.encode(TEXTS[:2], batch_size=2)
    assert not np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    assert enc.id.endswith("pool=cls|norm=0")


def test_dtype_auto_is_fp32_on_cpu():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_missing_model_fails_without_network(tmp_path):
    with pytest.raises(OSError):
        TextEncoder(EncoderConfig(model=str(tmp_path / "no-such-model")))


# ------------------------------------------------------------------ the ONNX Runtime CPU backends (encoder.cpu_backend)


@pytest.fixture(scope="module")
def int8_encoder() -> TextEncoder:
    # Exported once per machine into the cache dir (onnx_export.cache_dir), not per test or per run.
    return TextEncoder(EncoderConfig(cpu_backend="onnx-int8"))


def test_onnx_int8_vectors_stay_close_to_fp32(encoder, int8_encoder):
    reference = encoder.encode(TEXTS, batch_size=2)
    vectors = int8_encoder.encode(TEXTS, batch_size=2)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(axis=1)
    assert cosine.min() > 0.95 and cosine.mean() > 0.97
    # and meaning still drives similarity
    sims = vectors @ vectors.T
    assert sims[0, 4] > sims[0, 1] + 0.2


def test_onnx_backends_are_named_in_the_encoder_id_and_cached(encoder, int8_encoder):
    from genre_ray.encoder import resolve_model_path
    from genre_ray.onnx_export import onnx_model

    assert encoder.id == "minilm|len=256|pool=mean|norm=1"  # torch keeps the historical id: stores stay valid
    assert int8_encoder.id == encoder.id + "|backend=onnx-int8"
    path = onnx_model(resolve_model_path("minilm"), int8=True)
    before = path.stat().st_mtime_ns
    TextEncoder(EncoderConfig(cpu_backend="onnx-int8"))
    assert path.stat().st_mtime_ns == before


def test_onnx_fp32_equals_torch_at_every_length(encoder):
    # The eager-attention export must not bake the traced sequence length into the graph.
    onnx = TextEncoder(EncoderConfig(cpu_backend="onnx"))
    for batch_size in (1, 2, 5):
        cosine = (onnx.encode(TEXTS, batch_size) * encoder.encode(TEXTS, batch_size)).sum(axis=1)
        assert cosine.min() > 0.9999


def test_gpu_ignores_the_cpu_backend():
    from genre_ray.encoder import resolve_backend

    assert resolve_backend(EncoderConfig(cpu_backend="onnx-int8"), "cuda") == "torch"
    assert resolve_backend(EncoderConfig(cpu_backend="onnx-int8"), "cpu") == "onnx-int8"


# ------------------------------------------------------------------------------------------- Tokens


def test_tokens_are_the_transformers_tokenizers_ids_in_flat_arrays(encoder):
    from transformers import AutoTokenizer

    from genre_ray.encoder import resolve_model_path

    texts = [*TEXTS, "", "word " * 400]
    expected = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))(texts, truncation=True, max_length=256)
    tokens = encoder.tokenize(texts)
    assert tokens.ids.dtype == np.int32 and tokens.offsets[0] == 0 and len(tokens) == len(texts)
    assert [tokens.ids[a:b].tolist() for a, b in zip(tokens.offsets[:-1], tokens.offsets[1:], strict=True)] == (
        expected["input_ids"]
    )
    assert tokens.lengths.max() == 256


def test_tokens_take_pad_and_arrow_round_trip_keep_every_id(encoder):
    from genre_ray.embed.tokens import Tokens

    tokens = encoder.tokenize(TEXTS)
    doc = [tokens.ids[a:b].tolist() for a, b in zip(tokens.offsets[:-1], tokens.offsets[1:], strict=True)]
    order = tokens.length_order()
    assert np.all(np.diff(tokens.lengths[order]) >= 0)
    taken = tokens.take(order)
    assert [taken.ids[a:b].tolist() for a, b in zip(taken.offsets[:-1], taken.offsets[1:], strict=True)] == [
        doc[i] for i in order
    ]
    # a slice of the Arrow column (what a Ray block boundary hands over) rebases its offsets
    back = Tokens.from_arrow(tokens.to_arrow().slice(1, 3))
    assert [back.ids[a:b].tolist() for a, b in zip(back.offsets[:-1], back.offsets[1:], strict=True)] == doc[1:4]
    ids, mask = tokens.padded(np.array([2, 1]), pad_id=0)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == (2, len(doc[1]))
    assert ids[0, : len(doc[2])].tolist() == doc[2] and not ids[0, len(doc[2]) :].any()
    assert mask.sum(axis=1).tolist() == [len(doc[2]), len(doc[1])]


def test_encode_tokens_equals_padding_the_whole_batch_in_transformers(encoder):
    from transformers import AutoTokenizer

    from genre_ray.encoder import resolve_model_path

    batch = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))(
        TEXTS, truncation=True, max_length=256, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = encoder.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    vectors, stats = encoder.encode_with_stats(TEXTS, batch_size=2)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert stats.model_seconds > 0  # the model's own time: a GPU check's busy share
