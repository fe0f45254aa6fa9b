"""Pictures people would rather look at than read: sample grids and training curves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.data import model_to_uint8


def save_grid(x: torch.Tensor, path: Path, nrow: int = 8, pad: int = 2) -> None:
    """Save N×3×R×R images in [-1, 1] as one PNG grid."""
    imgs = model_to_uint8(x.detach().cpu()).permute(0, 2, 3, 1).numpy()
    n, r = imgs.shape[0], imgs.shape[1]
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (r + pad) + pad, nrow * (r + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        y, x0 = pad + (i // nrow) * (r + pad), pad + (i % nrow) * (r + pad)
        grid[y : y + r, x0 : x0 + r] = im
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def _read_metrics(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    cols = rows[0].keys() if rows else []
    return {c: np.array([float(r[c]) if r[c] not in ("", None) else np.nan for r in rows]) for c in cols}


MONITORS = {  # method → (title, log scale, {column: label}) of the right-hand panel
    "afv": (
        "Fisher distance between image sets (monitor)",
        True,
        {
            "fd_val_gen": "held-out real ↔ generated",
            "fd_train_gen": "train ↔ generated",
            "fd_val_train": "held-out ↔ train",
        },
    ),
    "bigan": (
        "inversion: ‖G(E(x)) − x‖² per pixel, held-out images",
        False,
        {"recon_val": "held-out", "recon_train": "train"},
    ),
    "gfmn": (
        "feature-moment loss (no moving average)",
        True,
        {"moment_val_gen": "held-out real ↔ generated", "moment_train_gen": "train ↔ generated"},
    ),
}
MONITORS["bigbigan"] = MONITORS["bigan"]


def plot_metrics(csv_path: Path, png_path: Path, method: str = "afv") -> None:
    """Step losses and the method's monitor against training step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = _read_metrics(csv_path)
    if not m or len(m["step"]) == 0:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k in m:
        if k.startswith("loss_") or k in ("d_real", "d_fake"):
            ax1.plot(m["step"], m[k], label=k, marker=".")
    ax1.set_xlabel("step"), ax1.set_title("losses"), ax1.legend()
    title, log_scale, columns = MONITORS[method]
    for k, lbl in columns.items():
        if k in m and np.isfinite(m[k]).any():
            ax2.plot(m["step"], m[k], label=lbl, marker=".")
    if log_scale:
        ax2.set_yscale("log")
    ax2.set_xlabel("step"), ax2.set_title(title), ax2.legend()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
