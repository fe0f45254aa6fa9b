"""Would bfloat16 extraction pay? AFVs computed with a bfloat16 copy of the discriminator (AMX on recent
Xeons, tensor cores on GPUs) against float32, in one run: speed and how far the distances move.

The service's opt-in `--precision bf16` (`model/precision.py`, autocast) is the same arithmetic. Prints images/s of
the float32 batch-1 loop, floor and exact extractor, the same three in bfloat16, and for the bfloat16
AFVs (the Fisher normalisation stays float32) the error of the distances between distinct images and
between each image and its JPEG re-encoding (quality 90), a near copy, where rounding noise weighs most;
then the near-copy error with only the forward/backward pass in bfloat16, and with only the per-sample
products in bfloat16 (which of the two makes the noise), and with `--precision mixed` (timed too): only the
forward pass in float32.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bf16_extract.py --preset paper64 --images 32
    OMP_NUM_THREADS=1 .venv/bin/python bench/bf16_extract.py --model model/weights/afv-tinyimagenet-64-h200-cpu64
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import fisher  # noqa: E402
from model.bench import time_per_image  # noqa: E402
from model.data import uint8_to_model  # noqa: E402
from model.precision import computing_in  # noqa: E402
from model.sketch import pairwise_distances  # noqa: E402


def reencoded(path: Path, quality: int = 90) -> Image.Image:
    """The image after one JPEG round trip: a near copy."""
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def extractor(args):
    from model.extract import AFVExtractor
    from model.loading import load_embedder

    if args.preset:
        cpu = torch.device("cpu")
        return AFVExtractor.untrained(
            args.preset, cpu, normalization=args.normalization or "power", batch_size=args.batch, fisher_samples=128
        )
    norm = args.normalization
    return load_embedder(args.model, device="cpu", readout="global", normalization=norm, batch_size=args.batch)


def afvs(ex, x: torch.Tensor, grads) -> torch.Tensor:
    """The extractor's AFVs with `grads(x_model)` in place of its per-sample gradients."""
    out = []
    for i in range(0, len(x), ex.batch_size):
        g = grads(uint8_to_model(x[i : i + ex.batch_size]))
        out.append(fisher.normalize_(g.sub_(ex.stats.mean).mul_(ex.inv_std), ex.normalization))
    return torch.cat(out)


def split_grads(d: torch.nn.Module, pass_bf16: bool, products_bf16: bool):
    """Per-sample gradients with the forward/backward pass and the per-sample products each in bf16 or fp32."""
    cpu = torch.device("cpu")

    def grads(xb: torch.Tensor) -> torch.Tensor:
        with computing_in("bf16" if pass_bf16 else "fp32", cpu):
            captured = fisher.capture(d, xb, channels_last=True)
        dtype = torch.bfloat16 if products_bf16 else torch.float32
        out = torch.empty(len(xb), sum(p.numel() for p in d.parameters()))
        with computing_in("bf16" if products_bf16 else "fp32", cpu):
            fisher._assemble(d, [(m, a.to(dtype), g.to(dtype)) for m, a, g in captured], out)
        return out

    return grads


def mixed_grads(d: torch.nn.Module):
    """Per-sample gradients as `--precision mixed` computes them."""

    def grads(xb: torch.Tensor) -> torch.Tensor:
        with computing_in("mixed", torch.device("cpu")):
            return fisher.per_sample_grads(d, xb)

    return grads


def errors(ref: np.ndarray, est: np.ndarray) -> str:
    r = est / np.maximum(ref, 1e-12)
    return f"mean |d16/d32 - 1| {np.abs(r - 1).mean():.2%}, max {np.abs(r - 1).max():.2%}, mean ratio {r.mean():.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="an untrained network of this preset (statistics from 128 samples)")
    src.add_argument("--model", help="a run folder (read out whole)")
    ap.add_argument("--normalization", default=None)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--folder", default=str(ROOT / "tests/fixtures/tinyimagenet64"))
    args = ap.parse_args()

    ex = extractor(args)
    files = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    files = files[: args.images]
    x = torch.from_numpy(np.stack([ex.preprocess(Image.open(f).convert("RGB")) for f in files]))
    xc = torch.from_numpy(np.stack([ex.preprocess(reencoded(f)) for f in files]))
    d32, d16 = ex.d, copy.deepcopy(ex.d).bfloat16()
    cpu, xm, n_loop = torch.device("cpu"), uint8_to_model(x[: args.batch]), min(8, args.batch)

    def rates(d, dtype) -> list[float]:
        xb = xm.to(dtype)
        return [
            1 / time_per_image(lambda: fisher.per_sample_grads_loop(d, xb[:n_loop]), n_loop, cpu, 2),
            1 / time_per_image(lambda: fisher.summed_grad(d, xb), len(xb), cpu, 2),
            1 / time_per_image(lambda: fisher.per_sample_grads(d, xb), len(xb), cpu, 2),
        ]

    f32, b16 = rates(d32, torch.float32), rates(d16, torch.bfloat16)
    setup = f"{len(files)} images, batch {args.batch}, {torch.get_num_threads()} thread(s)"
    print(f"{ex.name}: {ex.dim:,} values, {ex.normalization}; {setup}")
    print("img/s            loop    floor    ours")
    for label, r in (("float32", f32), ("bfloat16", b16)):
        print(f"{label:<12} {r[0]:>8.1f} {r[1]:>8.1f} {r[2]:>7.1f}")
    print(f"bfloat16 ours / float32 ours {b16[2] / f32[2]:.2f}x, / float32 loop {b16[2] / f32[0]:.2f}x")
    mixed = 1 / time_per_image(lambda: mixed_grads(d32)(xm), len(xm), cpu, 2)
    print(f"mixed ours {mixed:.1f} img/s: / float32 ours {mixed / f32[2]:.2f}x, / float32 loop {mixed / f32[0]:.2f}x")

    def grads16(xb: torch.Tensor) -> torch.Tensor:
        return fisher.per_sample_grads(d16, xb.bfloat16()).float()

    def grads32(xb: torch.Tensor) -> torch.Tensor:
        return fisher.per_sample_grads(d32, xb)

    v32, v16 = afvs(ex, torch.cat([x, xc]), grads32), afvs(ex, torch.cat([x, xc]), grads16)
    n = len(files)
    ref, est = pairwise_distances(v32[:n]), pairwise_distances(v16[:n])
    print(f"distinct images ({len(ref)} pairs): {errors(ref, est)}, Pearson {np.corrcoef(ref, est)[0, 1]:.5f}")
    c32, c16 = (v32[:n] - v32[n:]).norm(dim=1).numpy(), (v16[:n] - v16[n:]).norm(dim=1).numpy()
    print(f"image vs its JPEG re-encoding ({n} pairs): {errors(c32, c16)}")
    share32, share16 = np.median(c32) / np.median(ref), np.median(c16) / np.median(est)
    print(f"  re-encoding distance / median distinct distance: float32 {share32:.3f}, bfloat16 {share16:.3f}")
    noise = (v16[:n] - v32[:n]).norm(dim=1) / v32[:n].norm(dim=1)
    print(f"AFV rounding noise |v16 - v32| / |v32|: mean {noise.mean():.2%}")
    for label, pass16, prod16 in (("forward/backward", True, False), ("per-sample products", False, True)):
        v = afvs(ex, torch.cat([x, xc]), split_grads(d32, pass16, prod16))
        print(f"only the {label} in bfloat16: re-encoding {errors(c32, (v[:n] - v[n:]).norm(dim=1).numpy())}")
    v = afvs(ex, torch.cat([x, xc]), mixed_grads(d32))
    print(f"mixed (the forward alone in float32): re-encoding {errors(c32, (v[:n] - v[n:]).norm(dim=1).numpy())}")


if __name__ == "__main__":
    main()
