"""BiGAN (Donahue, Krähenbühl & Darrell 2017): an encoder E learnt jointly with G against a joint D(x, z).

D sees (x, E(x)) pairs from data and (G(z), z) pairs from the generator. Its image path is the
discriminator's convolutional trunk; its latent path is linear, merged into the image path's first
hidden layer (a per-channel shift) and, through an MLP, into the joint head. G and E are trained
with the 'inverse' objective (labels swapped, the non-saturating form of the minimax game), and D,
G and E are updated simultaneously from one forward pass. The representation is E(x).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from model.data import uint8_to_model
from model.encoder import Encoder
from model.nets import Generator, resnet_trunk
from model.presets import Preset
from model.trainer import BaseTrainer, TrainConfig, apply_grads, update_ema


def latent_mlp(nz: int, width: int) -> nn.Sequential:
    """The discriminator's latent path: two spectrally normalised linear layers with leaky ReLUs."""
    return nn.Sequential(
        spectral_norm(nn.Linear(nz, width)),
        nn.LeakyReLU(0.2),
        spectral_norm(nn.Linear(width, width)),
        nn.LeakyReLU(0.2),
    )


class BiGANDiscriminator(nn.Module):
    """D(x, z) → N logits that the pair came from the data (x, E(x)) rather than the generator (G(z), z)."""

    def __init__(self, preset: Preset):
        super().__init__()
        ndf, nh = preset.ndf, 4 * preset.ndf
        self.blocks = resnet_trunk(ndf, preset.resolution, use_sn=True)
        self.z_merge = spectral_norm(nn.Linear(preset.nz, ndf))
        self.z_path = latent_mlp(preset.nz, nh)
        self.joint = nn.Sequential(
            spectral_norm(nn.Linear(ndf + nh, nh)), nn.LeakyReLU(0.2), spectral_norm(nn.Linear(nh, 1))
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](x) + self.z_merge(z)[:, :, None, None]
        hx = F.relu(self.blocks[1:](h)).mean(dim=(2, 3))
        return self.joint(torch.cat([hx, self.z_path(z)], dim=1)).squeeze(1)


def d_loss(s_real: torch.Tensor, s_fake: torch.Tensor) -> torch.Tensor:
    """−E[log σ(D(x, E(x)))] − E[log(1 − σ(D(G(z), z)))]."""
    return F.softplus(-s_real).mean() + F.softplus(s_fake).mean()


def inverse_loss(s_real: torch.Tensor, s_fake: torch.Tensor) -> torch.Tensor:
    """G and E's 'inverse' objective: the D loss with labels swapped (data pairs should look generated)."""
    return F.softplus(s_real).mean() + F.softplus(-s_fake).mean()


def simultaneous_step(losses: list[tuple[torch.Tensor, list[nn.Parameter], torch.optim.Optimizer]]) -> None:
    """Gradients of every (loss, its parameters) pair from the same graph, then every optimiser steps."""
    grads = [
        torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
        for i, (loss, params, _) in enumerate(losses)
    ]
    for (_, params, opt), g in zip(losses, grads):
        apply_grads(params, g)
        opt.step()


def bigan_step(
    d: nn.Module,
    g: nn.Module,
    e: nn.Module,
    x: torch.Tensor,
    z: torch.Tensor,
    opt_d: torch.optim.Optimizer,
    opt_ge: torch.optim.Optimizer,
) -> dict[str, float]:
    """One simultaneous BiGAN update of D (discriminate pairs) and G, E (inverse objective)."""
    s_real, s_fake = d(x, e(x)), d(g(z), z)
    ld, leg = d_loss(s_real, s_fake), inverse_loss(s_real, s_fake)
    simultaneous_step([(ld, list(d.parameters()), opt_d), (leg, list(g.parameters()) + list(e.parameters()), opt_ge)])
    return {"loss_d": ld.item(), "loss_eg": leg.item(), "s_real": s_real.mean().item(), "s_fake": s_fake.mean().item()}


@torch.no_grad()
def reconstruction_error(g: nn.Module, e: nn.Module, x_uint8: torch.Tensor, batch: int = 128) -> float:
    """Mean squared error per pixel (images in [-1, 1]) of G(E(x)): how well G inverts E."""
    device = next(g.parameters()).device
    total, n = 0.0, 0
    for i in range(0, x_uint8.shape[0], batch):
        x = uint8_to_model(x_uint8[i : i + batch].to(device))
        mu = e.mean_and_scale(x)[0] if isinstance(e, Encoder) else e(x)
        total += float((g(mu) - x).pow(2).mean(dim=(1, 2, 3)).sum())
        n += x.shape[0]
    return total / max(n, 1)


class EncoderGANTrainer(BaseTrainer):
    """What BiGAN and BigBiGAN share: G, E, their EMAs, the inversion monitor and the export."""

    stochastic = False

    def __init__(self, cfg: TrainConfig, preset: Preset, images: torch.Tensor, device: torch.device):
        super().__init__(cfg, preset, images, device)
        self.g = Generator(preset).to(device)
        self.e = Encoder(preset, stochastic=self.stochastic).to(device)
        self.d = self.make_discriminator(preset).to(device)
        self.g_ema, self.e_ema = copy.deepcopy(self.g).eval(), copy.deepcopy(self.e).eval()

    def make_discriminator(self, preset: Preset) -> nn.Module:
        raise NotImplementedError

    def after_step(self) -> None:
        update_ema(self.g_ema, self.g, self.cfg.ema)
        update_ema(self.e_ema, self.e, self.cfg.ema)
        self.step += 1

    def modules(self) -> dict[str, nn.Module]:
        return {"D": self.d, "G": self.g, "E": self.e, "G_ema": self.g_ema, "E_ema": self.e_ema}

    @torch.no_grad()
    def sample_grid(self, n: int = 64) -> torch.Tensor:
        return self.g_ema(self.fixed_latents(n))

    def monitor(self) -> dict[str, float]:
        n = self.cfg.monitor_samples
        return {
            "recon_val": reconstruction_error(self.g_ema, self.e_ema, self.val[:n]),
            "recon_train": reconstruction_error(self.g_ema, self.e_ema, self.train[:n]),
        }

    def export(self) -> dict:
        return {"E_ema": self.e_ema.state_dict(), "G_ema": self.g_ema.state_dict(), "D": self.d.state_dict()}


class BiGANTrainer(EncoderGANTrainer):
    """BiGAN: one optimiser for D, one for G and E together (lr_e = lr_g unless set)."""

    method = "bigan"
    fields = ["loss_d", "loss_eg", "s_real", "s_fake", "recon_val", "recon_train"]

    def __init__(self, cfg: TrainConfig, preset: Preset, images: torch.Tensor, device: torch.device):
        super().__init__(cfg, preset, images, device)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=self.betas)
        self.opt_ge = torch.optim.Adam(
            [
                {"params": self.g.parameters(), "lr": self.lr_g},
                {"params": self.e.parameters(), "lr": cfg.lr_e or self.lr_g},
            ],
            betas=self.betas,
        )

    def make_discriminator(self, preset: Preset) -> nn.Module:
        return BiGANDiscriminator(preset)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"D": self.opt_d, "GE": self.opt_ge}

    def train_step(self) -> dict[str, float]:
        x, z = self.real_batch(), self.latents()
        out = bigan_step(self.d, self.g, self.e, x, z, self.opt_d, self.opt_ge)
        self.after_step()
        return out
