"""Coordinate-sampled AFVs: an unbiased estimate of AFV distances that never forms per-sample gradients.

An AFV's squared distance is a sum over P Fisher-scaled coordinates. For every large conv layer we
keep a seeded uniform sample of m of its n weight coordinates (without replacement), weighted by
n/m, and compute only those: coordinate (o, i, tap) of sample b's weight gradient is the dot product
of output-gradient row o with the input row i shifted by the tap's offset, one gather per tap, no
im2col and no o×i×taps product. Biases, the head and small layers are computed exactly. So

    E_sample ‖v̂(x) − v̂(y)‖² = ‖v(x) − v(y)‖²  (for normalisation 'none'),

and because every sampled coordinate is a real coordinate of the AFV, the Fisher normalisation is the
model's own (per-coordinate mean and 1/σ), the signed square root of 'power' is applied exactly, and
the L2 norms of 'l2'/'power' are estimated from the same weighted sample (a ratio estimator, unbiased
up to O(1/m)). Spatial-pyramid read-outs split the dot products by image cell (the same sums,
grouped), with each cell's own statistics and normalisation, so they are supported too.

The m coordinates are spread over the layers by Neyman allocation: layer L gets m_L ∝ n_L / √pos_L
(pos_L = its output positions), which minimises the estimate's variance for a fixed number of
multiply-adds. A layer whose share would reach a quarter of its weights is computed exactly instead.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model import fisher
from model.data import uint8_to_model
from model.precision import computing_in, products_in
from model.pyramid import (
    Readout,
    _cells,
    capture_with_map,
    cell_columns,
    cell_rows,
    cell_weight_grads,
    layer_cells,
    over_views,
    pool_levels,
)

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

DENSE_CHUNK_BYTES = 64 << 20  # bound on one chunk's whole per-cell gradients in the dense kernel
GATHER_CHUNK_BYTES = 128 << 20  # bound on one chunk's gathered gradient rows in the gather kernel
ACCUMULATE_CHUNK_BYTES = 2 << 20  # one chunk's products in the accumulate kernel: about the L2 cache
ACCUMULATE_MAX_POSITIONS = 16  # the accumulate kernel loops over a cell's positions: small cells only
EXACT_FRACTION = 0.25  # a layer whose sample would reach this share of its weights is computed exactly


@dataclass(frozen=True)
class LayerSample:
    """The sampled weight coordinates of one conv layer (sorted by tap), or none: computed exactly."""

    name: str
    shape: tuple[int, ...]
    positions: int
    coords: torch.Tensor | None  # flat indices into the weight (o·i·taps + i·taps + tap), sorted by tap

    @property
    def exact(self) -> bool:
        return self.coords is None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def weight(self) -> float:
        """n/m: each sampled coordinate stands for this many (its squared value's weight)."""
        return 1.0 if self.coords is None else self.numel / len(self.coords)


def _samplable(m: nn.Module) -> bool:
    """Stride-1 convs are sampled with shifted windows; other layers are computed exactly."""
    return isinstance(m, nn.Conv2d) and fisher.shift_applies(m)


def output_positions(d: nn.Module, resolution: int) -> dict[str, int]:
    """Output positions (H·W) of every conv layer of D at a resolution (one dry forward of a zero image)."""
    sizes: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _a, out, name=name: sizes.__setitem__(name, out.shape[2] * out.shape[3]))
        for name, m in d.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            d(torch.zeros(1, 3, resolution, resolution, device=next(d.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return sizes


def plan_samples(d: nn.Module, resolution: int, samples: int, seed: int, exact_below: int) -> list[LayerSample]:
    """Seeded coordinate samples for D's conv layers: Neyman allocation of `samples` over the large ones."""
    positions = output_positions(d, resolution)
    convs = [(n, m) for n, m in d.named_modules() if isinstance(m, nn.Conv2d)]
    big = [(n, m) for n, m in convs if _samplable(m) and m.weight.numel() >= exact_below]
    share = {n: m.weight.numel() / math.sqrt(positions[n]) for n, m in big}
    total = sum(share.values()) or 1.0
    plans = []
    for k, (name, m) in enumerate(convs):
        n = m.weight.numel()
        want = round(samples * share[name] / total) if name in share else n
        coords = None
        if want < EXACT_FRACTION * n:
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A3B1E, k]))
            flat = torch.from_numpy(rng.choice(n, size=max(1, want), replace=False))
            taps = math.prod(m.weight.shape[2:])
            coords = flat[torch.argsort((flat % taps) * n + flat)]  # by tap, then (output, input) channel
        plans.append(LayerSample(name, tuple(m.weight.shape), positions[name], coords))
    return plans


class TapSample(NamedTuple):
    """One kernel tap's sampled coordinates, in the plan's order (by output, then input channel)."""

    tap: int
    crow: torch.Tensor  # CSR row pointers over output channels (the sparse kernel's pattern)
    rows: torch.Tensor  # output channel of each coordinate
    cols: torch.Tensor  # input channel of each coordinate


def tap_masks(coords: torch.Tensor, shape: tuple[int, ...]) -> list[TapSample]:
    """The sample split by kernel tap, for the kernels below (taps without a sampled coordinate left out)."""
    co, ci = shape[0], shape[1]
    taps = math.prod(shape[2:])
    out = []
    for t in range(taps):
        flat = coords[coords % taps == t]  # sorted by (o, i): plan_samples sorts by (tap, flat index)
        o, i = flat // (ci * taps), (flat // taps) % ci
        crow = torch.zeros(co + 1, dtype=torch.long)
        crow[1:] = torch.cumsum(torch.bincount(o, minlength=co), 0)
        if len(flat):
            out.append(TapSample(t, crow, o, i))
    return out


def _gather_select(
    m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, masks: list[TapSample], grid: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The output-gradient channel and the input channel of every sampled coordinate gathered once, then
    per tap their product over the positions where the tap's shifted input lies inside the map, summed
    per cell: work ∝ sampled coordinates × positions, the fastest kernel where few coordinates meet
    large maps (paper64's 64×64 layer: 6× faster than the dense kernel, 10× than the sparse one).
    Chunked so a chunk's gathered channels stay small."""
    rows = torch.cat([t.rows for t in masks]).to(g.device)
    cols = torch.cat([t.cols for t in masks]).to(a.device)
    out = torch.empty(g.shape[0], grid * grid, len(rows), dtype=g.dtype, device=g.device) if out is None else out
    step = max(1, GATHER_CHUNK_BYTES // (len(rows) * g[0, 0].numel() * g.element_size()))
    counts, taps = [len(t.rows) for t in masks], [t.tap for t in masks]
    for i in range(0, g.shape[0], step):
        gs, xs = _channels(g[i : i + step], rows), _channels(a[i : i + step], cols)
        _gathered_products(m, gs, xs, counts, taps, grid, out[i : i + step])
    return out


def _channels(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → B×H×W×len(index): the indexed channels, channels-last (a view's column gather when `t`
    is channels-last in memory, as the capture leaves it on CPU)."""
    nhwc = t.permute(0, 2, 3, 1)
    return nhwc.reshape(-1, t.shape[1]).index_select(1, index).view(*nhwc.shape[:3], len(index))


def _gathered_products(
    m: nn.Conv2d, gs: torch.Tensor, xs: torch.Tensor, counts: list[int], taps: list[int], grid: int, out: torch.Tensor
) -> None:
    """Per tap, Σ over each cell's positions of the gathered gradient channels × the gathered input
    channels shifted by the tap (both B×H×W×M)."""
    kw = m.weight.shape[3]
    ph, pw = fisher.unfold_padding(m)
    (ho, wo), (hi, wi) = gs.shape[1:3], xs.shape[1:3]
    if grid > 1:  # cells split the output map: pad the input once, so every tap's product covers the whole map
        xs = F.pad(xs, (0, 0, pw, pw, ph, ph))
    start = 0
    for t, n in zip(taps, counts):
        stop, (ki, kj) = start + n, divmod(t, kw)
        if grid > 1:
            product = gs[..., start:stop] * xs[:, ki : ki + ho, kj : kj + wo, start:stop]
            cells = product.unflatten(2, (grid, -1)).unflatten(1, (grid, -1))  # B×grid×h×grid×w×n
            out[:, :, start:stop] = cells.sum((2, 4)).flatten(1, 2)
        else:  # only the positions where the shifted input lies inside the map (no padded copy)
            dy, dx = ki - ph, kj - pw  # output (y, x) meets input (y + dy, x + dx)
            y0, y1, x0, x1 = max(0, -dy), min(ho, hi - dy), max(0, -dx), min(wo, wi - dx)
            product = gs[:, y0:y1, x0:x1, start:stop] * xs[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx, start:stop]
            out[:, 0, start:stop] = product.sum((1, 2))
        start = stop


def _sparse_select(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, masks: list[TapSample], grid: int) -> torch.Tensor:
    """Per tap (ki, kj) the weight gradient is g · a_pad[ki:ki+H, kj:kj+W]ᵀ summed over positions; a sampled
    dense-dense matmul (`torch.sparse.sampled_addmm`, batched over samples and cells) computes it only at
    the sampled (output, input) channel pairs."""
    b = a.shape[0]
    co, ci, kh, kw = m.weight.shape
    ph, pw = fisher.unfold_padding(m)
    ap = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    ho, wo = g.shape[2:]
    cells = grid * grid
    gc = _cells(g, grid).reshape(b * cells, co, -1)
    parts = []
    for t, crow, _, col in masks:
        ki, kj = divmod(t, kw)
        window = _cells(ap[:, :, ki : ki + ho, kj : kj + wo], grid).reshape(b * cells, ci, -1)
        n = len(col)
        pattern = torch.sparse_csr_tensor(
            crow.to(a.device).expand(b * cells, -1).contiguous(),
            col.to(a.device).expand(b * cells, -1).contiguous(),
            torch.zeros(b * cells, n, dtype=a.dtype, device=a.device),
            (b * cells, co, ci),
            check_invariants=False,  # built from a valid pattern; checking costs time on every call
        )
        parts.append(torch.sparse.sampled_addmm(pattern, gc, window.transpose(1, 2), beta=0.0).values())
    return torch.cat(parts, dim=1).reshape(b, cells, -1)


def _dense_select(
    m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, coords: torch.Tensor, grid: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The whole per-cell gradient (one GEMM per sample and cell, on cell rows of both maps with tap-major
    columns: `pyramid.cell_columns`), then its sampled coordinates: faster than the sparse kernel where
    cells hold few positions. Chunked so a chunk's gradients stay small."""
    n = m.weight.numel()
    step = max(1, DENSE_CHUNK_BYTES // (grid * grid * n * a.element_size()))
    tap_major = _tap_major(coords, m.weight.shape).to(a.device)
    out = torch.empty(a.shape[0], grid * grid, len(coords), dtype=a.dtype, device=a.device) if out is None else out
    for i in range(0, a.shape[0], step):
        gi = g[i : i + step]
        cols = cell_columns(m, a[i : i + step], gi.shape[2:], grid, taps_first=True)
        w = torch.matmul(cell_rows(gi, grid).transpose(1, 2), cols)
        # index_select, not advanced indexing: 3-4× faster here, in any order of the coordinates
        out[i : i + step] = w.reshape(-1, n).index_select(1, tap_major).view(gi.shape[0], grid * grid, -1)
    return out


def _accumulate_select(
    m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, coords: torch.Tensor, grid: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Per position of a cell, every sampled coordinate's output-gradient channel times its im2col column
    (both gathered from cell rows), accumulated over the cell's positions: work ∝ sampled coordinates ×
    positions and no GEMM. Fastest where cells hold few positions in large batches, where a GEMM of inner
    size K = positions writes whole gradients that leave the caches (the bundled pyramid's 8×8 maps, 4 per
    cell: 2-4× faster than the dense kernel at 32-64 images; in parts of 8 the dense kernel wins). Chunked
    over samples so a chunk's products stay in cache."""
    width = m.weight.shape[1] * math.prod(m.weight.shape[2:])
    tap_major = _tap_major(coords, m.weight.shape).to(a.device)
    rows, cols = tap_major // width, tap_major % width  # (output channel) and (tap, input channel)
    g_rows = cell_rows(g, grid)  # B·cells × positions × Co
    columns = cell_columns(m, a, g.shape[2:], grid, taps_first=True)  # B·cells × positions × taps·Ci
    cells, positions = grid * grid, g_rows.shape[1]
    out = torch.empty(a.shape[0], cells, len(coords), dtype=a.dtype, device=a.device) if out is None else out
    step = max(1, ACCUMULATE_CHUNK_BYTES // (cells * len(coords) * a.element_size()))
    for i in range(0, a.shape[0], step):
        dst, part = out[i : i + step], slice(i * cells, (i + step) * cells)
        for k in range(positions):
            dy = g_rows[part, k].index_select(1, rows).view(dst.shape)
            x = columns[part, k].index_select(1, cols).view(dst.shape)
            if k == 0:
                torch.mul(dy, x, out=dst)
            else:
                dst.addcmul_(dy, x)
    return out


def _tap_major(coords: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Flat weight indices in (output, input, tap) order → the same coordinates in (output, tap, input) order."""
    ci, taps = shape[1], math.prod(shape[2:])
    within = coords % (ci * taps)
    return coords - within + (within % taps) * ci + within // taps


_kernel_choice: dict[tuple, str] = {}


def sampled_weight_cells(
    m: nn.Conv2d,
    a: torch.Tensor,
    g: torch.Tensor,
    plan: LayerSample,
    masks: list[TapSample],
    grid: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """B×grid²×M: the sampled weight-gradient coordinates of each sample, split by image cell (written into
    `out`, e.g. the layer's slice of all cells' coordinates, if given).

    Four kernels give the same values: gather-multiply-sum, the sparse one and, for cells of few
    positions, accumulate (work ∝ sampled coordinates), and dense-then-select (a GEMM ∝ all coordinates,
    but far faster per multiply-add).
    The fastest is timed once per layer, grid, device and batch-size bucket, as `fisher` picks its exact
    conv kernels.
    """
    assert plan.coords is not None
    if out is None:
        out = torch.empty(a.shape[0], grid * grid, len(plan.coords), dtype=a.dtype, device=a.device)
    run = {
        "sparse": lambda: out.copy_(_sparse_select(m, a, g, masks, grid)),
        "dense": lambda: _dense_select(m, a, g, plan.coords, grid, out),
        "gather": lambda: _gather_select(m, a, g, masks, grid, out),
    }
    if g.shape[2] * g.shape[3] <= ACCUMULATE_MAX_POSITIONS * grid * grid:
        coords = plan.coords
        run["accumulate"] = lambda: _accumulate_select(m, a, g, coords, grid, out)
    if a.dtype == torch.bfloat16:
        del run["sparse"]  # torch's sampled_addmm has no bfloat16 kernel on CPU
    bucket = fisher.size_bucket(a.shape[0])
    key: tuple = (plan.name, plan.shape, len(plan.coords), tuple(a.shape[1:]), grid, bucket, a.device.type, a.dtype)
    key += (torch.get_num_threads(),)  # a part on one thread may prefer another kernel than a whole batch
    if key not in _kernel_choice:
        _kernel_choice[key] = fisher.fastest(list(run), lambda k: run[k](), a.device)
    return run[_kernel_choice[key]]()


class SampledAFV:
    """Images → weighted coordinate-sampled AFVs whose squared distances estimate the exact AFVs'.

    Works for the whole-image extractor (`AFVExtractor`) and the spatial-pyramid one
    (`PyramidAFVExtractor`, any levels, `+lowres`, `+grey`, `+blocks`), with normalisation none, l2 or power.
    """

    def __init__(self, extractor, samples: int = 16384, seed: int = 0, exact_below: int = 4096):
        if getattr(extractor, "kind", "afv") != "afv":
            raise ValueError(f"coordinate sampling needs an AFV model, not a '{extractor.kind}' embedder")
        self.extractor, self.samples, self.seed, self.exact_below = extractor, samples, seed, exact_below
        spec = getattr(extractor, "spec", None)
        self.levels: tuple[int, ...] = spec.levels if spec is not None else (1,)
        self.views = spec if spec is not None else Readout()
        self.grid = self.levels[-1]
        self.channels_last = extractor.device.type == "cpu"  # NHWC kernels are faster there (fisher.capture)
        self.plans = plan_samples(extractor.d, extractor.resolution, samples, seed, exact_below)
        modules = dict(extractor.d.named_modules())
        self._by_module = {modules[p.name]: p for p in self.plans}  # module keys: a replica's copy maps to its own
        self._masks = {p.name: tap_masks(p.coords, p.shape) for p in self.plans if p.coords is not None}
        self.coords, self.weights, self.units, self._lengths = self._layout()
        self.dim_per_cell = len(self.coords)
        device = extractor.device
        if spec is not None:
            self.mean = extractor.cell_mean[:, self.coords.to(device)]
            self.inv = extractor.cell_inv[:, self.coords.to(device)]
            self.cell_weight = extractor.weights / math.sqrt(len(extractor.units))
        else:
            self.mean = extractor.stats.mean[self.coords.to(device)][None]
            self.inv = extractor.inv_std[self.coords.to(device)][None]
            self.cell_weight = torch.ones(1, device=device)
        self.weights_dev = self.weights.to(device)
        self.sqrt_w = self.weights_dev.sqrt()
        self.unit_of = self.units.to(device)
        self.n_units = int(self.units.max()) + 1

    @property
    def dim(self) -> int:
        """Length of one image's sampled vector: cells (all views and levels) × coordinates per cell."""
        return self.mean.shape[0] * self.dim_per_cell

    @property
    def sampled_fraction(self) -> float:
        """Share of D's parameters whose coordinates are computed (1.0 = everything exact)."""
        return self.dim_per_cell / sum(s.numel for s in self.extractor.layout)

    def _layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Flat-P indices of the kept coordinates (parameter order), their n/m weights, unit ids and the
        number kept of each parameter."""
        ex = self.extractor
        slots = {s.name: s for s in ex.layout}
        plans = {p.name + ".weight": p for p in self.plans}
        coords, weights = [], []
        for name, _ in ex.d.named_parameters():
            s, plan = slots[name], plans.get(name)
            local = plan.coords if plan is not None and plan.coords is not None else torch.arange(s.numel)
            coords.append(local + s.start)
            weights.append(torch.full((len(local),), plan.weight if plan is not None else 1.0))
        flat = torch.cat(coords)
        units = getattr(ex, "units", [slice(0, ex.dim)])
        unit_of = torch.zeros(len(flat), dtype=torch.long)
        for k, u in enumerate(units):
            unit_of[(flat >= u.start) & (flat < u.stop)] = k
        return flat, torch.cat(weights), unit_of, [len(c) for c in coords]

    def raw_cells(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space B×3×R×R (one view) → B×grid²×M raw gradient coordinates per finest cell."""
        # mixed: bf16 input gradients in the capture, but float32 operands for the gathers (not GEMMs)
        with computing_in(self.extractor.precision, x.device), products_in(None):
            return self._cells_of(x).float()

    def _cells_of(self, x: torch.Tensor) -> torch.Tensor:
        """`raw_cells` in the precision the caller set up (bf16: the cells come out in bfloat16)."""
        with self.extractor.lock:
            captured, fmap = capture_with_map(self.extractor.d, x, channels_last=self.channels_last)
        return layer_cells(self.extractor.d, captured, fmap, self.grid, self._lengths, self._weight_cells)

    def _weight_cells(self, m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, grid: int, out: torch.Tensor) -> None:
        """A conv's weight part of the cells: its sampled coordinates, or all of them for an exact layer."""
        plan = self._by_module.get(m)
        if plan is None or plan.exact:
            cell_weight_grads(m, a, g, grid, out=out)
        else:
            sampled_weight_cells(m, a, g, plan, self._masks[plan.name], grid, out=out)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 (one batch) → N×dim float32: ‖a − b‖² estimates the exact AFVs' squared distance."""
        return self.unscaled(x).mul_(self.sqrt_w).mul_(self.cell_weight[None, :, None]).flatten(1)

    @property
    def coordinate_scale(self) -> torch.Tensor:
        """The dim fixed weights that turn `unscaled` into the estimate: √(n/m) per coordinate × level weight."""
        return (self.cell_weight[:, None] * self.sqrt_w[None, :]).flatten()

    @torch.no_grad()
    def unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 → N×cells×M: the sampled coordinates Fisher-normalised and normalised per cell,
        before the fixed weights of `coordinate_scale` (which a sketch can fold into its map)."""
        ex = self.extractor
        xm = uint8_to_model(x.to(ex.device))
        raw = over_views(lambda v: pool_levels(self.raw_cells(v), self.levels), xm, self.views)  # B×R×M
        if self.n_units == 1:
            method = self.extractor.normalization
            return fisher.fisher_normalize_(raw, self.mean, self.inv, method, weights=self.weights_dev)
        return self._normalize(raw.sub_(self.mean).mul_(self.inv))

    def _normalize(self, v: torch.Tensor) -> torch.Tensor:
        """The extractor's normalisation per cell and unit (`+blocks`), norms estimated from the weighted
        sample (in place)."""
        method = self.extractor.normalization
        if method == "none":
            return v
        if method == "power":
            magnitude = v.abs()
            squares = self._unit_sums(magnitude)  # the signed square root's square is |v|
            v = fisher.signed_sqrt(v, magnitude, out=magnitude)  # one full-size temporary, not two
        elif method == "l2":
            squares = self._unit_sums(v.square())
        else:
            raise ValueError(f"unknown normalization {method!r}")
        return v.mul_(squares.sqrt_().clamp_min_(1e-12).reciprocal_())

    def _unit_sums(self, t: torch.Tensor) -> torch.Tensor:
        """B×R×M: each coordinate's unit total of the n/m-weighted values of B×R×M `t`."""
        sums = torch.zeros(*t.shape[:2], self.n_units, device=t.device, dtype=t.dtype)
        return sums.index_add_(2, self.unit_of, t * self.weights_dev).index_select(2, self.unit_of)
