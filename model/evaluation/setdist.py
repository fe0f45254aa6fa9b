"""Class-by-class Fisher set distances (the AFV paper's CIFAR-10 matrix), as CSV and heat map.

The distance between two image sets is ‖mean AFV(A) − mean AFV(B)‖ (`AFVExtractor.set_distance`);
each class's mean AFV is computed once (float64, streamed), so C classes cost C passes, not C².
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch


def class_means(ext, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{class: N×3×R×R uint8} → {class: mean AFV (P float64)}."""
    return {name: ext.mean_afv(x) for name, x in images.items()}


def distance_matrix(means: dict[str, torch.Tensor]) -> tuple[list[str], np.ndarray]:
    """Class names and the C×C matrix of Euclidean distances between their mean AFVs."""
    names = list(means)
    m = torch.stack([means[n] for n in names]).double()
    return names, torch.cdist(m, m).numpy()


def nearest_pairs(names: list[str], d: np.ndarray) -> list[tuple[str, str, float]]:
    """Each class with its nearest other class, sorted by that distance."""
    out = []
    for i, n in enumerate(names):
        row = d[i].copy()
        row[i] = np.inf
        j = int(np.argmin(row))
        out.append((n, names[j], float(row[j])))
    return sorted(out, key=lambda t: t[2])


def write_csv(path: Path, names: list[str], d: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", *names])
        for n, row in zip(names, d):
            w.writerow([n, *(f"{v:.6g}" for v in row)])


ANNOTATE_MAX = 30  # more classes than this (Tiny ImageNet: 202): no numbers in the cells, sparse tick labels


def write_heatmap(path: Path, names: list[str], d: np.ndarray, title: str) -> None:
    """Heat map with the distances printed in the cells (matplotlib, Agg backend); large matrices unannotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(d, cmap="viridis_r")
    step = 1 if len(names) <= ANNOTATE_MAX else -(-len(names) // ANNOTATE_MAX)
    ticks = range(0, len(names), step)
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, ha="right", fontsize=7 if step > 1 else None)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=7 if step > 1 else None)
    hi = float(d.max()) or 1.0
    for i in range(len(names)) if step == 1 else ():
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{d[i, j]:.3g}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if d[i, j] > 0.5 * hi else "black",
            )
    fig.colorbar(im, ax=ax, label="Fisher set distance")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
