"""Training augmentations of real images, so D's density is smooth along edits people ignore.

A spec is 'none' or '+'-joined parts: `flip` mirrors half of the batch; `translate` shifts each image
by up to `MAX_SHIFT` pixels (reflection-padded: no black borders); `color` jitters brightness,
contrast and saturation mildly, each with probability ½, and turns `GRAY_P` of the images grey.
Everything is drawn from the run's RNG, so a resumed run sees the same batches.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

PARTS = ("flip", "translate", "color")
AUGMENTS = ("none", "flip", "flip+translate", "flip+color", "flip+translate+color")  # the documented choices
MAX_SHIFT = 4
JITTER = 0.25  # brightness and contrast factors in [1 − JITTER, 1 + JITTER]
SATURATION = (0.5, 1.25)
GRAY_P = 0.05
LUMA = (0.299, 0.587, 0.114)


def check_augment(spec: str) -> None:
    """Raise ValueError naming the choices if `spec` is not a known augmentation."""
    parts = spec.split("+")
    if spec != "none" and (not all(p in PARTS for p in parts) or len(set(parts)) != len(parts)):
        raise ValueError(
            f"unknown augmentation {spec!r}; choose none or parts of {'+'.join(PARTS)} (e.g. {', '.join(AUGMENTS[1:])})"
        )


def augment_batch(x: torch.Tensor, spec: str, rng: torch.Generator) -> torch.Tensor:
    """N×3×R×R uint8 → the same shape with the augmentations of `spec` applied per image."""
    check_augment(spec)
    parts = set(spec.split("+"))
    if "flip" in parts:
        flip = torch.rand(x.shape[0], generator=rng) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    if "translate" in parts:
        x = _translate(x, torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (x.shape[0], 2), generator=rng))
    if "color" in parts:
        x = _color(x, rng)
    return x


def _translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift image i by shifts[i] = (dy, dx) pixels, filling the border by reflection."""
    r, m = x.shape[-1], MAX_SHIFT
    padded = F.pad(x.float(), (m, m, m, m), mode="reflect").to(x.dtype)
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, m + dy : m + dy + r, m + dx : m + dx + r]
    return out


def _factors(n: int, lo: float, hi: float, rng: torch.Generator) -> torch.Tensor:
    """n factors uniform in [lo, hi] for half of the images (drawn), 1 for the others."""
    f = lo + (hi - lo) * torch.rand(n, generator=rng)
    return torch.where(torch.rand(n, generator=rng) < 0.5, f, torch.ones(n))


def _color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter (and occasional greyscale) of uint8 images."""
    n = x.shape[0]
    bright = _factors(n, 1 - JITTER, 1 + JITTER, rng)
    contrast = _factors(n, 1 - JITTER, 1 + JITTER, rng)
    sat = _factors(n, *SATURATION, rng)
    sat = torch.where(torch.rand(n, generator=rng) < GRAY_P, torch.zeros(n), sat)
    y = x.float() * _per_image(bright, x)
    mean = _luma(y).mean((2, 3), keepdim=True)
    y = (y - mean) * _per_image(contrast, x) + mean
    gray = _luma(y)
    y = gray + (y - gray) * _per_image(sat, x)
    return y.round().clamp(0, 255).to(torch.uint8)


def _per_image(f: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """N factors as N×1×1×1 on `like`'s device."""
    return f.to(like.device)[:, None, None, None]


def _luma(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W luminance (ITU-R 601 weights) of N×3×H×W images."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x * w).sum(1, keepdim=True)
