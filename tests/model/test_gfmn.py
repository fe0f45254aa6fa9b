"""GFMN: moment matching against a fixed feature network lowers the moment loss; moments as a set distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import uint8_to_model
from model.gfmn import (
    AdamMovingAverage,
    GFMNTrainer,
    MomentEmbedder,
    feature_net,
    feature_source,
    moment_loss,
    moments,
    set_distance,
)
from model.loading import load_embedder
from model.presets import PRESETS
from model.train import TrainConfig


def _trainer(features, cifar_images, **kw) -> GFMNTrainer:
    cfg = TrainConfig(
        data="",
        out="",
        preset="tiny",
        method="gfmn",
        device="cpu",
        features=str(features),
        holdout=32,
        batch_size=64,
        seed=1,
        **kw,
    )
    return GFMNTrainer(cfg, PRESETS["tiny"], cifar_images, torch.device("cpu"))


@pytest.mark.slow
def test_gfmn_training_lowers_the_moment_loss(tiny_run, cifar_images):
    tr = _trainer(tiny_run, cifar_images)
    z = torch.randn(256, PRESETS["tiny"].nz, generator=torch.Generator().manual_seed(5))

    def loss() -> float:
        with torch.no_grad():
            real = moments(tr.features(uint8_to_model(tr.train[:256])))
            fake = moments(tr.features(tr.g(z)))
            return float(sum(moment_loss(real, fake)))

    before = loss()
    for _ in range(40):
        tr.train_step()
    after = loss()
    assert after < 0.5 * before, f"moment loss did not fall: {before:.3f} → {after:.3f}"


def test_gfmn_needs_a_feature_run(cifar_images):
    cfg = TrainConfig(data="", out="", preset="tiny", method="gfmn", device="cpu", holdout=32)
    with pytest.raises(ValueError, match="--features"):
        GFMNTrainer(cfg, PRESETS["tiny"], cifar_images, torch.device("cpu"))


def test_adam_moving_average_tracks_a_noisy_difference():
    torch.manual_seed(0)
    ama = AdamMovingAverage([50])
    opt = torch.optim.Adam(ama.parameters(), lr=1e-2)
    target = torch.linspace(-1, 1, 50)
    for _ in range(1500):
        opt.zero_grad()
        ama.loss([target + 0.5 * torch.randn(50)]).backward()
        opt.step()
    assert float((ama.v[0] - target).detach().abs().mean()) < 0.1  # the average, not the last noisy sample


def test_moment_set_distance_is_zero_for_one_set_and_grows_with_difference(tiny_run, cifar_images):
    net = feature_net(feature_source(tiny_run))
    cats, dogs = cifar_images[:30], cifar_images[30:60]
    assert set_distance(net, cats, cats) == pytest.approx(0.0, abs=1e-9)
    assert set_distance(net, cats, dogs) > 0
    noise = torch.randint(0, 256, cats.shape, dtype=torch.uint8)
    assert set_distance(net, cats, noise) > set_distance(net, cats, dogs)


def test_moment_embedder_distance_is_the_one_image_moment_loss(tiny_run, cifar_images):
    emb = load_embedder(tiny_run, device="cpu", embedding="moments")
    assert isinstance(emb, MomentEmbedder)
    a, b = cifar_images[:1], cifar_images[1:2]
    report = emb.distance(a[0], b[0])
    assert report.distance == pytest.approx(emb.set_distance(a, b), rel=1e-4)
    assert sum(report.layers.values()) == pytest.approx(1.0)
    assert emb.kind == "gfmn-moments" and emb.dim == emb.embed(a).shape[1]


def test_moment_set_distance_from_vectors_matches_the_one_from_images(tiny_run, cifar_images):
    emb = load_embedder(tiny_run, device="cpu", embedding="moments")
    cats, dogs = cifar_images[:20], cifar_images[30:45]
    from_images = emb.set_distance(cats, dogs)
    assert from_images == pytest.approx(set_distance(emb.net, cats, dogs), rel=1e-6)
    v = emb.embed(torch.cat([cats, dogs])).numpy()  # as the HTTP service has them: one batch, float32 rows
    assert emb.set_distance_of(v[:20], v[20:]) == pytest.approx(from_images, rel=1e-6)
    mean_only = float(np.linalg.norm(v[:20].astype(np.float64).mean(0) - v[20:].astype(np.float64).mean(0)))
    assert from_images > mean_only  # the variance term the plain mean-vector distance leaves out
