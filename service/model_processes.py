"""Model passes in worker processes: each model thread hands its batches to a forked process of its own,
with the images in and the outputs out through shared memory.

Why: model threads inside the server's process take the GIL back after every torch op, and the event
loop holds it often. Under 32 clients each model thread slept 10-12 % of the time waiting for it, on a
core that then idled (docs/results.md). A process of its own runs its pass with no GIL to share; the
model thread (now a proxy) only takes the GIL once a pass, to hand the result on.

The workers are forked from the event loop's thread after the model is loaded (see `ModelProcesses`),
so they share the model's memory and run the same batch functions, each with its share of the torch
threads. Each worker has one input region and a few output slots (anonymous shared `mmap`s, which need
no /dev/shm and vanish with the processes).
A result is a NumPy view of its slot: the slot is reused only once every view of it is gone, and when
none is free the result is copied out of a spare slot, so a slow reader never blocks the model.

A worker that dies (killed, out of memory) fails only the pass it was running (`ModelProcessDied`) and
is forked again before the next one. Linux only (fork; `PR_SET_PDEATHSIG`, so that workers never
outlive the server), CPU only (CUDA does not survive fork); elsewhere the model threads run the passes.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import math
import mmap
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from model.memory import keep_freed_memory
from model.parallel import set_thread_torch_threads, threads_after_fork
from service.batching import BatchFn

log = logging.getLogger(__name__)

RESULT_SLOTS = 2  # results in use at once (the event loop reads one while the next pass runs), plus a spare
MAX_SLOT_BYTES = 512 * 1024 * 1024  # larger results go through the pipe, as pickles
_PR_SET_PDEATHSIG = 1
_POLL_S = 1.0  # how often a waiting proxy checks that its worker still lives


class ModelProcessDied(RuntimeError):
    """The worker process exited during a pass (killed, out of memory, crashed); the next pass gets a new one."""


def available(device: torch.device) -> bool:
    """Whether model passes can run in forked processes here: Linux and a CPU model."""
    return sys.platform.startswith("linux") and device.type == "cpu"


class _SlotArray(np.ndarray):
    """Marks the array a result's views lead back to: NumPy collapses view chains only up to a change of type."""


class ModelProcess:
    """One forked worker that runs `fns[kind](x)` for the thread that started it, through shared memory."""

    def __init__(
        self,
        fns: dict[str, BatchFn],
        in_bytes: int,
        out_bytes: int,
        torch_threads: int = 1,
        fork: Callable[[Callable[[], None]], None] | None = None,
    ):
        self.fns, self.torch_threads = fns, torch_threads
        self._fork = fork or (lambda start: start())  # where replacements are forked (ModelProcesses: the loop)
        self._in = mmap.mmap(-1, max(1, in_bytes))
        slot = max(1, min(out_bytes, MAX_SLOT_BYTES))
        self._out = [mmap.mmap(-1, slot) for _ in range(RESULT_SLOTS + 1)]
        self._spare = RESULT_SLOTS  # copied out at once, so always free for its one (sequential) caller
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()  # put() is safe inside a finalizer
        for i in range(RESULT_SLOTS):
            self._free.put(i)
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before `start`)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Fork the worker. The kernel kills it when the calling thread ends: call from a long-lived one."""
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_serve,
            args=(child, self.fns, self._in, self._out, self.torch_threads, os.getpid()),
            name=f"afv-model-process-{threading.current_thread().name}",
            daemon=True,
        )
        with warnings.catch_warnings():  # Python ≥ 3.12 warns of fork beside threads: the worker uses none of theirs
            warnings.filterwarnings("ignore", ".*fork", DeprecationWarning)
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.starts += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit after its pass; kill it if it has not within `timeout` seconds."""
        if self._proc is None or self._conn is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = self._conn = None

    def run(self, kind: str, x: np.ndarray) -> np.ndarray:
        """fns[kind](x), computed by the worker; a dead worker is replaced first, or fails this pass."""
        if self._proc is None or not self._proc.is_alive():
            self._restart("is not running")
        x = np.ascontiguousarray(x)
        inline = x.nbytes <= len(self._in)
        if inline:
            np.frombuffer(self._in, np.uint8, x.nbytes)[:] = x.reshape(-1).view(np.uint8)
        slot = self._take()
        handed_out = False
        try:
            reply = self._ask((kind, x.shape, x.dtype.str, slot) if inline else (kind, x, None, slot))
            out, handed_out = self._result(reply, slot)
            return out
        finally:
            if not handed_out and slot != self._spare:
                self._free.put(slot)

    def _take(self) -> int:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return self._spare

    def _ask(self, request: tuple) -> Any:
        """Send one pass and wait for its reply, watching that the worker lives."""
        assert self._conn is not None and self._proc is not None
        try:
            self._conn.send(request)
            while not self._conn.poll(_POLL_S):
                if not self._proc.is_alive():
                    raise EOFError
            reply = self._conn.recv()
        except (EOFError, OSError) as e:
            self._proc.join(1.0)  # its pipe can close before it is reaped: exitcode would still be None
            code = self._proc.exitcode
            self._restart(f"exited during a pass (exit code {code})")
            raise ModelProcessDied(f"the model process exited during the pass (exit code {code}); retry") from e
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _result(self, reply: Any, slot: int) -> tuple[np.ndarray, bool]:
        """The pass's output, and whether it is a view of `slot` (which it then frees once unused)."""
        if isinstance(reply, np.ndarray):  # too large for a slot: it came through the pipe
            return reply, False
        shape, dtype = reply
        flat = np.frombuffer(self._out[slot], np.dtype(dtype), math.prod(shape))
        if slot == self._spare:
            return flat.reshape(shape).copy(), False
        out = flat.view(_SlotArray).reshape(shape).view(np.ndarray)
        weakref.finalize(out, self._free.put, slot)
        return out, True

    def _restart(self, why: str) -> None:
        if self._proc is not None:
            log.error("model process %s %s; starting a new one", self.pid, why)
            self._proc.join(0.1)
            if self._conn is not None:
                self._conn.close()
            self._proc = self._conn = None
        self._fork(self.start)


def _serve(
    conn: Connection, fns: dict[str, BatchFn], inbuf: mmap.mmap, outs: list[mmap.mmap], threads: int, parent: int
) -> None:
    """The worker: run passes until the proxy sends None or goes away."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    keep_freed_memory()
    threads_after_fork(threads)  # never torch's own threads here: they hang after fork (see there)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break
        if request is None:
            break
        conn.send(_pass(fns, inbuf, outs, *request))
    conn.close()


def _pass(fns: dict[str, BatchFn], inbuf: mmap.mmap, outs: list[mmap.mmap], kind: str, x, dtype, slot: int) -> Any:
    """One pass in the worker: (shape, dtype) of the output written to `slot`, the output, or the error."""
    try:
        if dtype is not None:
            x = np.frombuffer(inbuf, np.dtype(dtype), math.prod(x)).reshape(x)
        out = np.ascontiguousarray(fns[kind](x))
    except Exception as e:
        return _sendable(e)
    if out.nbytes > len(outs[slot]):
        return out
    np.frombuffer(outs[slot], out.dtype, out.size).reshape(out.shape)[...] = out
    return out.shape, out.dtype.str


def _sendable(e: Exception) -> Exception:
    """The exception itself if it survives pickling, else a RuntimeError with its message."""
    try:
        return pickle.loads(pickle.dumps(e))
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the thread that forked it ends (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent ended before the prctl took effect
        os._exit(0)


class ModelProcesses:
    """The micro-batcher's side: `start` forks one worker per model thread from the event loop's thread, each
    model thread takes one (`thread_init`) and runs its passes there; a thread left without one runs them itself.

    Forking from the main thread matters: the worker's allocations then come from glibc's main heap, which keeps
    the large blocks a pass frees (`model.memory`), where a model thread's own heap would hand them back to the
    kernel and fault them in again every pass (80,000-90,000 page faults a second per worker, measured)."""

    def __init__(self, fns: dict[str, BatchFn], workers: int, in_bytes: int, out_bytes: int, torch_threads: int = 1):
        self._fns, self._threads = fns, torch_threads
        self._procs = [
            ModelProcess(fns, in_bytes, out_bytes, torch_threads=torch_threads, fork=self._fork) for _ in range(workers)
        ]
        self._unbound: queue.SimpleQueue[ModelProcess] = queue.SimpleQueue()
        self._local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Fork the workers (call from the event loop's thread, which later forks their replacements too)."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        for proc in self._procs:
            try:
                proc.start()
            except OSError as e:
                log.error("cannot start a model process (%s): a model thread will run its passes itself", e)
                continue
            self._unbound.put(proc)

    def stop(self) -> None:
        """Stop the workers no model thread took (the threads stop their own in `thread_exit`)."""
        while not self._unbound.empty():
            self._unbound.get().stop()

    def batch_fns(self) -> dict[str, BatchFn]:
        """The functions to give the batcher: each runs in the calling model thread's worker."""
        return {kind: functools.partial(self._run, kind) for kind in self._fns}

    def thread_init(self) -> None:
        """Take a worker for this model thread (none left: the thread runs its passes itself)."""
        set_thread_torch_threads(self._threads)
        try:
            self._local.process = self._unbound.get_nowait()
        except queue.Empty:
            self._local.process = None

    def thread_exit(self) -> None:
        """Stop this model thread's worker."""
        proc: ModelProcess | None = getattr(self._local, "process", None)
        if proc is not None:
            proc.stop()

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self._procs if p.pid is not None]

    @property
    def restarts(self) -> int:
        """Workers forked again after one died."""
        return sum(max(0, p.starts - 1) for p in self._procs)

    def _run(self, kind: str, x: np.ndarray) -> np.ndarray:
        proc: ModelProcess | None = getattr(self._local, "process", None)
        return self._fns[kind](x) if proc is None else proc.run(kind, x)

    def _fork(self, start: Callable[[], None]) -> None:
        """Run a worker's `start` on the event loop's thread when called from another one (a model thread)."""
        loop = self._loop
        if loop is None or loop.is_closed() or _running_here(loop):
            start()
            return

        async def on_loop() -> None:
            start()

        try:
            asyncio.run_coroutine_threadsafe(on_loop(), loop).result()
        except RuntimeError:  # the loop stopped meanwhile
            start()


def _running_here(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
