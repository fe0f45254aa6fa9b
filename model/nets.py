"""ResNet generator and spectrally normalised ResNet discriminator of the AFV paper (32 or 64 px)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from model.presets import Preset


def sum_tensors(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum() of one or more tensors, typed as a tensor (sum's start value 0 makes it `Tensor | int` to mypy)."""
    total = sum(terms)
    assert isinstance(total, torch.Tensor), "sum_tensors needs at least one term"
    return total


def _n_stages(resolution: int) -> int:
    """Number of 2x resampling stages between 4x4 and `resolution`."""
    if resolution not in (32, 64):
        raise ValueError(f"resolution must be 32 or 64, got {resolution}")
    return 3 if resolution == 32 else 4


def _sn(module: nn.Module, use_sn: bool) -> nn.Module:
    return spectral_norm(module) if use_sn else module


class DBlock(nn.Module):
    """Discriminator residual block: (ReLU) conv3x3, ReLU, conv3x3, optional 2x avg-pool; 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool, use_sn: bool = True):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = _sn(nn.Conv2d(cin, cout, 3, padding=1), use_sn)
        self.conv2 = _sn(nn.Conv2d(cout, cout, 3, padding=1), use_sn)
        self.learn_sc = cin != cout or down
        if self.learn_sc:
            self.shortcut = _sn(nn.Conv2d(cin, cout, 1), use_sn)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        return F.avg_pool2d(h, 2) if self.down else h

    def _skip(self, x: torch.Tensor) -> torch.Tensor:
        if not self.learn_sc:
            return x
        if self.first:  # pool before the 1x1 conv, as in SNGAN's optimized first block
            return self.shortcut(F.avg_pool2d(x, 2) if self.down else x)
        x = self.shortcut(x)
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(x) + self._skip(x)


def resnet_trunk(width: int, resolution: int, use_sn: bool = True) -> nn.Sequential:
    """The discriminator's residual blocks (image → width×4×4 at 32 px, ×8 at 64 px); encoders reuse it."""
    stages = _n_stages(resolution)
    blocks = [DBlock(3, width, down=True, first=True, use_sn=use_sn)]
    blocks += [DBlock(width, width, down=True, first=False, use_sn=use_sn) for _ in range(stages - 2)]
    blocks += [DBlock(width, width, down=False, first=False, use_sn=use_sn) for _ in range(2)]
    return nn.Sequential(*blocks)


class Discriminator(nn.Module):
    """D(x): N×3×R×R images in [-1, 1] → N unnormalised log-densities."""

    def __init__(self, preset: Preset, use_sn: bool = True):
        super().__init__()
        self.preset = preset
        ndf = preset.ndf
        self.blocks = resnet_trunk(ndf, preset.resolution, use_sn)
        self.head = _sn(nn.Linear(ndf, 1), use_sn)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last-block features: N×ndf (the 'discriminator features' baseline)."""
        return F.relu(self.blocks(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class GBlock(nn.Module):
    """Generator residual block: BN, ReLU, 2x nearest up-sample, conv3x3, BN, ReLU, conv3x3; 1x1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """G(z): N×nz latents → N×3×R×R images in [-1, 1]."""

    def __init__(self, preset: Preset):
        super().__init__()
        self.nz, ngf = preset.nz, preset.ngf
        self.fc = nn.Linear(preset.nz, 4 * 4 * ngf)
        self.blocks = nn.Sequential(*[GBlock(ngf, ngf) for _ in range(_n_stages(preset.resolution))])
        self.bn = nn.BatchNorm2d(ngf)
        self.out = nn.Conv2d(ngf, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, 4, 4)
        return torch.tanh(self.out(F.relu(self.bn(self.blocks(h)))))

    def sample(
        self, n: int, generator: torch.Generator | None = None, device=None, truncation: float | None = None
    ) -> torch.Tensor:
        """Draw n images from N(0, I) latents (truncated at |z| ≤ truncation if given)."""
        device = device or next(self.parameters()).device
        if truncation is None:
            z = torch.randn(n, self.nz, generator=generator, device="cpu")
        else:
            z = truncated_normal(n, self.nz, truncation, generator)
        return self(z.to(device))


def truncated_normal(
    n: int, nz: int, threshold: float, generator: torch.Generator | None = None, max_rounds: int = 1000
) -> torch.Tensor:
    """BigGAN's truncation trick: N(0, I) latents whose entries above `threshold` in magnitude are resampled."""
    if threshold <= 0:
        raise ValueError(f"truncation threshold must be positive, got {threshold}")
    z = torch.randn(n, nz, generator=generator)
    for _ in range(max_rounds):
        out = z.abs() > threshold
        if not out.any():
            return z
        z[out] = torch.randn(int(out.sum()), generator=generator)
    raise ValueError(f"truncation threshold {threshold} is too small to sample from")


@torch.no_grad()
def fold_spectral_norm(d: Discriminator) -> Discriminator:
    """Copy of `d` whose weights are the spectrally normalised ones it actually uses, as plain tensors."""
    was_training = d.training
    d.eval()  # eval: use the stored power-iteration vectors, don't update them
    folded = Discriminator(d.preset, use_sn=False).to(next(d.parameters()).device)
    src = dict(d.named_modules())
    for name, module in folded.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.copy_(src[name].weight)
            if module.bias is not None:  # all of ours have one
                module.bias.copy_(src[name].bias)
    d.train(was_training)
    return folded.eval()
