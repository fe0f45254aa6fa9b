"""BigBiGAN (Donahue & Simonyan 2019): BiGAN with unary scores, hinge losses and a decoupled encoder.

The discriminator has an image-only branch F(x), a latent-only branch H(z) and a joint branch
J(F(x), H(z)); each gives a score (S_x, S_z, S_xz) and the losses are hinge losses summed over the
three. The encoder is a Gaussian (mean and scale; the representation is the mean) with its own
optimiser at 10× the generator's learning rate (the paper's ablation: decoupled E learns better
features). Samples can use BigGAN's truncation trick (`model.nets.truncated_normal`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from model.bigan import EncoderGANTrainer, latent_mlp, simultaneous_step
from model.nets import resnet_trunk, sum_tensors, truncated_normal
from model.presets import Preset
from model.trainer import TrainConfig

Scores = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BigBiGANDiscriminator(nn.Module):
    """D(x, z) → (S_x, S_z, S_xz): unary image, unary latent and joint scores.

    F(x) is the spectral-norm residual trunk, sum-pooled as in BigGAN's discriminator: with mean
    pooling the Lipschitz-bounded scores stayed within ±0.1 of each other and the hinge losses at chance.
    """

    def __init__(self, preset: Preset):
        super().__init__()
        ndf, nh = preset.ndf, 4 * preset.ndf
        self.f = resnet_trunk(ndf, preset.resolution, use_sn=True)
        self.h = latent_mlp(preset.nz, nh)
        self.j = nn.Sequential(
            spectral_norm(nn.Linear(ndf + nh, nh)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(nh, nh)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(nh, 1)),
        )
        self.s_x = spectral_norm(nn.Linear(ndf, 1))
        self.s_z = spectral_norm(nn.Linear(nh, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:
        fx = F.relu(self.f(x)).sum(dim=(2, 3))  # BigGAN's sum pooling: mean pooling kept every score near 0
        hz = self.h(z)
        sxz = self.j(torch.cat([fx, hz], dim=1))
        return self.s_x(fx).squeeze(1), self.s_z(hz).squeeze(1), sxz.squeeze(1)


def d_terms(real: Scores, fake: Scores) -> list[torch.Tensor]:
    """The hinge loss of each score: E_data[max(0, 1 − s)] + E_gen[max(0, 1 + s)] for S_x, S_z, S_xz."""
    return [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)]


def d_loss(real: Scores, fake: Scores) -> torch.Tensor:
    """The discriminator's loss: the three hinge losses summed."""
    return sum_tensors(d_terms(real, fake))


def eg_loss(real: Scores, fake: Scores) -> torch.Tensor:
    """Σ over the three scores of E_data[s] − E_gen[s]: E pushes data pairs, G generated pairs, across."""
    return sum_tensors(r.mean() - f.mean() for r, f in zip(real, fake))


class BigBiGANTrainer(EncoderGANTrainer):
    """BigBiGAN: separate Adam optimisers for D (4e-4), G (5e-5) and E (10 × G's: 5e-4)."""

    method = "bigbigan"
    stochastic = True
    # BigGAN's lr_D = 4 × lr_G; with lr_G = 2e-4 the 10×-faster encoder (2e-3) outran D and scaled its
    # latents up without limit (scores in the thousands within 50 steps on the tiny preset).
    default_lr_g = 5e-5
    fields = [
        "loss_d",
        "loss_eg",
        "loss_d_x",
        "loss_d_z",
        "loss_d_xz",
        "gap_x",
        "gap_z",
        "gap_xz",
        "recon_val",
        "recon_train",
    ]

    def __init__(self, cfg: TrainConfig, preset: Preset, images: torch.Tensor, device: torch.device):
        super().__init__(cfg, preset, images, device)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=self.betas)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=self.lr_g, betas=self.betas)
        self.opt_e = torch.optim.Adam(self.e.parameters(), lr=cfg.lr_e or 10 * self.lr_g, betas=self.betas)

    def make_discriminator(self, preset: Preset) -> nn.Module:
        return BigBiGANDiscriminator(preset)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"D": self.opt_d, "G": self.opt_g, "E": self.opt_e}

    def train_step(self) -> dict[str, float]:
        x, z = self.real_batch(), self.latents()
        real, fake = self.d(x, self.e(x, generator=self.rng)), self.d(self.g(z), z)
        terms = d_terms(real, fake)
        ld, leg = sum_tensors(terms), eg_loss(real, fake)
        simultaneous_step(
            [
                (ld, list(self.d.parameters()), self.opt_d),
                (leg, list(self.g.parameters()), self.opt_g),
                (leg, list(self.e.parameters()), self.opt_e),
            ]
        )
        self.after_step()
        return {
            "loss_d": ld.item(),
            "loss_eg": leg.item(),
            **{k: t.item() for k, t in zip(("loss_d_x", "loss_d_z", "loss_d_xz"), terms)},
            **{k: (r.mean() - f.mean()).item() for k, r, f in zip(("gap_x", "gap_z", "gap_xz"), real, fake)},
        }

    @torch.no_grad()
    def sample_grid(self, n: int = 64) -> torch.Tensor:
        if self.cfg.truncation is None:
            return super().sample_grid(n)
        z = truncated_normal(n, self.preset.nz, self.cfg.truncation, torch.Generator().manual_seed(1234))
        return self.g_ema(z.to(self.device))
