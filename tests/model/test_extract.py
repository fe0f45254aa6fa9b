"""The AFV extractor on a trained tiny run: distances, shares, set distances, stored statistics."""

from __future__ import annotations

import pytest
import torch

from model.extract import FISHER_FILE, AFVExtractor
from model.loading import load_embedder


@pytest.fixture(scope="module")
def extractor(tiny_run) -> AFVExtractor:
    return load_embedder(tiny_run, device="cpu")


def test_identical_images_are_at_distance_zero(extractor, cifar_images):
    report = extractor.distance(cifar_images[0], cifar_images[0])
    assert report.distance == 0.0


def test_block_shares_of_the_squared_distance_sum_to_one(extractor, cifar_images):
    report = extractor.distance(cifar_images[0], cifar_images[100])
    assert report.distance > 0
    assert set(report.layers) == {"blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"}
    assert sum(report.layers.values()) == pytest.approx(1.0)
    v = extractor.afv(cifar_images[[0, 100]])
    assert report.distance == pytest.approx(float((v[0] - v[1]).norm()), rel=1e-5)


def test_set_distance_is_zero_for_the_same_set_and_positive_for_different_sets(extractor, cifar_images):
    a, b = cifar_images[:30], cifar_images[150:180]
    assert extractor.set_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert extractor.set_distance(a, b) > 0


def test_streaming_gives_the_same_vectors_as_one_batch(extractor, cifar_images):
    x = cifar_images[:10]
    extractor.batch_size = 3
    streamed = torch.cat(list(extractor.iter_afvs(x)))
    extractor.batch_size = 64
    torch.testing.assert_close(streamed, extractor.afv(x), rtol=1e-3, atol=1e-3)


def test_extraction_uses_the_stored_fisher_statistics(tiny_run, cifar_images, tmp_path):
    saved = torch.load(tiny_run / FISHER_FILE, weights_only=True)
    ext = load_embedder(tiny_run, device="cpu")
    torch.testing.assert_close(ext.stats.mean, saved["mean"])
    torch.testing.assert_close(ext.stats.var, saved["var"])
    from model import fisher

    grads = fisher.per_sample_grads(ext.d, cifar_images[:2].float() / 127.5 - 1)
    expected = (grads - saved["mean"]) / (saved["var"] + ext.stats.eps_rel * saved["var"].mean()).sqrt()
    torch.testing.assert_close(ext.afv(cifar_images[:2]), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["l2", "power"])
def test_normalised_extractors_give_unit_vectors(tiny_run, cifar_images, method):
    ext = load_embedder(tiny_run, device="cpu", normalization=method)
    torch.testing.assert_close(ext.afv(cifar_images[:4]).norm(dim=1), torch.ones(4))


def test_without_a_model_a_fresh_tiny_model_is_used_with_a_loud_warning(caplog, monkeypatch):
    import model.loading

    monkeypatch.setattr(model.loading, "default_run_dir", lambda: None)
    ext = load_embedder(None, device="cpu")
    assert ext.preset.name == "tiny"
    assert any("NO TRAINED MODEL" in r.getMessage() for r in caplog.records)
