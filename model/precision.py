"""The arithmetic of the gradient pass: float32, or bfloat16 where the hardware multiplies it natively.

AFVs are computed from one forward and one backward pass and the per-sample weight-gradient products;
under `bf16` those run in bfloat16 (torch autocast: AMX/AVX512-BF16 on recent Xeons, tensor cores on
GPUs) and the result comes back as float32 before the Fisher normalisation. On paper64 on a
Sapphire Rapids core that made exact AFVs 2.2× faster at a 0.3 % mean relative error of the distances
(docs/results.md, "bfloat16"); small networks (the bundled 32-px model) get slower, so float32 stays
the default. Fisher statistics are always estimated in float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """`precision` if it is one we compute in; ValueError naming the choices otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def computing_in(precision: str, device: torch.device) -> AbstractContextManager:
    """A context in which the gradient pass runs in `precision` on `device` (autocast is per thread:
    enter it in the thread that computes)."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware (else autocast emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
