"""Training augmentations of real images, so D's density is smooth along edits people ignore.

Drawn from the run's RNG, so a resumed run sees the same batches. `flip` mirrors half of the batch;
`translate` shifts each image by up to `MAX_SHIFT` pixels (reflection-padded: no black borders).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

AUGMENTS = ("none", "flip", "flip+translate")
MAX_SHIFT = 4


def check_augment(spec: str) -> None:
    """Raise ValueError naming the choices if `spec` is not a known augmentation."""
    if spec not in AUGMENTS:
        raise ValueError(f"unknown augmentation {spec!r}; choose one of {', '.join(AUGMENTS)}")


def augment_batch(x: torch.Tensor, spec: str, rng: torch.Generator) -> torch.Tensor:
    """N×3×R×R uint8 → the same shape with the augmentations of `spec` applied per image."""
    check_augment(spec)
    if spec == "none":
        return x
    flip = torch.rand(x.shape[0], generator=rng) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    if "translate" in spec:
        x = _translate(x, torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (x.shape[0], 2), generator=rng))
    return x


def _translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift image i by shifts[i] = (dy, dx) pixels, filling the border by reflection."""
    r, m = x.shape[-1], MAX_SHIFT
    padded = F.pad(x.float(), (m, m, m, m), mode="reflect").to(x.dtype)
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, m + dy : m + dy + r, m + dx : m + dx + r]
    return out
