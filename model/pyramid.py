"""Spatially resolved AFVs: Fisher vectors pooled over a spatial pyramid (Sánchez et al., IJCV 2013).

A conv layer's weight gradient is a sum over its output positions of (output-gradient ⊗ input patch),
and D's linear head sees the mean over positions of the last block's map. Splitting those sums by
the image cell each position falls in gives, from the tensors one backward pass already captured,
per-cell gradients that add up exactly to the whole-image gradient. A pyramid with levels (1, 2, 4)
keeps the whole image (the paper's AFV), its 2×2 quadrants and its 4×4 cells, so the vector keeps
where in the image things are, not only what is there.

Each cell has its own Fisher statistics (mean and diagonal variance of its gradient under the
generator), is Fisher-normalised with them, then normalised on its own (`none` | `l2` | `power`,
the extractor's normalisation) and weighted 1/(n·√L) at level n of L levels, so every level has
the same total weight whatever its number of cells. With `+blocks` each network block's part of a
cell is normalised separately and the blocks weigh the same (layer weighting, as LPIPS averages
its layers), instead of the blocks with the most parameters dominating.

With `+lowres` every image is also read out as a second view, downsampled 2× and upsampled back (a
low-pass of the same image at the model's resolution), with its own per-cell statistics from
low-passed generator samples; the two views weigh the same. Edits that remove fine detail (blur,
downscaling, noise) leave the second view nearly unchanged, while the first view keeps the metric
sensitive to them (multi-scale input for a model whose finest layers see only high frequencies).

With `+grey` every image is also read out as its greyscale copy (ITU-R 601 luma, as Pillow converts to
L), standardised per image to a fixed mean and contrast, in all three channels, with per-cell statistics
from generator samples seen the same way; all views weigh the same. A copy that lost its colour or had
its brightness or contrast changed has the original's grey view, so it stays close, at the cost of one
more pass per image.

Shapes: B = batch, P = D's parameters, R = Σ n² cells over the levels (times V views: 1, plus one each
for `+lowres` and `+grey`), vectors are B×(R·P) in view-major, level-major, cell-major (row by row), parameter order.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model import cache, fisher
from model.checkpoint import load_networks, state_hash
from model.data import uint8_to_model
from model.embedder import DistanceReport, squared_parts
from model.extract import AFVExtractor, load_or_estimate_stats, load_pinned_stats, save_stats
from model.nets import Generator
from model.precision import computing_in

log = logging.getLogger(__name__)

GLOBAL = "global"
BLOCKS = "+blocks"
LOWRES = "+lowres"
GREY = "+grey"
FLAGS = (LOWRES, GREY, BLOCKS)  # in the order names list them
_FLAGS_TEXT = "'+lowres', '+grey' and/or '+blocks'"
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")
GREY_STD = 0.5  # the grey view's standard deviation per image (model space: pixels span [-1, 1])


@dataclass(frozen=True)
class Readout:
    """How an AFV is read out: pyramid levels (grid sizes) and whether each block is normalised on its own."""

    levels: tuple[int, ...] = (1,)
    per_block: bool = False  # normalise every (cell, block) part separately, blocks weighted equally
    lowres: bool = False  # add the 2×-low-passed image as a view
    grey: bool = False  # add the greyscale image as a view

    @property
    def name(self) -> str:
        """(1,) → 'global'; (1, 2, 4) → 'pyramid-1-2-4'; then '+lowres', '+grey' and '+blocks' if set."""
        base = GLOBAL if self.levels == (1,) else "pyramid-" + "-".join(map(str, self.levels))
        on = (self.lowres, self.grey, self.per_block)
        return base + "".join(flag for flag, set_ in zip(FLAGS, on, strict=True) if set_)

    @property
    def stats_name(self) -> str:
        """The per-cell statistics depend on the levels and views only."""
        return Readout(self.levels, lowres=self.lowres, grey=self.grey).name

    @property
    def n_views(self) -> int:
        return 1 + self.lowres + self.grey

    @property
    def is_plain(self) -> bool:
        return self == Readout()


def parse_readout(spec: str | None) -> Readout:
    """'global' | 'pyramid-1-2-4', each optionally with '+lowres', '+grey' and/or '+blocks' (in any order).
    Levels: distinct ascending powers of two."""
    core, *flags = (spec or GLOBAL).split("+")
    if any(f"+{f}" not in FLAGS for f in flags) or len(set(flags)) != len(flags):
        raise ValueError(f"unknown read-out {spec!r}; use 'global' or 'pyramid-N-M-…', optionally with {_FLAGS_TEXT}")
    per_block, lowres, grey = (flag[1:] in flags for flag in (BLOCKS, LOWRES, GREY))
    if core == GLOBAL:
        return Readout((1,), per_block, lowres, grey)
    parts = core.split("-")
    try:
        if parts[0] != "pyramid" or len(parts) < 2:
            raise ValueError
        levels = tuple(int(p) for p in parts[1:])
    except ValueError:
        raise ValueError(
            f"unknown read-out {spec!r}; use 'global' or 'pyramid-N-M-…' (grid sizes, e.g. "
            f"pyramid-1-2-4), optionally with {_FLAGS_TEXT}"
        ) from None
    if list(levels) != sorted(set(levels)) or any(n < 1 or n & (n - 1) for n in levels):
        raise ValueError(f"pyramid levels must be distinct ascending powers of two, got {spec!r}")
    return Readout(levels, per_block, lowres, grey)


def n_cells(levels: tuple[int, ...]) -> int:
    return sum(n * n for n in levels)


def _cells(t: torch.Tensor, n: int) -> torch.Tensor:
    """B×C×H×W → B×n²×C×(H/n·W/n): the positions of each of n×n equal cells, row by row."""
    b, c, h, w = t.shape
    if h % n or w % n:
        raise ValueError(f"a {h}×{w} feature map cannot be split into a {n}×{n} grid")
    t = t.reshape(b, c, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b, n * n, c, (h // n) * (w // n))


def cell_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """B×C×H×W → B·n²×(H/n·W/n)×C: each cell's positions as rows of channels (from channels-last memory
    a copy in runs of C values, where `_cells` copies value by value)."""
    b, c, h, w = t.shape
    if h % n or w % n:
        raise ValueError(f"a {h}×{w} feature map cannot be split into a {n}×{n} grid")
    rows = t.permute(0, 2, 3, 1).reshape(b, n, h // n, n, w // n, c).transpose(2, 3)
    return rows.reshape(b * n * n, (h // n) * (w // n), c)


def cell_columns(m: nn.Conv2d, a: torch.Tensor, out_hw: tuple[int, ...], n: int, taps_first: bool) -> torch.Tensor:
    """im2col of a stride-1 conv's input split by the output's n×n cells: B·n²×(positions per cell)×(Ci·taps),
    one strided copy of the padded channels-last input. Columns are tap-major (tap, channel) when
    `taps_first` (runs of Ci values: the faster copy), else in the weight's (channel, tap) order."""
    (kh, kw), (ph, pw) = m.kernel_size, fisher.unfold_padding(m)
    nhwc = a.permute(0, 2, 3, 1)
    ap = F.pad(nhwc, (0, 0, pw, pw, ph, ph)) if ph or pw else nhwc
    b, c, h, w = a.shape[0], a.shape[1], out_hw[0] // n, out_hw[1] // n
    sb, sy, sx, sc = ap.stride()
    if taps_first:
        size, stride = (b, n, n, h, w, kh, kw, c), (sb, h * sy, w * sx, sy, sx, sy, sx, sc)
    else:
        size, stride = (b, n, n, h, w, c, kh, kw), (sb, h * sy, w * sx, sy, sx, sc, sy, sx)
    return ap.as_strided(size, stride, ap.storage_offset()).reshape(b * n * n, h * w, -1)


def _cell_w_unfold(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, n: int, out: torch.Tensor) -> None:
    """Any conv: F.unfold, both maps split into cells channel-major, one GEMM per sample and cell."""
    cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=fisher.unfold_padding(m), stride=m.stride)
    cols = cols.reshape(a.shape[0], -1, *g.shape[2:])
    out.copy_(torch.matmul(_cells(g, n), _cells(cols, n).transpose(-1, -2)).flatten(2))


def _cell_w_rows(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, n: int, out: torch.Tensor) -> None:
    """Stride-1 convs: cell rows of both maps, columns in the weight's order, one GEMM per sample and cell."""
    w = torch.matmul(cell_rows(g, n).transpose(1, 2), cell_columns(m, a, g.shape[2:], n, taps_first=False))
    out.copy_(w.view(a.shape[0], n * n, -1))


def _cell_w_rows_taps(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, n: int, out: torch.Tensor) -> None:
    """Stride-1 convs: as `_cell_w_rows` with tap-major columns (the faster copy on large maps), the
    gradient permuted to the weight's order as it is stored."""
    co, ci, kh, kw = m.weight.shape
    w = torch.matmul(cell_rows(g, n).transpose(1, 2), cell_columns(m, a, g.shape[2:], n, taps_first=True))
    out.unflatten(2, (co, ci, kh * kw)).copy_(w.view(a.shape[0], n * n, co, kh * kw, ci).transpose(3, 4))


_cell_choice: dict[tuple, Callable] = {}


def cell_weight_grads(
    m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, n: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """B×n²×(weight numel): a conv layer's per-cell weight gradients by the fastest of equivalent kernels,
    timed once per layer shape, layout, device, dtype, batch-size bucket and thread count (as `fisher`
    picks its whole-image kernels). Written into `out` (e.g. the layer's slice of all gradients) if given."""
    if out is None:
        out = torch.empty(a.shape[0], n * n, m.weight.numel(), dtype=a.dtype, device=a.device)
    fns: list[Callable] = [_cell_w_unfold]
    if fisher.shift_applies(m):
        fns += [_cell_w_rows, _cell_w_rows_taps]
    layout = (a.is_contiguous(memory_format=torch.channels_last), g.is_contiguous(memory_format=torch.channels_last))
    bucket = fisher.size_bucket(a.shape[0])
    key: tuple = (tuple(a.shape[1:]), tuple(g.shape[1:]), layout, bucket, tuple(m.weight.shape), m.stride)
    key += (m.padding, n, a.device.type, a.dtype, torch.get_num_threads())
    if key not in _cell_choice:
        _cell_choice[key] = fisher.fastest(fns, lambda fn: fn(m, a, g, n, out), a.device)
    _cell_choice[key](m, a, g, n, out)
    return out


def cell_sums(t: torch.Tensor, n: int) -> torch.Tensor:
    """B×C×H×W → B×n²×C: each cell's sum over its positions (a conv's per-cell bias gradient). From
    channels-last memory summed as cell rows of channels: 3–12× faster than over strided dimensions."""
    b, c, h, w = t.shape
    if h % n or w % n:
        raise ValueError(f"a {h}×{w} feature map cannot be split into a {n}×{n} grid")
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return cell_rows(t, n).sum(1).view(b, n * n, c)
    return t.unflatten(3, (n, w // n)).unflatten(2, (n, h // n)).sum((3, 5)).flatten(2).transpose(1, 2)


def _head_cell_grads(m: nn.Linear, feature_map: torch.Tensor, g: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Per-cell gradients of D's linear head, whose input is the mean over positions of relu(map)."""
    h = F.relu(feature_map)
    share = cell_sums(h, n) / (h.shape[2] * h.shape[3])  # B×n²×C: each cell's part of the mean
    out = {"weight": (g[:, None, :, None] * share[:, :, None, :]).flatten(2)}
    if m.bias is not None:
        out["bias"] = g[:, None, :].expand(-1, n * n, -1) / (n * n)  # dD/db is one number: split evenly
    return out


def capture_with_map(d: nn.Module, x: torch.Tensor, channels_last: bool = False):
    """`fisher.capture` plus the last block's output map (the head's input before pooling)."""
    maps: dict[str, torch.Tensor] = {}
    blocks = d.blocks
    assert isinstance(blocks, nn.Module), "d must be a Discriminator (its trunk is d.blocks)"
    handle = blocks.register_forward_hook(lambda _m, _a, out: maps.__setitem__("h", out.detach()))
    try:
        captured = fisher.capture(d, x, channels_last=channels_last)
    finally:
        handle.remove()
    return captured, maps["h"]


def cell_grads(d: nn.Module, x: torch.Tensor, n: int, channels_last: bool = False) -> torch.Tensor:
    """Exact per-sample gradients of D split over an n×n grid of image cells: B×n²×P.

    Summed over the cells they give `fisher.per_sample_grads(d, x)`. `d` is a folded Discriminator.
    """
    captured, fmap = capture_with_map(d, x, channels_last=channels_last)
    return layer_cells(d, captured, fmap, n, [p.numel() for p in d.parameters()])


def layer_cells(
    d: nn.Module,
    captured: list,
    fmap: torch.Tensor,
    n: int,
    lengths: list[int],
    weight_cells: Callable = cell_weight_grads,
) -> torch.Tensor:
    """B×n²×Σ lengths: the per-cell gradient values of D's parameters (`lengths[k]` of the k-th), each layer
    writing its own slice (no concatenating copy). `weight_cells(m, a, g, n, out)` fills a conv's weight
    slice; a conv's bias gets its cell sums, the head its cells' share of the pooled map."""
    spans, start = {}, 0
    for p, k in zip(d.parameters(), lengths, strict=True):
        spans[id(p)], start = slice(start, start + k), start + k
    a0 = captured[0][1]
    out = torch.empty(a0.shape[0], n * n, start, dtype=a0.dtype, device=a0.device)
    for m, a, g in captured:
        if isinstance(m, nn.Conv2d):
            weight_cells(m, a, g, n, out[:, :, spans[id(m.weight)]])
            if m.bias is not None:
                out[:, :, spans[id(m.bias)]].copy_(cell_sums(g, n))
        else:
            for pname, grad in _head_cell_grads(m, fmap, g, n).items():
                out[:, :, spans[id(getattr(m, pname))]].copy_(grad)
    return out


def pooling_matrix(levels: tuple[int, ...]) -> torch.Tensor:
    """R×n² 0/1 matrix summing the finest grid's n² cells into every level's cells (n = levels[-1])."""
    n = levels[-1]
    rows = []
    for m in levels:
        k = n // m
        for i in range(m * m):
            r, c = divmod(i, m)
            row = torch.zeros(n, n)
            row[r * k : (r + 1) * k, c * k : (c + 1) * k] = 1.0
            rows.append(row.flatten())
    return torch.stack(rows)


def pool_levels(fine: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """B×n²×P finest cells (n = levels[-1]) → B×R×P cells of every level. One level is its finest cells:
    returned as they are, without an identity product and its B×R×P copy."""
    if len(levels) == 1:
        return fine
    return torch.matmul(pooling_matrix(levels).to(fine), fine)


def over_views(cells: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, spec: Readout) -> torch.Tensor:
    """`cells` of each view of `x` (x, then its `lowpass` copy with `+lowres` and its `greyscale` copy with
    `+grey`), views stacked as cells; one view's result is returned as it is, without a `cat` copy."""
    if spec.n_views == 1:
        return cells(x)
    views = [x] + [lowpass(x)] * spec.lowres + [greyscale(x)] * spec.grey
    return torch.cat([cells(v) for v in views], dim=1)


def pyramid_grads(d: nn.Module, x: torch.Tensor, levels: tuple[int, ...], channels_last: bool = False) -> torch.Tensor:
    """B×R×P: the cell gradients of every level, from one backward pass at the finest level."""
    return pool_levels(cell_grads(d, x, levels[-1], channels_last), levels)


def lowpass(x: torch.Tensor) -> torch.Tensor:
    """The second view of `+lowres`: B×3×R×R images downsampled 2× (box) and upsampled back (bilinear)."""
    return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """The view of `+grey`: B×3×R×R images (model space) → their luma, standardised per image to mean 0 and
    standard deviation GREY_STD (then clipped to [-1, 1]), in all three channels. Greyscale conversion,
    brightness and contrast changes (affine in the pixels) leave it unchanged, short of clipping."""
    g = luma(x)
    mean, std = g.mean((2, 3), keepdim=True), g.std((2, 3), keepdim=True)
    g = (g - mean).div_(std + 1e-3).mul_(GREY_STD).clamp_(-1, 1)
    return g.expand(-1, 3, -1, -1).contiguous()


def luma(x: torch.Tensor) -> torch.Tensor:
    """B×3×H×W → B×1×H×W: ITU-R 601 luma, as Pillow's convert("L") (before its rounding)."""
    return torch.einsum("bchw,c->bhw", x, torch.tensor(LUMA, dtype=x.dtype, device=x.device))[:, None]


def view_grads(d: nn.Module, x: torch.Tensor, readout: Readout) -> torch.Tensor:
    """B×(V·R)×P: the pyramid cell gradients of each view of `x` (model space), views stacked as cells."""
    nhwc = x.device.type == "cpu"  # the cell kernels copy runs of channels; +11 % on the default model
    return over_views(lambda v: pyramid_grads(d, v, readout.levels, nhwc), x, readout)


def level_weights(levels: tuple[int, ...], device: torch.device | str = "cpu", n_views: int = 1) -> torch.Tensor:
    """V·R weights: 1/(n·√L·√V) for each cell of level n, so each level and view weighs the same in total."""
    w = [1.0 / (n * math.sqrt(len(levels) * n_views)) for n in levels for _ in range(n * n)]
    return torch.tensor(w * n_views, device=device)


def cell_labels(levels: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(level n, row, column) of each of the R cells, in vector order."""
    return [(n, i // n, i % n) for n in levels for i in range(n * n)]


@torch.no_grad()
def estimate_pyramid_stats(
    d: nn.Module, g: Generator, readout: Readout, n: int, batch_size: int = 32, seed: int = 0, progress: bool = False
) -> fisher.FisherStats:
    """Per-cell Fisher statistics (V·R·P means and variances) from `n` generator samples."""
    from tqdm import tqdm

    device = next(d.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    p = sum(q.numel() for q in d.parameters())
    acc = fisher.MomentAccumulator(readout.n_views * n_cells(readout.levels) * p)
    with tqdm(total=n, desc="pyramid Fisher statistics", unit="sample", disable=not progress) as bar:
        while acc.n < n:
            b = min(batch_size, n - acc.n)
            z = torch.randn(b, g.nz, generator=rng).to(device)
            acc.update(view_grads(d, g(z), readout).flatten(1))
            bar.update(b)
    return acc.finish()


def cell_inv_std(stats: fisher.FisherStats, r: int) -> torch.Tensor:
    """R×P diag(I)^-1/2 with the relative floor applied per cell (fine cells have smaller variance)."""
    var = stats.var.reshape(r, -1)
    eps = stats.eps_rel * var.mean(1, keepdim=True) + 1e-30
    return (var + eps).rsqrt()


class PyramidAFVExtractor(AFVExtractor):
    """AFVs pooled over a spatial pyramid: one Fisher vector per image cell, each normalised on its own."""

    def __init__(self, base: AFVExtractor, readout: Readout, stats: fisher.FisherStats):
        self.__dict__.update(base.__dict__)  # same D, G, device, hashes, lock and base statistics
        self.base, self.spec = base, readout
        self.levels, self.readout = readout.levels, readout.name
        self.r = readout.n_views * n_cells(self.levels)
        self.cell_stats = stats.to(self.device)
        self.cell_mean = self.cell_stats.mean.reshape(self.r, -1)
        self.cell_inv = cell_inv_std(self.cell_stats, self.r)
        self.weights = level_weights(self.levels, self.device, readout.n_views)
        self.units = list(self.blocks.values()) if readout.per_block else [slice(0, self.param_dim)]
        self.stats_hash = pyramid_stats_hash(base.stats_hash, self.readout, stats)
        self.name = f"{base.name}:{self.readout}"
        self.cells = cell_labels(self.levels)

    @property
    def param_dim(self) -> int:
        return self.layout[-1].start + self.layout[-1].numel

    @property
    def dim(self) -> int:
        return self.r * self.param_dim

    def cell_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 (one batch) → B×R×P per-cell vectors, normalised and level-weighted."""
        with self.lock, computing_in(self.precision, self.device):
            grads = view_grads(self.d, uint8_to_model(x.to(self.device)), self.spec)
        scale = self.weights / math.sqrt(len(self.units))
        if len(self.units) == 1:  # `view_grads` made it: changed in place
            return fisher.fisher_normalize_(grads.float(), self.cell_mean, self.cell_inv, self.normalization, scale)
        v = grads.float().sub_(self.cell_mean).mul_(self.cell_inv)
        parts = [fisher.normalize_(v[:, :, u], self.normalization) for u in self.units]
        return torch.cat(parts, dim=2).mul_(scale[None, :, None])

    def raw_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.cell_vectors(x).flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 (one batch) → N×(R·P) pyramid AFVs (the normalisation is applied per cell)."""
        return self.raw_embed(x)

    def iter_embed(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        for i in range(0, x.shape[0], self.batch_size):
            yield self.embed(x[i : i + self.batch_size])

    def pair_parts(self, va: torch.Tensor | np.ndarray, vb: torch.Tensor | np.ndarray) -> np.ndarray:
        """N pairs' squared distances split per cell (row) and block: N×r×(blocks + 1) (`squared_parts`)."""
        return squared_parts(va, vb, self.r, list(self.blocks.values()))

    def report(self, parts: np.ndarray) -> DistanceReport:
        """Distance with each block's share (over all cells) and each cell's share (over views), per level."""
        total = float(parts.sum())
        scale = 1.0 / total if total > 0 else 0.0
        layers = {k: float(p) * scale for k, p in zip(self.blocks, parts[:, :-1].sum(0), strict=True)}
        per_cell = parts.sum(1).reshape(self.spec.n_views, -1).sum(0) * scale
        regions: dict[str, list[list[float]]] = {}
        for i, (n, row, col) in enumerate(self.cells):
            grid = regions.setdefault(f"{n}x{n}", [[0.0] * n for _ in range(n)])
            grid[row][col] = float(per_cell[i])
        return DistanceReport(total**0.5, layers, regions)


def pyramid_stats_hash(base_hash: str, readout: str, stats: fisher.FisherStats) -> str:
    """Pins an index to the base statistics, the read-out and the per-cell statistics."""
    h = hashlib.sha256(f"{base_hash}:{readout}:".encode())
    h.update(stats.mean.numpy().tobytes())
    h.update(stats.var.numpy().tobytes())
    h.update(str(stats.n_samples).encode())
    return h.hexdigest()


def stats_file(readout: str) -> str:
    """The file name of a read-out's per-cell statistics (in a run folder or the cache)."""
    return f"fisher-{readout}.pt"


def stats_path(run: Path, readout: str) -> Path:
    """Where a run folder ships its per-cell statistics for one read-out (beside fisher.pt)."""
    folder = run if run.is_dir() else run.parent
    return folder / stats_file(readout)


def load_or_estimate_pyramid_stats(run: Path | None, base: AFVExtractor, spec: Readout, n: int) -> fisher.FisherStats:
    """The run's (or the cache's) statistics for this read-out if they pin these weights; else estimate and cache."""
    if spec.stats_name == GLOBAL:
        return base.stats
    readout = spec.stats_name
    name = stats_file(readout)
    folder = None if run is None else (run if run.is_dir() else run.parent)
    pins = {"model_sha256": base.model_hash, "base_stats": base.stats_hash}
    stats = load_pinned_stats(cache.lookup(name, base.model_hash, folder), pins)
    if stats is not None:
        return stats
    log.info("estimating %s Fisher statistics from %d generator samples (once per model)", readout, n)
    stats = estimate_pyramid_stats(base.d, base.g, spec, n, progress=True)
    extra = {"base_stats": base.stats_hash, "readout": readout}
    save_stats(cache.stats_cache_path(base.model_hash, name), stats, base.model_hash, extra=extra)
    return stats


def with_readout(base: AFVExtractor, readout: str | None, run: Path | None = None) -> AFVExtractor:
    """The extractor for a read-out: `base` itself for 'global', else its spatial-pyramid version."""
    spec = parse_readout(readout)
    base = getattr(base, "base", base)  # a pyramid extractor's whole-image extractor
    if spec.is_plain:
        return base
    smallest = _smallest_map(base)
    if spec.levels[-1] > smallest:
        raise ValueError(
            f"read-out {readout!r}: the finest grid ({spec.levels[-1]}×{spec.levels[-1]}) is finer "
            f"than D's smallest feature map ({smallest}×{smallest})"
        )
    stats = load_or_estimate_pyramid_stats(run, base, spec, base.preset.fisher_samples)
    return PyramidAFVExtractor(base, spec, stats)


def _smallest_map(base: AFVExtractor) -> int:
    """Side of D's last block output (its smallest feature map) at the model's resolution."""
    x = torch.zeros(1, 3, base.resolution, base.resolution, device=base.device)
    with torch.no_grad():
        return int(base.d.blocks(x).shape[-1])


def load_afv_embedder(
    ckpt: dict,
    path: Path,
    run: Path,
    device: torch.device,
    *,
    normalization: str | None,
    batch_size: int,
    readout: str | None = None,
) -> AFVExtractor:
    """An afv run: D's AFVs with the run's Fisher statistics (estimated once if missing), in its read-out."""
    preset, d, g, _ = load_networks(path)
    model_hash = state_hash(d)
    stats = load_or_estimate_stats(run, d, g, model_hash, preset.fisher_samples, device)
    norm = normalization or ckpt.get("normalization", "none")
    base = AFVExtractor(
        d, g, stats, device=device, normalization=norm, batch_size=batch_size, name=run.name, model_hash=model_hash
    )
    return with_readout(base, readout or ckpt.get("readout", "global"), run)
