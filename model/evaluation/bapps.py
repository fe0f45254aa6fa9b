"""BAPPS (Zhang et al. 2018) 2AFC and JND: folder loaders and the paper's two scores.

Layouts (files matched by stem, any image format `model.data` reads):

* 2AFC: ``DIR/ref/*.png``, ``DIR/p0/*.png``, ``DIR/p1/*.png``, ``DIR/judge/*.npy`` — the fraction of
  people who judged p1 closer to ref.
* JND: ``DIR/p0/*.png``, ``DIR/p1/*.png``, ``DIR/same/*.npy`` — the fraction who judged the pair the same.

Scores, as in `richzhang/PerceptualSimilarity` (`lpips/trainer.py`):

* 2AFC: mean over triplets of (1 − judge) where d0 < d1, judge where d1 < d0, and 0.5 on ties —
  the expected agreement of the metric with a random human judge.
* JND: average precision of the distance as a "same" detector: pairs sorted by increasing distance,
  precision/recall of the (fractional) "same" labels, VOC-style area under the interpolated curve.

Images of any size are resized for a model metric to the model's resolution (short side bicubic to R,
centre crop: `model.data.image_to_uint8`); pixel metrics (l2, ssim) see the images at their own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.data import IMAGE_SUFFIXES, decode_image, image_to_uint8

TWO_AFC_DIRS = ("ref", "p0", "p1")
JND_DIRS = ("p0", "p1")


class BAPPSLayoutError(ValueError):
    """A folder does not have the BAPPS 2AFC / JND layout (missing folders or unmatched files)."""


@dataclass
class TwoAFCSet:
    """Paths of the ref/p0/p1 images of n triplets and the n human judgments (fraction preferring p1)."""

    root: Path
    ref: list[Path]
    p0: list[Path]
    p1: list[Path]
    judge: np.ndarray

    def __len__(self) -> int:
        return len(self.ref)


@dataclass
class JNDSet:
    """Paths of the p0/p1 images of n pairs and the fraction of people who judged each pair the same."""

    root: Path
    p0: list[Path]
    p1: list[Path]
    same: np.ndarray

    def __len__(self) -> int:
        return len(self.p0)


def _by_stem(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise BAPPSLayoutError(f"missing folder {folder}")
    files = {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    }
    if not files:
        raise BAPPSLayoutError(f"no {'/'.join(sorted(suffixes))} files in {folder}")
    return files


def _matched(root: Path, image_dirs: tuple[str, ...], label_dir: str) -> tuple[list[str], dict]:
    """Stems present in every folder (error if any folder has stems the others lack)."""
    folders = {d: _by_stem(root / d, IMAGE_SUFFIXES) for d in image_dirs}
    folders[label_dir] = _by_stem(root / label_dir, {".npy"})
    stems = set.intersection(*(set(f) for f in folders.values()))
    for name, files in folders.items():
        extra = sorted(set(files) - stems)
        if extra:
            raise BAPPSLayoutError(
                f"{root / name} has {len(extra)} file(s) without a match in the other folders, e.g. {extra[0]!r}"
            )
    return sorted(stems), folders


def _read_fraction(path: Path) -> float:
    try:
        v = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BAPPSLayoutError(f"{path}: not a readable .npy file ({e})") from e
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.size != 1 or not 0.0 <= v[0] <= 1.0:
        raise BAPPSLayoutError(f"{path}: expected one fraction in [0, 1], got {v[:4]}")
    return float(v[0])


def load_2afc(root: str | Path) -> TwoAFCSet:
    """Read a BAPPS 2AFC folder (paths and judgments; images are decoded later at a metric's size)."""
    root = Path(root)
    stems, f = _matched(root, TWO_AFC_DIRS, "judge")
    judge = np.array([_read_fraction(f["judge"][s]) for s in stems])
    paths = {d: [f[d][s] for s in stems] for d in TWO_AFC_DIRS}
    return TwoAFCSet(root, paths["ref"], paths["p0"], paths["p1"], judge)


def load_jnd(root: str | Path) -> JNDSet:
    """Read a BAPPS JND folder (paths and 'same' fractions)."""
    root = Path(root)
    stems, f = _matched(root, JND_DIRS, "same")
    same = np.array([_read_fraction(f["same"][s]) for s in stems])
    paths = {d: [f[d][s] for s in stems] for d in JND_DIRS}
    return JNDSet(root, paths["p0"], paths["p1"], same)


def read_images(paths: list[Path], resolution: int | None) -> torch.Tensor:
    """Decode images to N×3×R×R uint8; resolution None → the first image's short side."""
    imgs = [decode_image(p.read_bytes()) for p in paths]
    res = resolution or min(imgs[0].size)
    return torch.from_numpy(np.stack([image_to_uint8(im, res) for im in imgs]))


# -- scores ------------------------------------------------------------------------------------


def score_2afc(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> float:
    """BAPPS 2AFC score: mean of (1−judge)[d0<d1] + judge[d1<d0] + 0.5[d0=d1]."""
    d0, d1, judge = (np.asarray(a, dtype=np.float64) for a in (d0, d1, judge))
    if not d0.shape == d1.shape == judge.shape or d0.ndim != 1 or d0.size == 0:
        raise ValueError("d0, d1 and judge must be equally long, non-empty 1-D arrays")
    per = (d0 < d1) * (1.0 - judge) + (d1 < d0) * judge + (d0 == d1) * 0.5
    return float(per.mean())


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve (PASCAL VOC 2010+, as BAPPS uses)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def score_jnd(distances: np.ndarray, same: np.ndarray) -> float:
    """BAPPS JND mAP: small distance should mean 'same'; `same` may be fractional."""
    d, s = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=np.float64)
    if d.shape != s.shape or d.ndim != 1 or d.size == 0:
        raise ValueError("distances and same must be equally long, non-empty 1-D arrays")
    if s.sum() == 0:
        raise ValueError("no pair was judged 'same': the JND mAP is undefined")
    s = s[np.argsort(d, kind="stable")]
    tp, fp = np.cumsum(s), np.cumsum(1.0 - s)
    return voc_ap(tp / s.sum(), tp / (tp + fp))


# -- running a metric over a set -----------------------------------------------------------------


def evaluate_2afc(metric, data: TwoAFCSet, chunk: int = 512) -> dict:
    """Distances of every triplet under `metric` (a `metrics.Metric`) and the 2AFC score."""
    d0, d1 = [], []
    for i in range(0, len(data), chunk):
        s = slice(i, i + chunk)
        ref, p0, p1 = (read_images(paths[s], metric.resolution) for paths in (data.ref, data.p0, data.p1))
        d0.append(metric.distance(ref, p0))
        d1.append(metric.distance(ref, p1))
    d0a, d1a = np.concatenate(d0), np.concatenate(d1)
    return {
        "dir": str(data.root),
        "metric": metric.name,
        "n": len(data),
        "score": score_2afc(d0a, d1a, data.judge),
        "human": float(np.mean(data.judge**2 + (1 - data.judge) ** 2)),
    }


def evaluate_jnd(metric, data: JNDSet, chunk: int = 512) -> dict:
    """Distances of every pair under `metric` and the JND mAP."""
    ds = []
    for i in range(0, len(data), chunk):
        s = slice(i, i + chunk)
        ds.append(
            metric.distance(read_images(data.p0[s], metric.resolution), read_images(data.p1[s], metric.resolution))
        )
    return {
        "dir": str(data.root),
        "metric": metric.name,
        "n": len(data),
        "map": score_jnd(np.concatenate(ds), data.same),
    }
