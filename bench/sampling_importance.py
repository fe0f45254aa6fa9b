"""Would importance sampling by 1/σ² help the sampled sketch on un-normalised AFVs? (#14 item 2)

An offline simulation on exact AFVs (normalisation 'none', whole image): for every pair of N images,
the squared distance over the layers `model.sampled` samples is estimated by Poisson sampling of
coordinates with inclusion probabilities π_j = min(1, c·q_j) (Σ π_j = the layer's m_L of the default
plan), weighted by 1/π_j (unbiased); the other layers are exact. q is uniform (what `sampled` does), or a
mixture of uniform and q_j ∝ 1/σ_j² (the Fisher information's inverse: an un-normalised AFV's energy
sits where σ is small) with the given weight. Prints mean |d̂/d − 1| over pairs, 5 seeds, no JL sketch.

    .venv/bin/python bench/sampling_importance.py --model model/weights/afv-tinyimagenet-64-h200-cpu64 \
        --images 48 --tin /tmp/tin/val
    .venv/bin/python bench/sampling_importance.py --preset paper64 --images 16 --tin /tmp/tin/val  # ≈ 6 GB RAM
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def inclusion(q: np.ndarray, m: int) -> np.ndarray:
    """π = min(1, c·q) with Σ π = m (water-filling: coordinates at 1 are taken, c refitted on the rest)."""
    pi = np.minimum(1.0, m * q)
    for _ in range(100):
        capped = pi >= 1
        c = (m - capped.sum()) / max(q[~capped].sum(), 1e-300)
        new = np.where(capped, 1.0, np.minimum(1.0, c * q))
        if np.allclose(new, pi):
            break
        pi = new
    return pi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--preset", default=None, help="untrained networks of a preset (Fisher statistics of 128 samples)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--tin", type=Path, required=True, help="a folder of images (e.g. Tiny ImageNet val)")
    args = ap.parse_args()

    from model.data import decode_image
    from model.extract import AFVExtractor
    from model.loading import load_embedder
    from model.sampled import plan_samples

    if args.preset:
        ex = AFVExtractor.untrained(args.preset, torch.device("cpu"), fisher_samples=128, normalization="none")
    else:
        ex = load_embedder(args.model, device="cpu", readout="global", normalization="none")
    files = sorted(p for p in args.tin.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    files = files[:: max(1, len(files) // args.images)][: args.images]
    x = torch.from_numpy(np.stack([ex.preprocess(decode_image(f.read_bytes())) for f in files]))
    v = torch.cat([ex.embed(x[i : i + 16]) for i in range(0, len(x), 16)]).double().numpy()
    inv2 = ex.inv_std.double().numpy() ** 2
    slots = {s.name: s for s in ex.layout}
    plans = plan_samples(ex.d, ex.resolution, args.samples, 0, 4096)
    layers = [(len(p.coords), slots[p.name + ".weight"]) for p in plans if p.coords is not None]
    i, j = np.triu_indices(len(v), 1)
    diff2 = (v[i] - v[j]) ** 2
    exact = diff2.sum(1)
    rest = exact - sum(diff2[:, s.start : s.start + s.numel].sum(1) for _, s in layers)
    print(f"{ex.dim} AFV values, {len(v)} images, {len(i)} pairs; sampled layers: {[s.name for _, s in layers]}")
    for mix in (0.0, 0.5, 0.9, 1.0):
        errs = []
        for seed in range(5):
            est = rest.copy()
            for m, s in layers:
                w = inv2[s.start : s.start + s.numel]
                q = mix * w / w.sum() + (1 - mix) / s.numel
                pi = inclusion(q, m)
                keep = np.random.default_rng([seed, s.start]).random(s.numel) < pi
                est += (diff2[:, s.start : s.start + s.numel][:, keep] / pi[keep]).sum(1)
            errs.append(np.abs(np.sqrt(est / exact) - 1).mean())
        name = "uniform (today's plan)" if mix == 0 else f"{mix:.0%} of q ∝ 1/σ²"
        print(f"{name:<24} mean |d̂/d − 1| = {100 * np.mean(errs):.2f} %")


if __name__ == "__main__":
    main()
