"""Batch parallelism on CPU: a batch split across threads, each running one torch thread on its own replica.

On CPU, torch's intra-op threads leave cores idle between and inside the many small kernels of a
sketch pass (normalisation, the sampled kernels' gathers, the sparse JL sketch). Splitting the batch
instead, in parts of about 8 images run by threads with one torch thread each, keeps the cores busy: on
2 cores 1.4-1.9× the images/s of one pass with 2 torch threads (`bench/batch_parallel.py`); the
per-sample gradients alone gain nothing. Each thread needs its own copy of the model, because the
gradient capture hooks the module it runs; `replicate` copies the modules and shares every other
tensor (statistics, sample plans, sketch matrices), which are only read.
"""

from __future__ import annotations

import copy
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from model.sketch import Projector

T = TypeVar("T")
R = TypeVar("R")
# Images per part of a split sketch: parts of 8 ran faster than parts of 32, 16 or 4 (a batch of 64 on 2
# threads, bench/batch_parallel.py --part): they fit the caches, and a slowed thread takes fewer of them.
PART_IMAGES = 8
# One thread runs a batch in parts of 16 in turn: whole batches of 64 ran at 0.6-0.85× their images/s (the
# working set leaves the caches; bench/batch_parallel.py --threads 1); parts of 8 lost on the fast 32-px models.
SERIAL_PART_IMAGES = 16
# Independent model threads by default (service.batching): measured on 2 cores only; beyond 4, batches
# from 32 clients would get small enough to cost more per image than the barriers they avoid.
MAX_MODEL_THREADS = 4
_FRESH = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


def replicate(obj: T) -> T:
    """A deep copy of `obj` whose nn.Modules are its own, with fresh locks, sharing every other tensor."""
    memo: dict[int, Any] = {}
    _share(obj, memo, set())
    return copy.deepcopy(obj, memo)


def _share(x: Any, memo: dict[int, Any], seen: set[int]) -> None:
    """Put what the copy should share (tensors outside modules) or replace (locks) into deepcopy's memo."""
    if id(x) in seen or isinstance(x, (nn.Module, nn.Parameter, str, bytes, int, float, bool, type(None))):
        return
    seen.add(id(x))
    if isinstance(x, torch.Tensor):
        memo[id(x)] = x
    elif type(x) in _FRESH:
        memo[id(x)] = _FRESH[type(x)]()
    elif isinstance(x, dict):
        for k, v in x.items():
            _share(k, memo, seen)
            _share(v, memo, seen)
    elif isinstance(x, (list, tuple, set, frozenset)):
        for v in x:
            _share(v, memo, seen)
    elif hasattr(x, "__dict__"):
        _share(vars(x), memo, seen)


def set_thread_torch_threads(n: int) -> None:
    """The calling thread's torch intra-op threads (also the default of threads that start later)."""
    torch.get_num_threads()  # torch's lazy per-thread setup now, or it would later reset the count to the default
    torch.set_num_threads(n)


def _one_torch_thread() -> None:
    set_thread_torch_threads(1)


def model_threads(requested: int | None, device: torch.device) -> tuple[int, int]:
    """(model threads, torch threads each) for `requested` threads sharing this thread's torch threads; by
    default one per torch thread on CPU (at most MAX_MODEL_THREADS), and one on a GPU."""
    total = torch.get_num_threads()
    if requested is None:
        requested = min(total, MAX_MODEL_THREADS) if device.type == "cpu" else 1
    return requested, max(1, total // requested)


def _single_threaded_pool(n: int) -> ThreadPoolExecutor:
    """n started threads that each run one torch thread, the process's default left as it was.

    `torch.set_num_threads` sets the calling thread's count and the default that threads take on their
    first torch call; the pool's threads set theirs, then the default is put back."""
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(n, "afv-part", initializer=_one_torch_thread)
    started = threading.Barrier(n)
    list(pool.map(lambda _: started.wait(), range(n)))  # each waits for the others: n threads start
    torch.set_num_threads(before)
    return pool


class BatchSplitter(Generic[T]):
    """Runs `fn(replica, part)` on contiguous parts of a batch, on pool threads that each hold a replica of `obj`.

    The parts run with one torch thread each, without autograd recording (the
    capture turns it on where it needs it); each replica serves one part at a time. Concurrent callers
    each get a replica of their own (made on first need), so several model threads can share one
    splitter without waiting for each other. `obj` itself never runs here: two splitters of one model
    (the service's AFV passes and its index's sketches) would otherwise both hand it out, and their
    passes would take turns at its one lock."""

    def __init__(self, obj: T):
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._template = replicate(obj)  # never runs (so never hooked): replicas are copied from it
        self._count = 0
        self._pool: ThreadPoolExecutor | None = None
        self._threads, self._pool_pid = 0, 0
        self._lock = threading.Lock()

    def map(self, fn: Callable[[T, torch.Tensor], R], x: torch.Tensor, threads: int, part: int = 0) -> list[R]:
        """fn on `x` split along dim 0 and run on `threads` threads: the results in order. The parts are a
        multiple of `threads`, of about `part` images each (0: one part per thread), so a thread that
        something else slows down takes fewer of them. With one thread the parts run in turn on the
        calling thread (`SERIAL_PART_IMAGES`)."""
        per_thread = max(1, math.ceil(x.shape[0] / (threads * part))) if part > 0 else 1
        pieces = list(torch.tensor_split(x, max(1, min(threads * per_thread, x.shape[0]))))
        if threads <= 1 or len(pieces) == 1:
            with self._borrow() as r:
                return [fn(r, p) for p in pieces]
        return list(self._ensure(min(threads, len(pieces))).map(lambda p: self._call(fn, p), pieces))

    def _call(self, fn: Callable[[T, torch.Tensor], R], part: torch.Tensor) -> R:
        with self._borrow() as r, torch.no_grad():
            return fn(r, part)

    def _ensure(self, n: int) -> ThreadPoolExecutor:
        """A pool of n threads and n replicas at least (a new pool in a forked child, which has none of the
        parent's threads: the server warms the model up before it forks its model processes)."""
        with self._lock:
            while self._count < n:
                self._free.put(self._copy())
            if self._pool is not None and self._pool_pid != os.getpid():
                self._pool, self._threads = None, 0  # its threads stayed in the parent; nothing to shut down
            if self._pool is None or self._threads < n:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool, self._threads, self._pool_pid = _single_threaded_pool(n), n, os.getpid()
            return self._pool

    @property
    def replicas(self) -> int:
        """How many replicas exist."""
        return self._count

    def _copy(self) -> T:
        """A new replica (lock held)."""
        self._count += 1
        return replicate(self._template)

    @contextmanager
    def _borrow(self) -> Iterator[T]:
        """A free replica; when all are in use (other callers' passes), a new one."""
        try:
            r = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                r = self._copy()
        try:
            yield r
        finally:
            self._free.put(r)


_forked_split: int | None = None  # set in a forked process by `threads_after_fork`


def threads_after_fork(n: int) -> None:
    """In a forked process: torch single-threaded, and batches split across n threads of our own instead.

    GNU OpenMP (torch's intra-op threads on Linux) is not fork-safe: in a child of a process that has used
    it, the first parallel region waits forever for threads that were not forked. With one torch thread
    no parallel region starts, and `BatchSplitter`'s threads (each single-threaded) use the n cores."""
    global _forked_split
    set_thread_torch_threads(1)
    _forked_split = n


@contextmanager
def threads_as(n: int, forked: bool) -> Iterator[None]:
    """Run the calling thread's model work with the thread settings a model thread (n torch threads) or,
    with `forked`, a forked model process (`threads_after_fork(n)`) has, then put them back: for making
    the timed kernel choices that such threads and processes then find made."""
    global _forked_split
    before_split, before_threads = _forked_split, torch.get_num_threads()
    if forked:
        threads_after_fork(n)
    else:
        set_thread_torch_threads(n)
    try:
        yield
    finally:
        _forked_split = before_split
        set_thread_torch_threads(before_threads)


def split_threads(device: torch.device) -> int:
    """How many threads to split a batch across: the calling thread's torch threads on CPU (in a forked
    process, the count given to `threads_after_fork`), else 1."""
    if device.type != "cpu":
        return 1
    return _forked_split if _forked_split is not None else torch.get_num_threads()


class SplitProjector:
    """A projector's `embed`, each call split across the calling thread's torch threads on CPU, in parts of
    about `part` images (with one thread: parts of `serial_part`, in turn)."""

    def __init__(self, projector: Projector, part: int = PART_IMAGES, serial_part: int = SERIAL_PART_IMAGES):
        self.projector, self.part, self.serial_part = projector, part, serial_part
        self._parts = BatchSplitter(projector)

    def embed(self, x: torch.Tensor) -> np.ndarray:
        """N×3×R×R uint8 images → N×d float32 sketches, as `Projector.embed` computes them."""
        device = self.projector.extractor.device
        threads = split_threads(device)
        if device.type != "cpu":
            part = 0  # a GPU takes the batch whole
        else:
            part = self.part if threads > 1 else self.serial_part
        parts = self._parts.map(Projector.embed, x, threads, part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
