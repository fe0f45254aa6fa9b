"""The AFV paper's EBM-GAN (method 'afv'): D(x) is an unnormalised log-density, G is trained to sample it.

AFVs are D's Fisher scores (`model.extract`). This module holds the method's trainer; the training
loop is `model.train`, the shared trainer base `model.trainer`, its registration `model.methods.afv`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from model import losses
from model.checkpoint import state_hash
from model.extract import FISHER_FILE, save_stats
from model.fisher import estimate_stats
from model.monitor import fisher_monitor
from model.nets import Discriminator, Generator, fold_spectral_norm
from model.presets import Preset
from model.trainer import BaseTrainer, TrainConfig, update_ema


class EBMGANTrainer(BaseTrainer):
    """The EBM-GAN of the AFV paper: D(x) is an unnormalised log-density; AFVs are its Fisher scores."""

    method = "afv"
    fields = ["loss_d", "loss_g", "loss_mcmc", "d_real", "d_fake", "fd_val_gen", "fd_train_gen", "fd_val_train"]

    def __init__(self, cfg: TrainConfig, preset: Preset, images: torch.Tensor, device: torch.device):
        super().__init__(cfg, preset, images, device)
        self.d, self.g = Discriminator(preset).to(device), Generator(preset).to(device)
        self.g_ema = copy.deepcopy(self.g).eval()
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=self.betas)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=self.lr_g, betas=self.betas)

    def modules(self) -> dict[str, nn.Module]:
        return {"D": self.d, "G": self.g, "G_ema": self.g_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"D": self.opt_d, "G": self.opt_g}

    def train_step(self) -> dict[str, float]:
        x = self.real_batch()
        z = self.latents()
        fake = self.g(z)
        d_real, d_fake = self.d(x), self.d(fake.detach())
        ld = losses.d_loss(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        ld.backward()
        self.opt_d.step()

        d_gen = self.d(fake)
        lg = losses.g_loss(d_gen)
        lm = torch.zeros((), device=self.device)
        if self.cfg.gamma > 0:
            target = losses.langevin_target(self.d, fake, self.cfg.gamma, self.cfg.noise_std, self.rng)
            lm = losses.mcmc_loss(fake, target)
        self.opt_g.zero_grad(set_to_none=True)
        (lg + lm).backward()
        self.opt_g.step()
        update_ema(self.g_ema, self.g, self.cfg.ema)
        self.step += 1
        return {
            "loss_d": ld.item(),
            "loss_g": lg.item(),
            "loss_mcmc": lm.item(),
            "d_real": d_real.mean().item(),
            "d_fake": d_fake.mean().item(),
        }

    @torch.no_grad()
    def sample_grid(self, n: int = 64) -> torch.Tensor:
        return self.g_ema(self.fixed_latents(n))

    def monitor(self) -> dict[str, float]:
        return fisher_monitor(self.d, self.g_ema, self.train, self.val, self.cfg.monitor_samples, self.cfg.seed)

    def export(self) -> dict:
        return {"D": self.d.state_dict(), "G_ema": self.g_ema.state_dict(), "normalization": "none"}

    def finish(self, out: Path) -> None:
        """Fisher statistics of the final D under the EMA generator, pinned to D's hash."""
        stats = estimate_stats(fold_spectral_norm(self.d), self.g_ema, self.fisher_samples, progress=False)
        save_stats(out / FISHER_FILE, stats, state_hash(self.d))
