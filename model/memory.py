"""glibc malloc keeps the large blocks that model passes free, instead of handing them back to the kernel.

Each pass allocates and frees a few large tensors (the bundled model's AFVs of 12 images: about 50 MB
per tensor). glibc serves blocks above its mmap threshold (dynamic, at most 32 MB) with fresh pages
from the kernel and unmaps them on free, so every pass faults its memory in again, 4 KB at a time:
230,000 page faults a second and a third of a core in the kernel, with AFV passes 1.4× slower
(docs/results.md). With both thresholds raised, freed blocks stay in the heap for the next pass, and
the process's resident size stays near its peak instead of falling back between passes.

The `afv` command calls `keep_freed_memory()` before any of its commands (`afv eval copies` with the
bundled model: 4.0 s of AFVs against 5.4–5.7 s); `AFV_MALLOC_KEEP=0` leaves malloc as it is. Model
threads gain nothing from it: they allocate in glibc's per-thread arenas, which unmap a heap that falls
empty whatever the thresholds (faults fell from 182,000 to 74,000 a second, the served rate stayed the
same; one arena for all threads removed the faults but raised p99 latency, so it is not set). That is
why `afv serve` forks its model processes from the main thread (`service.model_processes`): they then
allocate from the main heap, where the thresholds hold. Ray's model workers (sketches, not AFVs) do not
call it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

ENV = "AFV_MALLOC_KEEP"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEEP_BYTES = 2**31 - 1  # mallopt takes an int: blocks up to 2 GB come from the heap and are kept there
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where malloc is not glibc's
    or `AFV_MALLOC_KEEP=0`."""
    global _done
    if _done is None:
        _done = _apply()
    return _done


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip() == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = all(libc.mallopt(param, KEEP_BYTES) == 1 for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
    if not ok:
        log.warning("glibc refused the malloc thresholds: large model buffers are unmapped after each pass")
    return ok
