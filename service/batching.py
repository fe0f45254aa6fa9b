"""Micro-batching in front of the model: requests arriving together share one batched model pass.

Each request submits its images (n×3×R×R uint8) under a *kind* ("afv", "embed", …). A model thread
takes the waiting jobs and gathers more until the oldest has waited `max_wait_s` since it was
submitted, or until one kind has `max_batch` images, groups them by kind, and runs each kind's function
once on the concatenated batch.
The thread gathers its next batch itself as soon as a pass ends, so the model never waits for the event
loop (which only parses requests and writes responses); results go back to the waiting requests with
`call_soon_threadsafe`. A request larger than `max_batch` is split into chunks. A kind whose rows hold
several images (an image pair) says so in `images_per_row`, so that `max_batch` always counts images.

With `workers` > 1, that many model threads gather and run batches independently (the functions must
then be safe to call concurrently). On CPU this keeps the cores busy where one pass spread over all of
them would stall: a pass whose threads meet at barriers waits for whichever one the HTTP work or
the OS has preempted, while independent passes do not wait for each other.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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


@dataclass
class _Call:
    fn: Callable
    args: tuple
    future: asyncio.Future


class BatcherClosed(RuntimeError):
    """The batcher was stopped (server shutting down)."""


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Resolve a request's future on its own event loop, unless its client went away."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    """From the model thread: hand a result (or error) to the future's event loop."""
    try:
        future.get_loop().call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # that loop is closed: nobody is waiting any more
        pass


class MicroBatcher:
    """Bounded-wait, bounded-size batching of model calls, executed in `workers` dedicated model threads."""

    def __init__(
        self,
        fns: dict[str, BatchFn],
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        observer: BatchObserver | None = None,
        workers: int = 1,
        thread_init: Callable[[], None] | None = None,
        thread_exit: Callable[[], None] | None = None,
        images_per_row: dict[str, int] | None = None,
    ):
        if max_batch < 1 or max_wait_s < 0 or workers < 1:
            raise ValueError("max_batch and workers must be ≥ 1 and max_wait_s ≥ 0")
        self.fns, self.max_batch, self.max_wait_s = fns, max_batch, max_wait_s
        self.images_per_row = {kind: 1 for kind in fns} | (images_per_row or {})
        if min(self.images_per_row.values()) < 1:
            raise ValueError("images_per_row must be ≥ 1")
        self.workers, self.thread_init, self.thread_exit = workers, thread_init, thread_exit
        self.observer = observer or _NullObserver()
        self._pending: collections.deque[_Job] = collections.deque()
        self._calls: collections.deque[_Call] = collections.deque()
        self._cond = threading.Condition()
        self._closed = True
        self._threads: list[threading.Thread] = []

    async def start(self) -> None:
        """Start the model threads (each runs `thread_init` first, and `thread_exit` last)."""
        self._closed = False
        names = ["afv-model"] if self.workers == 1 else [f"afv-model-{i}" for i in range(self.workers)]
        self._threads = [threading.Thread(target=self._loop, name=name, daemon=True) for name in names]
        for t in self._threads:
            t.start()

    async def stop(self) -> None:
        """Let the running passes finish, stop the threads and fail what still waits with BatcherClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            await asyncio.to_thread(t.join)
        self._threads = []
        with self._cond:
            waiting: list[_Job | _Call] = [*self._pending, *self._calls]
            self._pending.clear()
            self._calls.clear()
        for w in waiting:
            _settle(w.future, None, BatcherClosed("server is shutting down"))

    async def run_in_worker(self, fn: Callable, *args: Any) -> Any:
        """Run other model work (not batchable) in a model thread, between that thread's batches."""
        call = _Call(fn, args, asyncio.get_running_loop().create_future())
        self._enqueue(lambda: self._calls.append(call))
        return await call.future

    async def submit(self, kind: str, x: np.ndarray) -> np.ndarray:
        """n×… input → n×… output of `fns[kind]`, computed together with concurrent requests."""
        if kind not in self.fns:
            raise KeyError(f"unknown batch kind {kind!r}")
        loop = asyncio.get_running_loop()
        rows = max(1, self.max_batch // self.images_per_row[kind])  # a row larger than max_batch goes alone
        jobs = [_Job(kind, x[i : i + rows], loop.create_future()) for i in range(0, len(x), rows)]
        self._enqueue(lambda: self._pending.extend(jobs))
        parts = await asyncio.gather(*(j.future for j in jobs))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)  # one chunk: its rows of the pass, no copy

    def _enqueue(self, add: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                raise BatcherClosed("batcher is not running")
            add()
            self._cond.notify()

    # -- the model thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        if self.thread_init is not None:
            self.thread_init()
        try:
            while (work := self._next_work()) is not None:
                if isinstance(work, _Call):
                    self._run_call(work)
                else:
                    self._execute(work)
        finally:
            if self.thread_exit is not None:
                self.thread_exit()

    def _next_work(self) -> _Call | list[_Job] | None:
        """Block until there is work: a queued call, or a gathered batch; None once closed."""
        with self._cond:
            while not (self._pending or self._calls or self._closed):
                self._cond.wait()
            if self._closed:
                return None
            if self._calls:
                return self._calls.popleft()
            return self._gather()

    def _gather(self) -> list[_Job] | None:
        """Take jobs, in order, until one kind has `max_batch` images or the oldest has waited `max_wait_s` (lock held).

        The wait counts from the oldest job's submission, not from now: jobs that queued up during the last
        pass have waited already and go at once, so a busy model runs its passes back to back (with a fast
        model, 5 ms more of gathering left the processes idle a tenth of the time; docs/results.md).

        Each kind is its own model pass, so each gets the whole `max_batch` (a search and a distance
        request arriving together fill two passes of up to `max_batch` images, not half of one each)."""
        deadline = self._pending[0].enqueued + self.max_wait_s
        batch: list[_Job] = []
        n: collections.Counter[str] = collections.Counter()
        while True:
            while self._pending and self._fits(self._pending[0], n[self._pending[0].kind]):
                job = self._pending.popleft()
                batch.append(job)
                n[job.kind] += self._images(job)
            if self._closed:  # hand the jobs back for stop() to fail
                self._pending.extendleft(reversed(batch))
                return None
            full = any(v >= self.max_batch for v in n.values()) or (self._pending and batch)
            remaining = deadline - time.perf_counter()
            if full or remaining <= 0:
                return batch
            self._cond.wait(remaining)

    def _images(self, job: _Job) -> int:
        return len(job.x) * self.images_per_row[job.kind]

    def _fits(self, job: _Job, taken: int) -> bool:
        """Whether `job` joins a pass that has `taken` images of its kind (a first job always does)."""
        return taken == 0 or taken + self._images(job) <= self.max_batch

    def _run_call(self, call: _Call) -> None:
        try:
            _resolve(call.future, call.fn(*call.args))
        except Exception as e:
            _resolve(call.future, error=e)

    def _execute(self, batch: list[_Job]) -> None:
        now = time.perf_counter()
        live = [j for j in batch if not j.future.done()]  # drop requests whose client went away
        for j in live:
            self.observer.queue_wait(now - j.enqueued)
        by_kind: dict[str, list[_Job]] = {}
        for j in live:
            by_kind.setdefault(j.kind, []).append(j)
        for kind, jobs in by_kind.items():
            self._execute_kind(kind, jobs)

    def _execute_kind(self, kind: str, jobs: list[_Job]) -> None:
        x = np.concatenate([j.x for j in jobs])
        t0 = time.perf_counter()
        try:
            out = self.fns[kind](x)
        except Exception as e:
            log.exception("model batch (%s, %d images) failed", kind, len(x))
            for j in jobs:
                _resolve(j.future, error=e)
            return
        self.observer.batch_done(kind, len(x) * self.images_per_row[kind], time.perf_counter() - t0)
        start = 0
        for j in jobs:
            _resolve(j.future, out[start : start + len(j.x)])
            start += len(j.x)
