"""Speed benchmarks: per-example autograd loop vs this project's extractor vs the batched floor
(`bench_extract`), and the projections' speed and distance fidelity against exact AFVs (`bench_sketch`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

import numpy as np
import torch

from model import fisher
from model.data import uint8_to_model
from model.nets import Discriminator, fold_spectral_norm
from model.parallel import BatchSplitter, split_threads
from model.precision import computing_in
from model.presets import Preset
from model.sketch import ProjectionError, Projector, pairwise_distances

R = TypeVar("R")


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


LAYOUTS = (False, True)  # the floor's memory layouts: NCHW, then channels-last (`fisher.summed_grad`)
Timed = tuple[Callable[[], object], int]  # a method to time and the images one call handles


def interleaved(fns: dict[str, Timed], device: torch.device, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds per image of each {name: (fn, images)}, the repeats taken in turns (a, b, c,
    a, b, c, …) so that a slow minute of this noisy machine weighs on every method alike; one warm-up each."""
    for fn, _ in fns.values():
        fn()
        _sync(device)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, (fn, n) in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


def bench_extract(
    preset: Preset,
    batch_size: int,
    device: torch.device,
    repeats: int = 3,
    loop_images: int | None = None,
    precision: str = "fp32",
) -> dict[str, float | str]:
    """Images/s of (a) the batch-1 autograd loop, (b) `per_sample_grads` with the batch split across the
    torch threads on CPU, one part per thread (`model.parallel`), (b') the same as one pass with intra-op
    threads, (c) one summed backward (the floor: the faster of NCHW and channels-last memory) and (c') the
    floor split too, all in `precision` (for 'mixed': only (b), the others have no capture); with bf16
    also (a) and (c) in fp32, the arithmetic of the authors' loop. All timed in turns (`interleaved`)."""
    torch.manual_seed(0)
    d = fold_spectral_norm(Discriminator(preset)).to(device)
    r = preset.resolution
    x = torch.rand(batch_size, 3, r, r, device=device) * 2 - 1
    n_loop = min(loop_images or batch_size, batch_size)
    split, parts = BatchSplitter(d), split_threads(device)
    ours = in_precision(precision, device, fisher.per_sample_grads)  # entered in each part's own thread
    summed = in_precision(precision, device, fisher.summed_grad)
    fns: dict[str, Timed] = {
        **_loop_and_floor(d, x, n_loop, precision, device),
        "ours": (lambda: torch.cat(split.map(ours, x, parts)), batch_size),
        "one": (lambda: ours(d, x), batch_size),
        **{f"split {nhwc}": (partial(_split_sum, split, summed, x, parts, nhwc), batch_size) for nhwc in LAYOUTS},
    }
    if precision == "bf16":  # 'mixed' acts on the capture and its products: the loop and floor stay fp32
        fns |= {f"{k} fp32": v for k, v in _loop_and_floor(d, x, n_loop, "fp32", device).items()}
    t = interleaved(fns, device, repeats)
    t_floor = min(t[f"floor {nhwc}"] for nhwc in LAYOUTS)
    out: dict[str, float | str] = {
        "preset": preset.name,
        "device": str(device),
        "precision": precision,
        "batch": batch_size,
        "params": sum(p.numel() for p in d.parameters()),
        "parts": parts,
        "loop_img_s": 1 / t["loop"],
        "ours_img_s": 1 / t["ours"],
        "ours_one_pass_img_s": 1 / t["one"],
        "floor_img_s": 1 / t_floor,
        "floor_split_img_s": 1 / min(t[f"split {nhwc}"] for nhwc in LAYOUTS),
        "speedup_vs_loop": t["loop"] / t["ours"],
        "slowdown_vs_floor": t["ours"] / t_floor,
    }
    if precision == "bf16":
        out |= {"loop_fp32_img_s": 1 / t["loop fp32"], "speedup_vs_fp32_loop": t["loop fp32"] / t["ours"]}
        out["floor_fp32_img_s"] = 1 / min(t[f"floor {nhwc} fp32"] for nhwc in LAYOUTS)
    return out


def _loop_and_floor(
    d: torch.nn.Module, x: torch.Tensor, n_loop: int, precision: str, device: torch.device
) -> dict[str, Timed]:
    """The batch-1 loop and the floor in both memory layouts, in `precision`, as `interleaved` takes them."""
    loop = in_precision(precision, device, fisher.per_sample_grads_loop)
    summed = in_precision(precision, device, fisher.summed_grad)
    fns: dict[str, Timed] = {"loop": (partial(loop, d, x[:n_loop]), n_loop)}
    return fns | {f"floor {nhwc}": (partial(summed, d, x, nhwc), x.shape[0]) for nhwc in LAYOUTS}


def _split_sum(split: BatchSplitter, summed: Callable, x: torch.Tensor, parts: int, nhwc: bool) -> torch.Tensor:
    """The floor split across the threads like ours (its parts' gradients summed)."""
    return torch.stack(split.map(partial(summed, channels_last=nhwc), x, parts)).sum(0)


def in_precision(precision: str, device: torch.device, fn: Callable[..., R]) -> Callable[..., R]:
    """`fn` run inside `computing_in(precision)`, entered per call (and so in the thread that calls)."""

    def run(*args: object, **kwargs: object) -> R:
        with computing_in(precision, device):
            return fn(*args, **kwargs)

    return run


def _fidelity(ref: np.ndarray, est: np.ndarray) -> dict[str, float]:
    ratio = est / np.maximum(ref, 1e-12)
    return {
        "pearson": float(np.corrcoef(ref, est)[0, 1]),
        "rel_error_mean": float(np.abs(ratio - 1).mean()),
        "rel_error_max": float(np.abs(ratio - 1).max()),
        "ratio_mean": float(ratio.mean()),  # ≈ 1: unbiased; ≠ 1: distances scaled by that much
    }


def _floor_pass(d: torch.nn.Module, channels_last: bool, x: torch.Tensor) -> torch.Tensor:
    """The floor on a batch of uint8 images (on the model's device)."""
    return fisher.summed_grad(d, uint8_to_model(x.to(next(d.parameters()).device)), channels_last)


def bench_sketch(extractor, x: torch.Tensor, configs: dict[str, dict], d: int = 1024, repeats: int = 3) -> dict:
    """Speed and distance fidelity of each projection config {label: Projector kwargs} against exact AFVs.

    Every time is measured in this one run, in turns (`interleaved`) with the batched-gradient floor and
    exact extraction, so the ratios hold on a noisy machine. A config the model cannot use gets {"error":
    reason}. The extractor's precision applies to every timing; the reference distances are always fp32
    exact AFVs (with bf16 the fp32 floor and exact AFVs are timed too; 'mixed' leaves the floor in fp32).
    """
    bs, dev, precision = extractor.batch_size, extractor.device, extractor.precision
    with fp32(extractor):
        ref = pairwise_distances(torch.cat([extractor.embed(x[i : i + bs]) for i in range(0, x.shape[0], bs)]))
    out: dict = {"n_images": int(x.shape[0]), "afv_dim": extractor.dim, "d": d, "precision": precision, "configs": {}}
    fns = {**_floor_passes(extractor, x, precision), "exact": (_over(extractor.embed, x, bs), x.shape[0])}
    if precision == "bf16":
        fns |= {f"{k} fp32": v for k, v in _floor_passes(extractor, x, "fp32").items()}
        fns["exact fp32"] = (_over(in_fp32(extractor, extractor.embed), x, bs), x.shape[0])
    for label, kwargs in configs.items():
        try:
            proj = Projector(extractor, d=d, **kwargs)
        except ProjectionError as e:
            out["configs"][label] = {"error": str(e)}
            continue
        est = pairwise_distances(torch.from_numpy(proj.embed(x)))
        out["configs"][label] = {**_fidelity(ref, est), "inner_dim": proj.inner_dim}
        fns[label] = (_over(proj.embed, x, bs), x.shape[0])
    t = interleaved(fns, dev, repeats)
    floor, exact_afv = 1 / min(t[f"floor {nhwc}"] for nhwc in LAYOUTS), 1 / t["exact"]
    out |= {"floor_img_s": floor, "exact_afv_img_s": exact_afv}
    if precision == "bf16":
        out["floor_fp32_img_s"] = 1 / min(t[f"floor {nhwc} fp32"] for nhwc in LAYOUTS)
        out["exact_afv_fp32_img_s"] = 1 / t["exact fp32"]
    for label, row in out["configs"].items():
        if label in t:
            speed = 1 / t[label]
            row |= {"img_s": speed, "time_vs_floor": floor / speed, "speedup_vs_exact_afv": speed / exact_afv}
    return out


def _over(fn: Callable[[torch.Tensor], object], x: torch.Tensor, bs: int) -> Callable[[], None]:
    """fn over all of x in batches of bs."""

    def run() -> None:
        for i in range(0, x.shape[0], bs):
            fn(x[i : i + bs])

    return run


def in_fp32(embedder, fn: Callable[..., R]) -> Callable[..., R]:
    """`fn` run with the embedder computing in fp32 (its own precision restored after each call)."""

    def run(*args: object, **kwargs: object) -> R:
        with fp32(embedder):
            return fn(*args, **kwargs)

    return run


def _floor_passes(extractor, x: torch.Tensor, precision: str) -> dict[str, Timed]:
    """The floor in both memory layouts on the extractor's network, in `precision`, over all of x."""
    dev, bs = extractor.device, extractor.batch_size
    return {
        f"floor {nhwc}": (
            _over(in_precision(precision, dev, partial(_floor_pass, extractor.d, nhwc)), x, bs),
            x.shape[0],
        )
        for nhwc in LAYOUTS
    }


@contextmanager
def fp32(embedder) -> Iterator[None]:
    """The embedder computing in fp32 for a while (the reference), its own precision restored after (set
    directly: both are valid, and `set_precision` would repeat its bf16 warning on every restore)."""
    before, embedder.precision = embedder.precision, "fp32"
    try:
        yield
    finally:
        embedder.precision = before
