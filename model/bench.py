"""Extraction benchmark: per-example autograd loop vs this project's extractor vs the batched floor."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from model import fisher
from model.nets import Discriminator, fold_spectral_norm
from model.presets import Preset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_image(fn: Callable[[], object], n_images: int, device: torch.device, repeats: int) -> float:
    """Best-of-`repeats` seconds per image of `fn` (after one warm-up call)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best / n_images


def bench_extract(
    preset: Preset, batch_size: int, device: torch.device, repeats: int = 3, loop_images: int | None = None
) -> dict[str, float | str]:
    """Images/s of (a) batch-1 autograd loop, (b) `per_sample_grads`, (c) one summed backward."""
    torch.manual_seed(0)
    d = fold_spectral_norm(Discriminator(preset)).to(device)
    r = preset.resolution
    x = torch.rand(batch_size, 3, r, r, device=device) * 2 - 1
    n_loop = min(loop_images or batch_size, batch_size)
    t_loop = time_per_image(lambda: fisher.per_sample_grads_loop(d, x[:n_loop]), n_loop, device, repeats)
    t_ours = time_per_image(lambda: fisher.per_sample_grads(d, x), batch_size, device, repeats)
    t_floor = time_per_image(lambda: fisher.summed_grad(d, x), batch_size, device, repeats)
    return {
        "preset": preset.name,
        "device": str(device),
        "batch": batch_size,
        "params": sum(p.numel() for p in d.parameters()),
        "loop_img_s": 1 / t_loop,
        "ours_img_s": 1 / t_ours,
        "floor_img_s": 1 / t_floor,
        "speedup_vs_loop": t_loop / t_ours,
        "slowdown_vs_floor": t_ours / t_floor,
    }
