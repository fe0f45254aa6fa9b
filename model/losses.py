"""EBM-GAN objectives: least-squares discriminator/generator losses and the MCMC-inspired generator term.

D(x) is read as an unnormalised log-density. The discriminator is trained with least-squares targets
(+1 on data, −1 on generator samples); the generator with the least-squares target +1. With gamma > 0
the generator additionally regresses onto one Langevin step on D from its own samples,
x* = G(z) + gamma·∇x D(G(z)) + noise_std·ε, i.e. it is trained as an amortised MCMC sampler of exp(D).
"""

from __future__ import annotations

import torch
from torch import nn


def d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares discriminator loss: ½E[(D(x)−1)²] + ½E[(D(G(z))+1)²]."""
    return 0.5 * ((d_real - 1).pow(2).mean() + (d_fake + 1).pow(2).mean())


def g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares generator loss: ½E[(D(G(z))−1)²]."""
    return 0.5 * (d_fake - 1).pow(2).mean()


def langevin_target(
    d: nn.Module, x_fake: torch.Tensor, gamma: float, noise_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One Langevin step x + gamma·∇x D(x) + noise_std·ε from the generator's samples (no grad)."""
    x = x_fake.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(d(x).sum(), x)
    noise = torch.randn(x.shape, generator=generator).to(x.device) if noise_std > 0 else 0.0
    return (x + gamma * grad + noise_std * noise).clamp(-1, 1).detach()


def mcmc_loss(x_fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared distance of G(z) to its Langevin target, summed over pixels, averaged over the batch."""
    return (x_fake - target).pow(2).flatten(1).sum(1).mean()
