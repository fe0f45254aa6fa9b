"""The one interface every image representation implements, so the service, index and evaluation never
special-case a method: AFVs, BiGAN/BigBiGAN encoder outputs and GFMN feature moments all look alike.

An `Embedder` maps N×3×R×R uint8 images to N×F float vectors whose Euclidean distances are its metric.
It names the parts of its vector (`layout`, `blocks`: per-block shares of a distance), and carries the
hashes an index pins itself to (`model_hash`, `stats_hash`). Every distance (pair, 2AFC, set) is computed
here, from images or from vectors already embedded, so the CLI, the HTTP service and evaluation agree.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from model import fisher
from model.data import image_to_uint8
from model.precision import check_precision, native_bf16
from model.presets import Preset

log = logging.getLogger(__name__)


def _as_numpy(v: torch.Tensor | np.ndarray) -> np.ndarray:
    """A vector or batch of vectors as a NumPy array (no copy where it already is one, or on the CPU)."""
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def squared_parts(
    va: torch.Tensor | np.ndarray, vb: torch.Tensor | np.ndarray, rows: int, blocks: list[slice]
) -> np.ndarray:
    """‖va − vb‖² of each pair split up: N×rows×(blocks + 1) float64 parts, with the vectors (N×F, or F for
    one pair) cut into `rows` equal rows (pyramid cells) and each row into column `blocks`; the last column
    holds what no block covers (zero when the blocks tile the row). The squared distance is their sum.

    NumPy, not torch: the service may call this on its event loop, where a torch op would start an intra-op
    thread pool of its own. One subtraction per pair, then one float32 dot product per block and row
    (`einsum`, SIMD partial sums; relative error about 10⁻⁸ on 10⁶ values): on a 10⁶-value pyramid AFV
    0.70 ms, against 1.45 ms for squaring and summing in float64."""
    a, b = _as_numpy(va), _as_numpy(vb)
    a, b = a.reshape(-1, rows, a.shape[-1] // rows), b.reshape(-1, rows, b.shape[-1] // rows)
    parts = np.zeros((a.shape[0], rows, len(blocks) + 1))
    tiles = _tiles(blocks, a.shape[2])
    for i in range(a.shape[0]):  # one pair at a time: its difference stays in cache for the blocks
        d = np.subtract(a[i], b[i], dtype=np.result_type(a, b, np.float32))
        for j, s in enumerate(blocks):
            parts[i, :, j] = np.einsum("ij,ij->i", d[:, s], d[:, s])
        if not tiles:
            rest = np.einsum("ij,ij->i", d, d) - parts[i, :, :-1].sum(1)
            parts[i, :, -1] = np.maximum(rest, 0.0)
    return parts


def _tiles(blocks: list[slice], n: int) -> bool:
    """Whether the blocks cover 0..n exactly once, end to end."""
    edge = 0
    for lo, hi in sorted((s.start or 0, s.stop) for s in blocks):
        if lo != edge:
            return False
        edge = hi
    return edge == n


@dataclass
class DistanceReport:
    """Distance between two images, each block's share of the squared distance and, for spatial
    read-outs, each image cell's share per pyramid level ({"2x2": [[row of shares], …], …})."""

    distance: float
    layers: dict[str, float]
    regions: dict[str, list[list[float]]] | None = None

    def to_dict(self) -> dict:
        out = {"distance": self.distance, "layers": self.layers}
        if self.regions is not None:
            out["regions"] = self.regions
        return out


@dataclass
class SetStats:
    """Float64 sums of a set's vectors: count, Σv and Σv² (what every set distance needs)."""

    n: int
    s1: torch.Tensor
    s2: torch.Tensor

    @classmethod
    def of(cls, vectors: Iterable[torch.Tensor | np.ndarray]) -> SetStats:
        """Stream N×F batches of one set into its sums (memory O(F))."""
        stats: SetStats | None = None
        for v in vectors:
            stats = cls.empty(v.shape[1], torch.as_tensor(v).device) if stats is None else stats
            stats.add(v)
        if stats is None or stats.n == 0:
            raise ValueError("a set distance needs at least one image in each set")
        return stats

    @classmethod
    def empty(cls, dim: int, device: torch.device | str = "cpu") -> SetStats:
        """The sums of no vectors yet (see `add`)."""
        zeros = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros.clone())

    def add(self, v: torch.Tensor | np.ndarray, rows: int = 8) -> None:
        """Add an N×F batch of the set's vectors to the sums, `rows` at a time (the float64 copy stays small)."""
        v = torch.as_tensor(v)
        for i in range(0, v.shape[0], rows):
            part = v[i : i + rows].to(self.s1.device, torch.float64, copy=True)
            self.s1 += part.sum(0)
            self.s2 += part.pow_(2).sum(0)
        self.n += v.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.s1 / self.n

    @property
    def var(self) -> torch.Tensor:
        """Per-dimension (biased) variance."""
        return (self.s2 / self.n - self.mean.pow(2)).clamp_min(0)


def named_layout(parts: list[tuple[str, int]]) -> list[fisher.ParamSlot]:
    """[(name, size), …] → consecutive slots of a flat vector (the layout of a non-AFV embedding)."""
    slots, start = [], 0
    for name, size in parts:
        slots.append(fisher.ParamSlot(name, start, size, (size,)))
        start += size
    return slots


def config_hash(*parts: object) -> str:
    """SHA-256 of an embedder's configuration: stands in for Fisher statistics in index pins."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


class Embedder:
    """Base class: subclasses set the attributes below and implement `raw_embed`."""

    kind = "embedder"  # afv | bigan | bigbigan | gfmn-moments
    precisions: tuple[str, ...] = ("fp32",)  # what `set_precision` accepts (`model.precision`)

    def __init__(
        self,
        preset: Preset,
        *,
        device: torch.device,
        layout: list[fisher.ParamSlot],
        normalization: str,
        batch_size: int,
        name: str,
        model_hash: str,
        stats_hash: str,
    ):
        if normalization not in fisher.NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {fisher.NORMALIZATIONS}")
        self.preset, self.device, self.name = preset, device, name
        self.layout = layout
        self.blocks = fisher.block_slices(layout)
        self.normalization, self.batch_size = normalization, batch_size
        self.model_hash, self.stats_hash = model_hash, stats_hash
        self.lock = threading.Lock()  # model work on the shared modules: one batch at a time
        self.precision = "fp32"

    def set_precision(self, precision: str) -> None:
        """Compute from now on in `precision` (`model.precision`); ValueError where this embedder can't."""
        if check_precision(precision) not in self.precisions:
            raise ValueError(f"a '{self.kind}' model computes in {' or '.join(self.precisions)} only, not {precision}")
        if precision == "bf16":
            log.warning(
                "bf16: distances between near copies move by several % (rounding noise; model/precision.py): "
                "use fp32 or mixed for copy detection and JND judgments"
            )
        if precision != "fp32" and not native_bf16(self.device):
            log.warning("this %s has no bfloat16 arithmetic: %s is emulated, slower", self.device.type, precision)
        self.precision = precision

    @property
    def resolution(self) -> int:
        return self.preset.resolution

    @property
    def dim(self) -> int:
        return self.layout[-1].start + self.layout[-1].numel

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """Any PIL image → 3×R×R uint8 at the model's resolution (short side resized, centre crop)."""
        return image_to_uint8(img, self.resolution)

    def raw_embed(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 (one batch) → N×F un-normalised vectors on the device."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 (one batch) → N×F vectors with this embedder's normalisation, on device."""
        return fisher.normalize(self.raw_embed(x), self.normalization)

    def iter_embed(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Stream the vectors of any number of images in batches: memory stays O(batch × F)."""
        for i in range(0, x.shape[0], self.batch_size):
            yield self.embed(x[i : i + self.batch_size])

    def mean_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Mean vector of a set (float64 accumulation): the set's representative."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for v in self.iter_embed(x):
            total += v.double().sum(0)
        return total / x.shape[0]

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> DistanceReport:
        """Distance between two single images (3×R×R uint8 each) with per-block shares."""
        v = self.embed(torch.stack([a, b]))
        return self.explain(v[0], v[1])

    def explain(self, va: torch.Tensor | np.ndarray, vb: torch.Tensor | np.ndarray) -> DistanceReport:
        """Distance of two embedded vectors with each block's share of the squared distance."""
        return self.report(self.pair_parts(va, vb)[0])

    def pair_parts(self, va: torch.Tensor | np.ndarray, vb: torch.Tensor | np.ndarray) -> np.ndarray:
        """N pairs of embedded vectors (N×F each, or F) → their squared distances split into parts
        (N×rows×(blocks + 1), `squared_parts`): all `report` needs, a few numbers per pair."""
        return squared_parts(va, vb, 1, list(self.blocks.values()))

    def report(self, parts: np.ndarray) -> DistanceReport:
        """One pair's distance and each block's share of its square, from its `pair_parts` (rows×(blocks + 1))."""
        total = float(parts.sum())
        scale = 1.0 / total if total > 0 else 0.0
        layers = parts[:, :-1].sum(0)
        return DistanceReport(total**0.5, {k: float(p) * scale for k, p in zip(self.blocks, layers, strict=True)})

    def set_distance(self, xa: torch.Tensor, xb: torch.Tensor) -> float:
        """Distance between two image sets (N×3×R×R uint8 each), streamed in batches."""
        return self.stats_distance(SetStats.of(self.iter_embed(xa)), SetStats.of(self.iter_embed(xb)))

    def set_distance_of(self, va: torch.Tensor | np.ndarray, vb: torch.Tensor | np.ndarray) -> float:
        """The same set distance from the two sets' vectors already embedded (rows of va and vb)."""
        return self.stats_distance(SetStats.of([va]), SetStats.of([vb]))

    def stats_distance(self, a: SetStats, b: SetStats) -> float:
        """The set distance of two sets' sums: ‖mean(A) − mean(B)‖ (subclasses may add terms)."""
        return float((a.mean - b.mean).norm())
