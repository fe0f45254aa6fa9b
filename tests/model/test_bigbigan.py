"""BigBiGAN: unary + joint hinge losses, a decoupled encoder optimiser and truncated sampling."""

from __future__ import annotations

import pytest
import torch

from model.bigbigan import BigBiGANDiscriminator, BigBiGANTrainer, d_loss, eg_loss
from model.nets import Generator, truncated_normal
from model.presets import PRESETS
from model.train import TrainConfig


def _trainer(cifar_images, **kw) -> BigBiGANTrainer:
    cfg = TrainConfig(
        data="", out="", preset="tiny", method="bigbigan", device="cpu", monitor_samples=32, holdout=32, **kw
    )
    return BigBiGANTrainer(cfg, PRESETS["tiny"], cifar_images, torch.device("cpu"))


def test_a_few_bigbigan_steps_decrease_the_hinge_losses_that_see_images(cifar_images):
    trainer = _trainer(cifar_images)
    rows = [trainer.train_step() for _ in range(20)]
    assert sum(rows[0][k] for k in ("loss_d_x", "loss_d_z", "loss_d_xz")) == pytest.approx(rows[0]["loss_d"])
    assert rows[0]["loss_d"] > 5.0  # three hinge terms of ≈ 2 each at chance
    # S_x and S_xz learn to tell data from samples; on S_z alone the 10×-faster encoder keeps pace with D
    seen = [r["loss_d_x"] + r["loss_d_xz"] for r in rows]
    first, last = sum(seen[:5]) / 5, sum(seen[10:]) / 10
    assert last < first - 0.2, f"image-seeing D losses did not fall: {first:.3f} → {last:.3f}"


def test_discriminator_gives_unary_and_joint_scores():
    torch.manual_seed(0)
    d = BigBiGANDiscriminator(PRESETS["tiny"]).eval()
    x, z = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(3, 32)
    s_x, s_z, s_xz = d(x, z)
    assert s_x.shape == s_z.shape == s_xz.shape == (3,)
    s_x2, s_z2, _ = d(x, torch.randn(3, 32))
    assert torch.allclose(s_x, s_x2) and not torch.allclose(s_z, s_z2)  # S_x ignores z, S_z depends on it


def test_hinge_losses_follow_the_paper():
    real = (torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([-1.0]))
    fake = (torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    # D: Σ relu(1 − real) + relu(1 + fake) = (0 + 0) + (0.5 + 1) + (2 + 2)
    assert float(d_loss(real, fake)) == pytest.approx(5.5)
    # E, G: Σ real − fake = 4 + 0.5 − 2
    assert float(eg_loss(real, fake)) == pytest.approx(2.5)


def test_encoder_has_its_own_optimiser_at_ten_times_the_generator_rate(cifar_images):
    trainer = _trainer(cifar_images)
    lr = lambda opt: opt.param_groups[0]["lr"]  # noqa: E731
    assert lr(trainer.opt_e) == pytest.approx(10 * lr(trainer.opt_g))
    assert set(trainer.optimizers()) == {"D", "G", "E"}
    assert lr(_trainer(cifar_images, lr_e=1e-5).opt_e) == pytest.approx(1e-5)


def test_truncated_latents_stay_within_the_threshold_and_are_seeded():
    z = truncated_normal(500, 64, 0.5, torch.Generator().manual_seed(3))
    assert z.shape == (500, 64) and float(z.abs().max()) <= 0.5
    assert torch.equal(z, truncated_normal(500, 64, 0.5, torch.Generator().manual_seed(3)))
    assert float(z.std()) < 0.35  # narrower than N(0, 1)
    with pytest.raises(ValueError, match="positive"):
        truncated_normal(2, 2, 0.0)


def test_generator_samples_with_truncation():
    torch.manual_seed(0)
    g = Generator(PRESETS["tiny"]).eval()
    x = g.sample(4, torch.Generator().manual_seed(0), truncation=1.0)
    assert x.shape == (4, 3, 32, 32) and float(x.detach().abs().max()) <= 1.0
