"""Figures of the edit benchmarks: recall@1 bars per edit (copies) and a family × metric heat map (ranking)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def copies_bars(path: Path, rows: list[dict], title: str, key: str = "recall@1") -> None:
    """Grouped bars: one group per edit (and the mean), one bar per metric."""
    plt = _pyplot()
    edits = list(rows[0]["edits"]) + ["mean"]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(min(18.0, max(8.0, 0.5 * len(edits) + 2)), 4.5))
    for k, row in enumerate(rows):
        vals = [row["edits"][e][key] for e in edits[:-1]] + [row["mean"][key]]
        ax.bar(np.arange(len(edits)) + (k - (len(rows) - 1) / 2) * width, vals, width, label=row["metric"])
    ax.set_xticks(range(len(edits)), edits, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=min(len(rows), 8), loc="upper center")
    _save(fig, path)


def ranking_heatmap(path: Path, rows: list[dict], title: str) -> None:
    """Families (and the mean) × metrics, cells = fraction of correctly ordered strength pairs."""
    plt = _pyplot()
    fams = list(rows[0]["families"]) + ["mean"]
    m = np.array([[r["families"][f]["mean"] for f in fams[:-1]] + [r["mean"]] for r in rows]).T
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 3, 0.38 * len(fams) + 1.5))
    im = ax.imshow(m, cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(rows)), [r["metric"] for r in rows], rotation=30, ha="right")
    ax.set_yticks(range(len(fams)), fams)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="pairs ordered weak < strong")
    ax.set_title(title, fontsize=9)
    _save(fig, path)
