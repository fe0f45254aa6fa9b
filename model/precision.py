"""The arithmetic of the gradient pass: float32, or bfloat16 where the hardware multiplies it natively.

Under `bf16` the forward and backward pass and the per-sample weight-gradient products run in bfloat16
(torch autocast: AMX/AVX512-BF16 on recent Xeons, tensor cores on GPUs); the result comes back as
float32 before the Fisher normalisation, and Fisher statistics are always estimated in float32. On
paper64 on 2 Sapphire Rapids cores exact AFVs ran 2.1-2.4× faster (docs/results.md, "bfloat16").

The price is rounding noise, and it lands where the service works hardest: distances between distinct
images move by 0.2-0.3 %, but an image and its JPEG re-encoding came out 4.9 % farther or nearer on
average (trained cpu64; 31 % on untrained paper64). The noise comes from the forward and backward pass in
bfloat16, not from the products. So fp32 stays the default, and bf16 is for set distances and
category-level search on large networks, not for copy detection or JND judgments.
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
