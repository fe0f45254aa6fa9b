"""BiGAN: the joint discriminator learns, and E and G move towards inverting each other."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.bigan import BiGANDiscriminator, BiGANTrainer, bigan_step, reconstruction_error
from model.encoder import Encoder
from model.presets import PRESETS
from model.train import TrainConfig


def _cfg(method: str = "bigan", **kw) -> TrainConfig:
    return TrainConfig(
        data="", out="", preset="tiny", method=method, device="cpu", monitor_samples=32, holdout=32, **kw
    )


def _mlp(i: int, o: int, h: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.LeakyReLU(0.2), nn.Linear(h, h), nn.LeakyReLU(0.2), nn.Linear(h, o))


class _ToyJointD(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp(4, 1, 128)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, z], 1)).squeeze(1)


def _ring(n: int, gen: torch.Generator) -> torch.Tensor:
    """2-D toy data: 8 small Gaussians on a circle of radius 2."""
    angle = torch.randint(0, 8, (n,), generator=gen) * (2 * math.pi / 8)
    return torch.stack([angle.cos(), angle.sin()], 1) * 2 + 0.05 * torch.randn(n, 2, generator=gen)


@pytest.mark.slow
def test_encoder_and_generator_move_towards_inverting_each_other_on_a_2d_toy():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    g, e, d = _mlp(2, 2), _mlp(2, 2), _ToyJointD()
    opt_d = torch.optim.Adam(d.parameters(), 3e-4, betas=(0.5, 0.999))
    opt_ge = torch.optim.Adam([*g.parameters(), *e.parameters()], 3e-4, betas=(0.5, 0.999))
    x = _ring(1000, gen)

    def errors() -> tuple[float, float]:
        with torch.no_grad():
            r = g(e(x))
        matched = float((r - x).pow(2).sum(1).mean())
        shuffled = float((r - x.roll(1, 0)).pow(2).sum(1).mean())  # G(E(x)) against another image
        return matched, matched / shuffled

    before, ratio_before = errors()
    for _ in range(1000):
        bigan_step(d, g, e, _ring(128, gen), torch.randn(128, 2, generator=gen), opt_d, opt_ge)
    after, ratio_after = errors()
    assert after < 0.5 * before, f"‖G(E(x)) − x‖² did not fall: {before:.3f} → {after:.3f}"
    # G(E(x)) is much nearer x than other data points: E carries x's identity and G decodes it
    assert ratio_before > 0.9 and ratio_after < 0.5, (ratio_before, ratio_after)


def test_a_few_bigan_steps_decrease_the_joint_discriminator_loss(cifar_images):
    trainer = BiGANTrainer(_cfg(), PRESETS["tiny"], cifar_images, torch.device("cpu"))
    losses = [trainer.train_step()["loss_d"] for _ in range(20)]
    first, last = sum(losses[:5]) / 5, sum(losses[10:]) / 10
    assert first > 1.2  # ≈ 2 log 2 at chance
    assert last < first - 0.2, f"D loss did not fall: {first:.3f} → {last:.3f}"


def test_bigan_updates_d_g_and_e_from_one_forward_pass(cifar_images):
    trainer = BiGANTrainer(_cfg(), PRESETS["tiny"], cifar_images, torch.device("cpu"))
    before = {
        n: [p.detach().clone() for p in m.parameters()]
        for n, m in (("D", trainer.d), ("G", trainer.g), ("E", trainer.e))
    }
    trainer.train_step()
    for name, mod in (("D", trainer.d), ("G", trainer.g), ("E", trainer.e)):
        moved = sum(not torch.equal(a, b) for a, b in zip(before[name], mod.parameters()))
        assert moved == len(before[name]), f"{name}: only {moved}/{len(before[name])} tensors were updated"


def test_joint_discriminator_depends_on_both_the_image_and_the_latent():
    torch.manual_seed(0)
    d = BiGANDiscriminator(PRESETS["tiny"]).eval()
    x, z = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 32)
    base = d(x, z)
    assert base.shape == (4,)
    assert not torch.allclose(base, d(x, torch.randn(4, 32)))
    assert not torch.allclose(base, d(torch.rand(4, 3, 32, 32) * 2 - 1, z))


def test_reconstruction_error_is_zero_for_an_exact_inverse():
    class Identity(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x

    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    assert reconstruction_error(Identity(), Identity(), x) == 0.0
    enc = Encoder(PRESETS["tiny"])
    assert enc(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
