"""Image collections for the edit benchmarks (`afv eval copies|ranking`): read once, preprocessed per metric.

* The encoded bytes of every readable image are kept (a JPEG collection costs its file size in memory,
  not its decoded size); images are decoded again whenever a resolution needs them, in blocks.
* Preprocessing is `model.data.image_to_uint8`: short side resized to R (bicubic, antialiased) and a
  centre square crop. Model metrics use R = the model's resolution. The pixel metrics (l2, ssim,
  phash) need one size for the whole collection: `pixel_size` is the images' own size when they are
  all one square size of at most 64 px (e.g. 32 for CIFAR-10, 64 for Tiny ImageNet), else 64 — the
  BAPPS patch size, and small enough for brute-force SSIM.
* Queries (edited images) go through exactly the same preprocessing as the collection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.data import ImageDecodeError, decode_image, image_to_uint8, iter_records

log = logging.getLogger(__name__)

PIXEL_MAX = 64  # largest automatic common size of the pixel metrics


@dataclass
class Images:
    """A collection's image names, encoded bytes and (width, height) sizes, in name order."""

    names: list[str]
    data: list[bytes]
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.names)

    def decode(self, i: int) -> Image.Image:
        """Image `i` as an RGB PIL image at its own size."""
        return decode_image(self.data[i])

    def tensor(self, resolution: int, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """The images (all, or `indices`) as N×3×R×R uint8."""
        idx = range(len(self)) if indices is None else indices
        return torch.from_numpy(np.stack([image_to_uint8(self.decode(int(i)), resolution) for i in idx]))

    def blocks(self, resolution: int, block: int = 1024) -> Iterator[torch.Tensor]:
        """The whole collection at `resolution` in blocks of `block` images (bounded memory)."""
        for i in range(0, len(self), block):
            yield self.tensor(resolution, range(i, min(i + block, len(self))))


def read_images(path: str | Path, split: str | None = None, limit: int | None = None, seed: int = 0) -> Images:
    """Read a folder or .tar(.gz) of images (optionally only `split`/); `limit` → a seeded random subset."""
    names, data, sizes = [], [], []
    for rec in iter_records(path, split or None):
        try:
            img = decode_image(rec.data)
        except ImageDecodeError as e:
            log.warning("skipping %s: %s", rec.name, e)
            continue
        names.append(rec.name)
        data.append(rec.data)
        sizes.append(img.size)
    if not names:
        raise ValueError(f"no readable images in {path}" + (f" under {split}/" if split else ""))
    if limit is not None and limit < len(names):
        keep = np.sort(np.random.default_rng(seed).choice(len(names), limit, replace=False))
        names, data, sizes = ([v[i] for i in keep] for v in (names, data, sizes))
    return Images(names, data, sizes)


def pixel_size(sizes: list[tuple[int, int]], requested: int | None = None) -> int:
    """The pixel metrics' common size: `requested`, else the images' one square size ≤ 64, else 64."""
    if requested is not None:
        return requested
    shapes = set(sizes)
    if len(shapes) == 1:
        w, h = next(iter(shapes))
        if w == h and w <= PIXEL_MAX:
            return w
    return PIXEL_MAX


def resolution_of(metric, pixel: int) -> int:
    """The size a metric sees: the model's resolution, or the pixel metrics' common size."""
    return metric.resolution or pixel


def sample(n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` seeded distinct indices of `n_total` (all of them, shuffled, if n ≥ n_total)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_total)[: min(n, n_total)]
