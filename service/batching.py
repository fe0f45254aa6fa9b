"""Micro-batching in front of the model: requests arriving together share one batched model pass.

Each request submits its images (n×3×R×R uint8) under a *kind* ("afv", "embed", …). One worker task
takes the first waiting job, then gathers more for at most `max_wait_s` or until one kind has
`max_batch` images, groups them by kind, and runs each kind's function once on the concatenated batch in a single
dedicated worker thread (the event loop never runs model code; one model pass at a time). Results are
split back to the waiting requests. A request larger than `max_batch` is split into chunks.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

BatchFn = Callable[[np.ndarray], np.ndarray]


class BatchObserver(Protocol):
    """Where the batcher reports what it did (Prometheus in the service, nothing in unit tests)."""

    def batch_done(self, kind: str, size: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...


class _NullObserver:
    def batch_done(self, kind: str, size: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass


@dataclass
class _Job:
    kind: str
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class BatcherClosed(RuntimeError):
    """The batcher was stopped (server shutting down)."""


class MicroBatcher:
    """Bounded-wait, bounded-size batching of model calls, executed in one worker thread."""

    def __init__(
        self,
        fns: dict[str, BatchFn],
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        observer: BatchObserver | None = None,
    ):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be ≥ 1 and max_wait_s ≥ 0")
        self.fns, self.max_batch, self.max_wait_s = fns, max_batch, max_wait_s
        self.observer = observer or _NullObserver()
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="afv-model")
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._wake = asyncio.Event()  # bind to the running loop
        self._task = asyncio.create_task(self._run(), name="afv-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherClosed("server is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_in_worker(self, fn: Callable, *args):
        """Run other model work (not batchable) in the same worker thread, serialised with batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, kind: str, x: np.ndarray) -> np.ndarray:
        """n×… input → n×… output of `fns[kind]`, computed together with concurrent requests."""
        if kind not in self.fns:
            raise KeyError(f"unknown batch kind {kind!r}")
        if self._task is None:
            raise BatcherClosed("batcher is not running")
        loop = asyncio.get_running_loop()
        jobs = [_Job(kind, x[i : i + self.max_batch], loop.create_future()) for i in range(0, len(x), self.max_batch)]
        self._pending.extend(jobs)
        self._wake.set()
        return np.concatenate(await asyncio.gather(*(j.future for j in jobs)))

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._gather()
            await self._execute(batch)

    async def _gather(self) -> list[_Job]:
        """Take jobs, in order, until one kind has `max_batch` images or `max_wait_s` has passed.

        Each kind is its own model pass, so each gets the whole `max_batch` (a search and a distance
        request arriving together fill two passes of up to `max_batch` images, not half of one each)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        batch: list[_Job] = []
        n: collections.Counter[str] = collections.Counter()
        while True:
            while self._pending and n[self._pending[0].kind] + len(self._pending[0].x) <= self.max_batch:
                job = self._pending.popleft()
                batch.append(job)
                n[job.kind] += len(job.x)
            full = any(v >= self.max_batch for v in n.values()) or (self._pending and batch)
            remaining = deadline - loop.time()
            if full or remaining <= 0:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass

    async def _execute(self, batch: list[_Job]) -> None:
        now = time.perf_counter()
        live = [j for j in batch if not j.future.done()]  # drop requests whose client went away
        for j in live:
            self.observer.queue_wait(now - j.enqueued)
        by_kind: dict[str, list[_Job]] = {}
        for j in live:
            by_kind.setdefault(j.kind, []).append(j)
        for kind, jobs in by_kind.items():
            await self._execute_kind(kind, jobs)

    async def _execute_kind(self, kind: str, jobs: list[_Job]) -> None:
        x = np.concatenate([j.x for j in jobs])
        t0 = time.perf_counter()
        try:
            out = await self.run_in_worker(self.fns[kind], x)
        except Exception as e:
            log.exception("model batch (%s, %d images) failed", kind, len(x))
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.observer.batch_done(kind, len(x), time.perf_counter() - t0)
        start = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result(out[start : start + len(j.x)])
            start += len(j.x)
