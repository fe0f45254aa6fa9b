"""Distortion ranking: pair fractions with ties, and pixel metrics ordering families of edits."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation import ranking
from model.evaluation.edits import FAMILIES
from model.evaluation.images import read_images, sample
from model.evaluation.metrics import get_metric


def test_pair_fractions_count_ties_as_half():
    d = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 1.0, 5.0], [3.0, 3.0, 3.0, 3.0]])
    fr = {(i, j): f for i, j, f in ranking.pair_fractions(d)}
    assert fr[(0, 1)] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert fr[(0, 2)] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert fr[(1, 2)] == pytest.approx((1 + 1 + 1 + 0) / 4)


def test_l2_and_ssim_order_noise_and_blur_strengths(cifar_dir):
    images = read_images(cifar_dir, limit=40, seed=0)
    idx = sample(len(images), 20, 0)
    fams = {k: FAMILIES[k] for k in ("noise", "blur")}
    for name in ("l2", "ssim"):
        row = ranking.run_ranking(get_metric(name), images, fams, idx, pixel=32)
        noise = row["families"]["noise"]
        assert noise["mean"] == 1.0 and len(noise["pairs"]) == 6, name
        assert all(p["fraction"] == 1.0 for p in noise["pairs"])
        assert noise["mean_distance"] == sorted(noise["mean_distance"])
        assert row["mean"] == pytest.approx(np.mean([f["mean"] for f in row["families"].values()]))
        assert row["n_images"] == 20 and row["resolution"] == 32
