"""The classifier: spectrum shape, logits over the vocabulary, save/load round trip, deterministic outputs."""

from __future__ import annotations

import json

import torch

from genre_ray.model import META, ClassifierSpec, GenreClassifier, load_classifier, save_classifier

SPEC = ClassifierSpec(input_dim=12, num_genres=5, hidden_dims=[16, 8], spectrum_dim=6, dropout=0.3)
VOCAB = ["Action", "Comedy", "Drama", "Horror", "Romance"]


def test_spectrum_and_logit_shapes() -> None:
    model = GenreClassifier(SPEC).eval()
    x = torch.randn(7, 12)
    assert model.spectrum(x).shape == (7, SPEC.spectrum_dim)
    assert model(x).shape == (7, SPEC.num_genres)


def test_loaded_checkpoint_is_deterministic(tmp_path) -> None:
    version = save_classifier(GenreClassifier(SPEC), SPEC, VOCAB, tmp_path, threshold=0.35)
    x = torch.randn(9, 12)
    first, second = load_classifier(tmp_path), load_classifier(tmp_path)
    assert not first.model.training  # eval mode: dropout off
    assert first.model_version == second.model_version == version
    assert first.vocab == VOCAB and first.threshold == 0.35
    with torch.no_grad():
        assert torch.equal(first.model.spectrum(x), second.model.spectrum(x))
        assert torch.equal(first.model.spectrum(x), first.model.spectrum(x))
        assert torch.equal(first.model(x), second.model(x))


def test_version_tracks_weights_and_old_meta_loads(tmp_path) -> None:
    torch.manual_seed(0)
    a = save_classifier(GenreClassifier(SPEC), SPEC, VOCAB, tmp_path / "a")
    torch.manual_seed(1)
    b = save_classifier(GenreClassifier(SPEC), SPEC, VOCAB, tmp_path / "b")
    assert a != b
    meta = json.loads((tmp_path / "a" / META).read_text())
    del meta["threshold"]  # a model.json written before thresholds were saved
    (tmp_path / "a" / META).write_text(json.dumps(meta))
    assert load_classifier(tmp_path / "a").threshold == 0.5


def test_ddp_style_prefix_is_not_saved(tmp_path) -> None:
    class Wrapped(torch.nn.Module):  # what prepare_model's DistributedDataParallel looks like: .module
        def __init__(self) -> None:
            super().__init__()
            self.module = GenreClassifier(SPEC)

    save_classifier(Wrapped(), SPEC, VOCAB, tmp_path)
    assert isinstance(load_classifier(tmp_path).model, GenreClassifier)
