"""The arithmetic of the gradient pass: float32, bfloat16 products, or bfloat16 throughout.

An AFV comes from one forward and one backward pass (the capture) and per-sample weight-gradient products
of what it captured. Three precisions:

- `fp32`: everything in float32 (the default).
- `mixed`: the forward pass in float32; the convs' input gradients of the backward pass and the
  per-sample products in bfloat16, on the matrix units (AMX on recent Xeons, tensor cores on GPUs), with
  float32 accumulation. Near copies' distances move by 0.1-0.4 % on average (at most 1.5 %), distinct
  images' by 0.02 %; paper64 ran about 1.5× faster than fp32 (small networks gain nothing).
- `bf16`: the forward pass too, under torch autocast: faster again on 64-px networks, but the forward's
  rounding noise lands where the service works hardest: an image and its JPEG re-encoding came out
  4.9 % farther or nearer on average (trained cpu64; 31 % on untrained paper64), against 0.2 % for
  distinct images. For set distances and category-level search, not for copy detection or JND.

Vectors come back as float32 before the Fisher normalisation, and Fisher statistics are always estimated
in float32. Measurements: docs/results.md, "bfloat16 extraction". Like autocast, the setting is per
thread: `computing_in` is entered in the thread that computes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

PRECISIONS = ("fp32", "mixed", "bf16")

_local = threading.local()


def check_precision(precision: str) -> str:
    """`precision` if it is one we compute in; ValueError naming the choices otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def computing_in(precision: str, device: torch.device) -> AbstractContextManager:
    """A context in which the gradient pass runs in `precision` on `device` (entered in the thread that
    computes: autocast and the dtypes below are per thread)."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    if precision == "mixed":
        return _mixed()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def products_dtype() -> torch.dtype | None:
    """The dtype this thread's per-sample products take their operands in (None: as captured)."""
    return getattr(_local, "products", None)


def input_grads_dtype() -> torch.dtype | None:
    """The dtype this thread's convs compute their input gradients in (None: as their forward ran)."""
    return getattr(_local, "input_grads", None)


@contextmanager
def products_in(dtype: torch.dtype | None) -> Iterator[None]:
    """The per-sample products' operands in `dtype` for a while (a caller whose kernels are not GEMMs, such
    as the sampled sketch's gathers, keeps them in float32)."""
    before = products_dtype()
    _local.products = dtype
    try:
        yield
    finally:
        _local.products = before


@contextmanager
def _mixed() -> Iterator[None]:
    before = input_grads_dtype()
    _local.input_grads = torch.bfloat16
    try:
        with products_in(torch.bfloat16):
            yield
    finally:
        _local.input_grads = before


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware (else autocast emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
