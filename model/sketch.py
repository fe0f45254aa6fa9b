"""Distance-preserving projection of AFVs (P dims) to d-dimensional sketches, seeded and reproducible.

The modes end in the same seeded sparse Johnson–Lindenstrauss sketch (`SparseSketch`):

* ``exact``: sketch the exact normalised vector (`extractor.embed`), batch-wise. The reference; it
  works for every embedder (AFVs, BiGAN/BigBiGAN encoders, GFMN moment features).
* ``sampled``: sketch a seeded coordinate sample of the AFV (`model.sampled.SampledAFV`): no per-sample
  gradient is formed, squared distances are unbiased for normalisation ``none`` (ratio-estimated norms
  for ``l2``/``power``), and every read-out works. ``auto`` picks it for large AFVs (`SAMPLED_MIN_DIM`).
* ``identity``: no projection, for embedders whose vectors are already small (e.g. a 128-d BiGAN z);
  ``service.model_index.ModelIndex.create`` picks it when the embedder's dimension is at most the requested one.
* ``fast`` (legacy, kept so that indexes built with it still open; biased, see docs/results.md):
  never form the B×P per-sample gradient. For every large conv/linear layer the per-sample
  weight gradient is G_b A_bᵀ (output-gradients × unfolded input activations). Its diagonal Fisher
  std is approximated as Kronecker-factored, σ[o, i, t] ≈ u[o]·v[i]·w[t] (fitted to the exact
  diagonal in log space), so the Fisher-scaled gradient is sketched with a Kronecker random matrix
  R_out ⊗ R_in as (R_out diag(1/u) G_b)(unfold(R_in diag(1/v) a_b) / w)ᵀ minus the same projection
  of the Fisher mean. Biases and small layers are kept exactly. The per-layer sketches and the exact
  parts are concatenated (``inner_dim`` values) and sparse-sketched to d.

Normalisation: ``exact`` supports every extractor normalisation. ``fast`` supports ``none`` and
``l2`` (it divides the final sketch by its norm, which approximates the AFV's norm); ``power`` needs
every coordinate of the AFV, so it raises `ProjectionError` — use ``exact`` for it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model import fisher
from model.data import uint8_to_model
from model.sampled import SampledAFV

MODES = ("exact", "sampled", "fast", "identity")
DEFAULT_SAMPLES = 8192  # sampled weight coordinates per cell (docs/results.md: error vs speed)
FORMAT = "afv-projection/1"
CSR_MAX_NNZ = 1 << 25  # larger maps keep the index_add rounds: building the CSR map would take GBs


class ProjectionError(ValueError):
    """A projection cannot be built or does not fit the given model."""


@dataclass(frozen=True)
class LayerPlan:
    """How the fast mode treats one conv/linear layer's weight: Kronecker sketch or exact (d_out=0)."""

    name: str
    shape: tuple[int, ...]
    d_out: int
    d_in: int

    @property
    def taps(self) -> int:
        return math.prod(self.shape[2:]) if len(self.shape) > 2 else 1

    @property
    def sketched(self) -> bool:
        return self.d_out > 0

    @property
    def out_dim(self) -> int:
        return self.d_out * self.d_in * self.taps if self.sketched else math.prod(self.shape)


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *tags]))


class SparseSketch:
    """Seeded sparse JL map R^m → R^d: each input coordinate adds ±1/√nnz to `nnz` random buckets.

    `scale` (m values) multiplies each coordinate first, folded into the map: a fixed per-coordinate
    weight costs no pass of its own over the input."""

    def __init__(
        self,
        m: int,
        d: int,
        seed: int,
        nnz: int = 4,
        device: torch.device | str = "cpu",
        scale: torch.Tensor | None = None,
    ):
        rng = _rng(seed, 0x5EED)
        self.m, self.d, self.nnz = m, d, nnz
        self.buckets = torch.from_numpy(rng.integers(0, d, size=(nnz, m), dtype=np.int64)).to(device)
        signs = torch.from_numpy(rng.integers(0, 2, size=(nnz, m)).astype(np.float32) * 2 - 1)
        signs = signs / math.sqrt(nnz)
        self.signs = (signs if scale is None else signs * scale.float().cpu()).to(device)
        self._matrix = _SharedLazy()

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """B×m → B×d (float32, on z's device)."""
        if z.shape[1] != self.m:
            raise ProjectionError(f"sketch expects {self.m} input values, got {z.shape[1]}")
        z = z.float()
        if z.device.type == "cpu" and self.m * self.nnz <= CSR_MAX_NNZ:  # one sparse GEMM: ~2× faster on CPU
            return (self._csr() @ _transposed(z)).T.contiguous()
        out = torch.zeros(z.shape[0], self.d, dtype=torch.float32, device=z.device)
        signed = torch.empty_like(z)  # one temporary for all nnz rounds
        for k in range(self.nnz):
            out.index_add_(1, self.buckets[k], torch.mul(z, self.signs[k], out=signed))
        return out

    def _csr(self) -> torch.Tensor:
        """The map as a d×m CSR matrix (built on first use; a coordinate hashed twice to one bucket sums)."""
        return self._matrix.get(self._build_csr)

    def _build_csr(self) -> torch.Tensor:
        cols = torch.arange(self.m, device=self.buckets.device).expand(self.nnz, -1)
        index = torch.stack([self.buckets.flatten(), cols.flatten()])
        coo = torch.sparse_coo_tensor(index, self.signs.flatten(), (self.d, self.m), check_invariants=False)
        return coo.coalesce().to_sparse_csr()


class _SharedLazy:
    """A value built on first use, once, and shared by every deep copy of its owner: the CPU model threads'
    replicas (`model.parallel.replicate`) would otherwise each build the same CSR map, 0.1 s apiece at the
    start of every `afv index build`."""

    def __init__(self) -> None:
        self._value: torch.Tensor | None = None
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> _SharedLazy:
        return self

    def get(self, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The value, built by `build` if no copy has built it yet."""
        if self._value is None:  # the lock only until it is built: no lock to inherit held across a later fork
            with self._lock:
                if self._value is None:
                    self._value = build()
        return self._value


def _transposed(z: torch.Tensor) -> torch.Tensor:
    """B×m CPU float32 → m×B contiguous: NumPy's strided copy, 3× faster than torch's for this shape."""
    out = torch.empty(z.shape[1], z.shape[0], dtype=z.dtype)
    np.copyto(out.numpy(), z.detach().numpy().T)
    return out


def kronecker_std(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares fit of log σ[o, i, t] ≈ log u[o] + log v[i] + log w[t]; returns (u, v, w)."""
    log_s = sigma.double().clamp_min(1e-30).log()
    mu = log_s.mean()
    a = log_s.mean((1, 2)) - mu
    b = log_s.mean((0, 2)) - mu
    c = log_s.mean((0, 1)) - mu
    return (mu + a).exp().float(), b.exp().float(), c.exp().float()


def plan_layers(d_net: nn.Module, d: int, inner_factor: int, exact_below: int) -> list[LayerPlan]:
    """Choose per-layer Kronecker sketch sizes: the same ratio r for both sides, r² = budget / P_big."""
    layers = [(n, m) for n, m in d_net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    big = [m.weight.numel() for _, m in layers if m.weight.numel() >= max(exact_below, 1)]
    r = math.sqrt(min(1.0, inner_factor * d / max(sum(big), 1)))
    plans = []
    for name, m in layers:
        shape = tuple(m.weight.shape)
        o, i = shape[0], shape[1]
        d_out, d_in = max(1, round(o * r)), max(1, round(i * r))
        keep = m.weight.numel() < exact_below or 2 * d_out * d_in >= o * i
        keep = keep or (isinstance(m, nn.Conv2d) and m.groups != 1)
        plans.append(LayerPlan(name, shape, 0, 0) if keep else LayerPlan(name, shape, d_out, d_in))
    return plans


class _KroneckerLayer:
    """Fast-mode sketch of one layer's Fisher-scaled weight gradient (and its exact bias part)."""

    def __init__(
        self, plan: LayerPlan, module: nn.Module, sigma: torch.Tensor, mean: torch.Tensor, seed: int, index: int
    ):
        self.plan, self.module = plan, module
        o, i, t = plan.shape[0], plan.shape[1], plan.taps
        u, v, w = kronecker_std(sigma.reshape(o, i, t).cpu())
        rng = _rng(seed, 0xC0DE, index)
        r_out = torch.from_numpy(rng.standard_normal((plan.d_out, o), dtype=np.float32))
        r_in = torch.from_numpy(rng.standard_normal((plan.d_in, i), dtype=np.float32))
        dev = mean.device
        self.r_out = (r_out / math.sqrt(plan.d_out) / u[None, :]).to(dev)
        self.r_in = (r_in / math.sqrt(plan.d_in) / v[None, :]).to(dev)
        self.w_inv = (1.0 / w).to(dev)
        m3 = mean.reshape(o, i, t).float()
        self.mean_proj = (torch.einsum("po,oit,qi->pqt", self.r_out, m3, self.r_in) * self.w_inv).reshape(-1)

    def __call__(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Captured input `a` and output-gradient `g` → B×(d_out·d_in·T) sketch."""
        m, b = self.module, a.shape[0]
        if isinstance(m, nn.Linear):
            s = torch.einsum("bp,bq->bpq", g @ self.r_out.T, a @ self.r_in.T)
            return s.reshape(b, -1) - self.mean_proj
        assert isinstance(m, nn.Conv2d)  # plan_layers plans Conv2d and Linear layers only
        a2 = F.conv2d(a, self.r_in[:, :, None, None])  # contiguous, unlike einsum: im2col needs that
        cols = F.unfold(a2, m.kernel_size, dilation=m.dilation, padding=fisher.unfold_padding(m), stride=m.stride)
        cols = cols.view(b, self.plan.d_in, self.plan.taps, -1) * self.w_inv[None, None, :, None]
        g2 = torch.matmul(self.r_out, g.flatten(2))
        s = torch.bmm(g2, cols.flatten(1, 2).transpose(1, 2))
        return s.reshape(b, -1) - self.mean_proj


def _exact_weight_grad(m: fisher.Layer, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Exact per-sample weight gradient, B×numel (for small layers)."""
    if isinstance(m, nn.Linear):
        return torch.einsum("bo,bi->boi", g, a).flatten(1)
    cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=fisher.unfold_padding(m), stride=m.stride)
    return torch.bmm(g.flatten(2), cols.transpose(1, 2)).flatten(1)


class Projector:
    """AFV → d-dim sketch for one extractor (model + Fisher statistics), in 'exact' or 'fast' mode."""

    def __init__(
        self,
        extractor,
        *,
        d: int = 1024,
        mode: str = "fast",
        seed: int = 0,
        nnz: int = 4,
        inner_factor: int = 32,
        exact_below: int = 4096,
        samples: int = DEFAULT_SAMPLES,
    ):
        if mode not in MODES:
            raise ProjectionError(f"unknown projection mode {mode!r}; choose one of {MODES}")
        if d < 1 or nnz < 1 or inner_factor < 1 or samples < 1:
            raise ProjectionError(
                f"d, nnz, inner_factor and samples must be positive (got {d}, {nnz}, {inner_factor}, {samples})"
            )
        if mode in ("fast", "sampled") and getattr(extractor, "kind", "afv") != "afv":
            raise ProjectionError(
                f"the {mode} projection needs an AFV model; this is a '{extractor.kind}' embedder: use mode='exact'"
            )
        if mode == "fast" and getattr(extractor, "readout", "global") != "global":
            raise ProjectionError(
                f"the fast projection sketches whole-image AFVs; the {extractor.readout} read-out needs mode='exact'"
            )
        if mode == "identity" and d != extractor.dim:
            raise ProjectionError(f"an identity projection keeps all {extractor.dim} dimensions (got d={d})")
        if mode == "fast" and extractor.normalization == "power":
            raise ProjectionError(
                "the fast projection cannot apply 'power' normalisation (it needs every "
                "AFV coordinate); use mode='exact' or a model with normalization none/l2"
            )
        self.extractor, self.d, self.mode, self.seed, self.nnz = extractor, d, mode, seed, nnz
        self.inner_factor, self.exact_below, self.samples = inner_factor, exact_below, samples
        self.normalization = extractor.normalization
        self.plans = plan_layers(extractor.d, d, inner_factor, exact_below) if mode == "fast" else []
        self._build_fast() if mode == "fast" else None
        self.sampler = SampledAFV(extractor, samples, seed, exact_below) if mode == "sampled" else None
        self.inner_dim = self._inner_dim()
        scale = self.sampler.coordinate_scale if self.sampler is not None else None
        self.sketch = SparseSketch(self.inner_dim, d, seed, nnz, device=extractor.device, scale=scale)

    def _slot(self, name: str) -> fisher.ParamSlot | None:
        return next((s for s in self.extractor.layout if s.name == name), None)

    def _slice(self, name: str) -> slice:
        s = self._slot(name)
        assert s is not None, f"{name} is not a parameter of the extractor's model"  # plans come from that model
        return slice(s.start, s.start + s.numel)

    def _build_fast(self) -> None:
        ex, modules = self.extractor, dict(self.extractor.d.named_modules())
        sigma = 1.0 / ex.inv_std
        self.kron: dict[nn.Module, _KroneckerLayer] = {}  # module keys: a replica's copy maps to its own
        for k, plan in enumerate(self.plans):
            if plan.sketched:
                sl = self._slice(plan.name + ".weight")
                self.kron[modules[plan.name]] = _KroneckerLayer(
                    plan, modules[plan.name], sigma[sl], ex.stats.mean[sl], self.seed, k
                )
        self.plan_of_module = {modules[p.name]: (p.name, p) for p in self.plans}

    def _inner_dim(self) -> int:
        """Length of the vector the sparse sketch reduces: the AFV, its sample, or the Kronecker parts."""
        if self.sampler is not None:
            return self.sampler.dim
        if self.mode != "fast":
            return self.extractor.dim
        bias = sum(s.numel for s in self.extractor.layout if s.name.endswith(".bias"))
        return bias + sum(p.out_dim for p in self.plans)

    # -- embedding -----------------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> np.ndarray:
        """N×3×R×R uint8 images → N×d float32 sketches (processed in extractor-sized batches)."""
        if x.ndim != 4 or x.dtype != torch.uint8:
            raise ProjectionError(f"expected an N×3×R×R uint8 tensor, got {x.dtype} {tuple(x.shape)}")
        bs = self.extractor.batch_size
        parts = [self._embed_batch(x[i : i + bs]) for i in range(0, x.shape[0], bs)]
        if not parts:
            return np.zeros((0, self.d), dtype=np.float32)
        return torch.cat(parts).cpu().numpy().astype(np.float32, copy=False)

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity":
            return self.extractor.embed(x)
        if self.mode == "exact":
            return self.sketch(self.extractor.embed(x))
        if self.sampler is not None:
            return self.sketch(self.sampler.unscaled(x).flatten(1))  # the sketch applies its fixed weights
        out = self.sketch(self.inner(x))
        return F.normalize(out, dim=1) if self.normalization == "l2" else out

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """Fast mode: B×inner_dim concatenation of per-layer Kronecker sketches and exact parts."""
        ex = self.extractor
        xm = uint8_to_model(x.to(ex.device))
        parts = []
        with ex.lock:  # capture hooks the extractor's shared module
            captured = fisher.capture(ex.d, xm)
        for m, a, g in captured:
            name, plan = self.plan_of_module[m]
            if plan.sketched:
                parts.append(self.kron[m](a, g))
            else:
                parts.append(self._exact_fv(name + ".weight", _exact_weight_grad(m, a, g)))
            if m.bias is not None:
                gb = g.sum((2, 3)) if g.ndim == 4 else g
                parts.append(self._exact_fv(name + ".bias", gb))
        return torch.cat(parts, dim=1)

    def _exact_fv(self, pname: str, grad: torch.Tensor) -> torch.Tensor:
        sl = self._slice(pname)
        return (grad - self.extractor.stats.mean[sl]) * self.extractor.inv_std[sl]

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything needed to rebuild the same projection for the same model (JSON-serialisable)."""
        return {
            "format": FORMAT,
            "mode": self.mode,
            "d": self.d,
            "seed": self.seed,
            "nnz": self.nnz,
            "inner_factor": self.inner_factor,
            "exact_below": self.exact_below,
            **({"samples": self.samples, "sampled": self._sample_plan()} if self.sampler is not None else {}),
            "normalization": self.normalization,
            "param_dim": self.extractor.dim,
            "inner_dim": self.inner_dim,
            "shapes": [[s.name, list(s.shape)] for s in self.extractor.layout],
            "layers": [{**asdict(p), "shape": list(p.shape)} for p in self.plans],
        }

    def _sample_plan(self) -> list[list]:
        """[layer, sampled coordinates or 'exact'] of the sampled mode, for the index's record."""
        assert self.sampler is not None
        return [[p.name, "exact" if p.coords is None else len(p.coords)] for p in self.sampler.plans]

    @classmethod
    def from_dict(cls, spec: dict, extractor) -> Projector:
        """Rebuild a stored projection; raise ProjectionError if it does not fit `extractor`."""
        if spec.get("format") != FORMAT:
            raise ProjectionError(f"unknown projection format {spec.get('format')!r} (expected {FORMAT!r})")
        shapes = [[s.name, list(s.shape)] for s in extractor.layout]
        if spec["shapes"] != shapes:
            raise ProjectionError(
                "the stored projection was made for a discriminator with other parameter shapes than this model's"
            )
        if spec["normalization"] != extractor.normalization:
            raise ProjectionError(
                f"the stored projection used AFV normalisation "
                f"{spec['normalization']!r}, this model uses {extractor.normalization!r}"
            )
        proj = cls(
            extractor,
            d=spec["d"],
            mode=spec["mode"],
            seed=spec["seed"],
            nnz=spec["nnz"],
            inner_factor=spec["inner_factor"],
            exact_below=spec["exact_below"],
            samples=spec.get("samples", DEFAULT_SAMPLES),
        )
        rebuilt = proj.to_dict()
        if rebuilt["layers"] != spec["layers"] or rebuilt.get("sampled") != spec.get("sampled"):
            raise ProjectionError("the stored projection's layer plan differs from the rebuilt one")
        if proj.inner_dim != spec["inner_dim"]:
            raise ProjectionError("the stored projection's layer plan differs from the rebuilt one")
        return proj


# -- benchmark ---------------------------------------------------------------------------------


def pairwise_distances(v: torch.Tensor) -> np.ndarray:
    """Upper-triangle Euclidean distances of the rows of v (float64)."""
    v = v.double()
    i, j = torch.triu_indices(v.shape[0], v.shape[0], 1)
    return torch.cdist(v, v)[i, j].cpu().numpy()
