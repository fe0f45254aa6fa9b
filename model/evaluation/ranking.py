"""Distortion ranking: does a metric call a stronger edit of an image farther from it than a weaker one?

For seeded images x and each edit family of `model.evaluation.edits.FAMILIES` (strengths ordered
weak → strong), every pair of strengths i < j scores the fraction of images with
d(x, edit_i(x)) < d(x, edit_j(x)) (ties count ½). A family's score is the mean over its pairs; the
overall score the mean over families. 1.0 = the metric orders every family's strengths correctly.
The edits see the original decoded image; original and copy are then preprocessed alike to the
metric's resolution (`model.evaluation.images`; pixel metrics at the common pixel size). Every
strength of a family draws the same randomness (noise pattern, overlay position, …), so strengths
differ only in strength.
"""

from __future__ import annotations

import time
from itertools import combinations

import numpy as np
import torch
from tqdm import tqdm

from model.evaluation.copies import edited_queries
from model.evaluation.edits import Edit
from model.evaluation.images import Images, resolution_of
from model.evaluation.metrics import Metric


def pair_fractions(d: np.ndarray) -> list[tuple[int, int, float]]:
    """K×N distances (strength × image) → (i, j, fraction of images with d_i < d_j, ties ½) for i < j."""
    return [
        (i, j, float(np.mean(d[i] < d[j]) + 0.5 * np.mean(d[i] == d[j]))) for i, j in combinations(range(d.shape[0]), 2)
    ]


def family_distances(
    metric: Metric,
    originals: torch.Tensor,
    images: Images,
    idx: np.ndarray,
    edits: list[Edit],
    resolution: int,
    seed: int,
) -> np.ndarray:
    """K×N distances d(x, edit_k(x)) of the N images `idx` (`originals`: them preprocessed)."""
    return np.stack([metric.distance(originals, edited_queries(images, idx, e, resolution, seed)) for e in edits])


def family_row(edits: list[Edit], d: np.ndarray) -> dict:
    """One family's report: per-pair fractions, their mean and the mean distance per strength."""
    pairs = [{"weak": edits[i].name, "strong": edits[j].name, "fraction": f} for i, j, f in pair_fractions(d)]
    return {
        "strengths": [e.name for e in edits],
        "mean_distance": [float(v) for v in d.mean(1)],
        "pairs": pairs,
        "mean": float(np.mean([p["fraction"] for p in pairs])),
    }


def run_ranking(
    metric: Metric,
    images: Images,
    families: dict[str, list[Edit]],
    idx: np.ndarray,
    *,
    pixel: int,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """One metric's ranking row: per family the pairwise fractions and their mean, and the overall mean."""
    t0 = time.perf_counter()
    res = resolution_of(metric, pixel)
    originals = images.tensor(res, idx)
    out = {}
    for name, edits in tqdm(families.items(), desc=f"{metric.name}: families", unit="family", disable=not progress):
        out[name] = family_row(edits, family_distances(metric, originals, images, idx, edits, res, seed))
    return {
        "metric": metric.name,
        "resolution": res,
        "n_images": int(len(idx)),
        "families": out,
        "mean": float(np.mean([f["mean"] for f in out.values()])),
        "seconds": round(time.perf_counter() - t0, 1),
    }
