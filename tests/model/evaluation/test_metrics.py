"""The metric registry and SSIM: closed-form values, identities, the baselines' wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.evaluation.metrics import DEFAULT_METRICS, METRICS, get_metric
from model.evaluation.ssim import C1, ssim, ssim_cross


def _const(value: int, n: int = 1, size: int = 16) -> torch.Tensor:
    return torch.full((n, 3, size, size), value, dtype=torch.uint8)


def test_ssim_of_constant_images_has_its_closed_form():
    # var = cov = 0 → SSIM = (2ab + C1) / (a² + b² + C1)
    a, b = 100.0, 140.0
    assert float(ssim(_const(100), _const(140))) == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), rel=1e-5)


def test_ssim_is_one_for_identical_images_and_cross_matches_pairwise(cifar_images):
    x = cifar_images[:6]
    assert torch.allclose(ssim(x, x), torch.ones(6), atol=1e-5)
    cross = ssim_cross(x[:2], x)
    pair = torch.stack([ssim(x[i : i + 1].expand(6, -1, -1, -1), x) for i in range(2)])
    assert torch.allclose(cross, pair, atol=1e-5)
    assert cross[0].argmax() == 0 and cross[1].argmax() == 1


def test_l2_is_the_euclidean_distance_of_pixels_in_0_1():
    d = get_metric("l2").distance(_const(0, 2, 4), _const(255, 2, 4))
    assert np.allclose(d, np.sqrt(3 * 4 * 4))


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match="afv-random"):
        get_metric("lpips")


@pytest.mark.parametrize("name", ["afv", "dpool", "afv-random"])
def test_model_metrics_are_zero_on_identical_pairs_and_embed(tiny_run, cifar_images, name):
    metric = get_metric(name, tiny_run, device="cpu")
    x = cifar_images[:4]
    assert metric.resolution == 32
    assert np.allclose(metric.distance(x, x), 0.0)
    d = metric.distance(x, cifar_images[4:8])
    feats = torch.cat(list(metric.iter_embed(torch.cat([x, cifar_images[4:8]]))))
    assert np.allclose(d, (feats[:4] - feats[4:]).double().norm(dim=1).numpy(), rtol=1e-4)


def test_afv_random_differs_from_the_trained_model(tiny_run, cifar_images):
    trained, random = (get_metric(n, tiny_run, device="cpu") for n in ("afv", "afv-random"))
    assert trained.extractor.preset == random.extractor.preset
    x, y = cifar_images[:3], cifar_images[3:6]
    assert not np.allclose(trained.distance(x, y), random.distance(x, y))


def test_registry_lists_the_baselines_and_the_other_gan_representations():
    assert METRICS == ("afv", "l2", "ssim", "phash", "dpool", "afv-random", "bigan", "bigbigan", "gfmn-moments")
    assert {"afv", "l2", "ssim", "phash"} <= set(DEFAULT_METRICS)


def test_phash_is_zero_on_itself_positive_on_others_and_its_embedding_squares_to_hamming(cifar_images):
    metric = get_metric("phash")
    x, y = cifar_images[:6], cifar_images[6:12]
    assert metric.resolution is None and np.array_equal(metric.distance(x, x), np.zeros(6))
    d = metric.distance(x, y)
    assert np.all(d > 0) and np.all(d <= 64) and np.array_equal(d, np.round(d))
    bits = torch.cat(list(metric.iter_embed(torch.cat([x, y]))))
    assert bits.shape == (12, 64) and set(bits.unique().tolist()) <= {0.0, 1.0}
    assert np.allclose((bits[:6] - bits[6:]).pow(2).sum(1).numpy(), d)


def test_phash_matches_imagehash_and_survives_mild_edits(cifar_images):
    import imagehash
    from PIL import Image

    img = Image.fromarray(cifar_images[0].permute(1, 2, 0).numpy())
    bits = next(get_metric("phash").iter_embed(cifar_images[:1]))[0]
    assert np.array_equal(bits.numpy().astype(bool), imagehash.phash(img).hash.reshape(-1))
    brighter = (cifar_images[:1].float() * 1.1).clamp(0, 255).to(torch.uint8)
    assert get_metric("phash").distance(cifar_images[:1], brighter)[0] <= 6
