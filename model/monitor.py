"""Training monitor: Fisher distances between held-back real, training and generated images.

The AFV paper uses the Fisher similarity between validation and generated images to catch
over-fitting: when D memorises its training set, generated images move towards the training
images in Fisher space and away from held-out ones (fd_val_gen grows while fd_train_gen shrinks).
"""

from __future__ import annotations

import torch
from torch import nn

from model import fisher
from model.data import uint8_to_model
from model.nets import Discriminator, Generator, fold_spectral_norm


def _mean_fv(d: nn.Module, stats: fisher.FisherStats, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    inv = stats.inv_std()
    total = torch.zeros_like(stats.mean, dtype=torch.float64)
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        xb = uint8_to_model(xb) if xb.dtype == torch.uint8 else xb
        total += fisher.fisher_vectors(fisher.per_sample_grads(d, xb), stats, inv).double().sum(0)
    return total / x.shape[0]


@torch.no_grad()
def fisher_monitor(
    d: Discriminator, g: Generator, train: torch.Tensor, val: torch.Tensor, n_samples: int, seed: int
) -> dict[str, float]:
    """fd_val_gen, fd_train_gen and fd_val_train under Fisher statistics from `n_samples` of G."""
    device = next(d.parameters()).device
    fd = fold_spectral_norm(d)
    stats = fisher.estimate_stats(fd, g, n_samples, seed=seed + 7).to(device)
    n = val.shape[0]
    z = torch.randn(n, g.nz, generator=torch.Generator().manual_seed(seed + 8)).to(device)
    gen = torch.cat([g(z[i : i + 64]) for i in range(0, n, 64)])
    m_val = _mean_fv(fd, stats, val.to(device))
    m_train = _mean_fv(fd, stats, train[:n].to(device))
    m_gen = _mean_fv(fd, stats, gen)
    return {
        "fd_val_gen": float((m_val - m_gen).norm()),
        "fd_train_gen": float((m_train - m_gen).norm()),
        "fd_val_train": float((m_val - m_train).norm()),
    }
