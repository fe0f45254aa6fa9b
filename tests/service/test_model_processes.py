"""Model passes in forked worker processes: results, slot lifetimes, errors, a killed worker, shutdown."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from service.model_processes import ModelProcess, ModelProcessDied, ModelProcesses, available

pytestmark = pytest.mark.skipif(not available(torch.device("cpu")), reason="model processes need Linux (fork)")

IN_BYTES, OUT_BYTES = 8 * 3 * 4 * 4, 8 * 16 * 4


def _scaled(x: np.ndarray) -> np.ndarray:
    """n×3×4×4 uint8 → n×16 float32 that depend on every input value."""
    return (x.reshape(len(x), 3, 16).astype(np.float32) * np.arange(1, 4, dtype=np.float32)[:, None]).sum(1)


def _pid(x: np.ndarray) -> np.ndarray:
    return np.full((len(x), 1), os.getpid(), np.float32)


def _fail(x: np.ndarray) -> np.ndarray:
    raise ValueError(f"bad batch of {len(x)}")


def _slow(x: np.ndarray) -> np.ndarray:
    time.sleep(2)
    return _scaled(x)


FNS = {"scaled": _scaled, "pid": _pid, "fail": _fail, "slow": _slow}


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)


@pytest.fixture
def worker():
    proc = ModelProcess(FNS, IN_BYTES, OUT_BYTES)
    proc.start()
    yield proc
    proc.stop()


def test_a_pass_runs_in_another_process_and_returns_the_functions_output(worker):
    x = _images(5, 0)
    np.testing.assert_array_equal(worker.run("scaled", x), _scaled(x))
    assert worker.run("pid", x)[0, 0] == worker.pid != os.getpid()


def test_a_result_keeps_its_values_while_any_view_of_it_lives(worker):
    first = worker.run("scaled", _images(8, 1))
    row = first[3]  # a view, as the batcher hands each request its rows
    expected = row.copy()
    del first
    for seed in range(2, 10):  # more passes than there are slots
        worker.run("scaled", _images(8, seed))
    np.testing.assert_array_equal(row, expected)
    del row
    gc.collect()
    x = _images(8, 11)
    np.testing.assert_array_equal(worker.run("scaled", x), _scaled(x))


def test_results_held_by_slow_readers_never_block_a_pass(worker):
    held = [worker.run("scaled", _images(8, seed)) for seed in range(6)]  # every slot in use, and more
    for seed, out in enumerate(held):
        np.testing.assert_array_equal(out, _scaled(_images(8, seed)))


def test_inputs_and_outputs_larger_than_the_shared_regions_go_through_the_pipe():
    proc = ModelProcess(FNS, in_bytes=10, out_bytes=10)
    proc.start()
    try:
        x = _images(8, 3)
        np.testing.assert_array_equal(proc.run("scaled", x), _scaled(x))
    finally:
        proc.stop()


def test_an_error_in_a_pass_reaches_the_caller_and_the_worker_goes_on(worker):
    with pytest.raises(ValueError, match="bad batch of 2"):
        worker.run("fail", _images(2, 0))
    x = _images(2, 1)
    np.testing.assert_array_equal(worker.run("scaled", x), _scaled(x))


def test_a_worker_killed_during_a_pass_fails_that_pass_and_a_new_one_takes_the_next(worker):
    first = worker.pid
    threading.Timer(0.5, os.kill, (first, signal.SIGKILL)).start()
    with pytest.raises(ModelProcessDied, match="exit code -9"):
        worker.run("slow", _images(2, 0))
    x = _images(3, 1)
    np.testing.assert_array_equal(worker.run("scaled", x), _scaled(x))
    assert worker.pid != first and worker.starts == 2


def test_a_worker_that_died_while_idle_is_replaced_before_the_next_pass(worker):
    first = worker.pid
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    x = _images(3, 2)
    np.testing.assert_array_equal(worker.run("scaled", x), _scaled(x))
    assert worker.pid != first


def test_stop_ends_the_worker(worker):
    proc = worker._proc
    worker.stop()
    assert proc is not None and not proc.is_alive() and proc.exitcode == 0


def test_each_model_thread_runs_its_passes_in_its_own_worker():
    procs = ModelProcesses(FNS, workers=2, in_bytes=IN_BYTES, out_bytes=OUT_BYTES)
    procs.start()
    pids, fns, seen, done = procs.pids, procs.batch_fns(), [], threading.Barrier(2)

    def model_thread() -> None:
        procs.thread_init()
        try:
            seen.append(int(fns["pid"](_images(1, 0))[0, 0]))
            done.wait()  # both threads hold a worker at once
        finally:
            procs.thread_exit()

    threads = [threading.Thread(target=model_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    procs.stop()
    assert sorted(seen) == sorted(pids) and os.getpid() not in seen and len(set(seen)) == 2
    assert procs.pids == []  # the threads stopped their workers


def test_a_model_thread_without_a_worker_runs_its_passes_itself():
    procs = ModelProcesses(FNS, workers=1, in_bytes=IN_BYTES, out_bytes=OUT_BYTES)  # never started
    procs.thread_init()
    try:
        assert procs.batch_fns()["pid"](_images(1, 0))[0, 0] == os.getpid()
    finally:
        procs.thread_exit()


def _torch_work(x: np.ndarray) -> np.ndarray:
    """Torch ops large enough for parallel regions, and the thread counts the worker runs them with."""
    from model.parallel import split_threads

    big = torch.randn(1500, 1500)
    (big.clone() @ big).sum()
    return np.array([[split_threads(torch.device("cpu")), torch.get_num_threads()]] * len(x), np.float32)


def _first_pass_of_a_two_thread_worker(kind: str, fn, x: np.ndarray) -> np.ndarray | None:
    """`fn(x)` run as the first pass of a forked worker of 2 threads; None if it hung (killed after 60 s)."""
    proc = ModelProcess({kind: fn}, IN_BYTES, OUT_BYTES, torch_threads=2)
    proc.start()
    done: dict[str, np.ndarray] = {}
    runner = threading.Thread(target=lambda: done.setdefault("out", proc.run(kind, x)), daemon=True)
    runner.start()
    runner.join(60)
    if runner.is_alive():  # hung: free the test run from it
        os.kill(proc.pid, signal.SIGKILL)
        runner.join(10)
    proc.stop()
    return done.get("out")


def test_a_worker_of_several_threads_runs_after_the_parent_used_openmp():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    a = torch.randn(1500, 1500)
    (a.clone() @ a).sum()  # the parent's OpenMP threads exist now: a forked child must not wait for them
    torch.set_num_threads(before)
    out = _first_pass_of_a_two_thread_worker("torch", _torch_work, _images(2, 0))
    assert out is not None, "the worker hung in its first parallel region"
    assert out[0].tolist() == [2, 1]  # split across 2 threads of its own, torch itself single-threaded


def test_a_worker_splits_its_batches_with_a_splitter_the_parent_used_before_the_fork():
    from model.parallel import BatchSplitter

    splitter = BatchSplitter(torch.nn.Linear(4, 2))
    x = torch.randn(6, 4)
    parent = torch.cat(splitter.map(lambda m, part: m(part), x, threads=2))  # its pool's threads: the parent's

    def split(_: np.ndarray) -> np.ndarray:
        return torch.cat(splitter.map(lambda m, part: m(part), x, threads=2)).numpy()

    out = _first_pass_of_a_two_thread_worker("split", split, _images(1, 0))
    assert out is not None, "the worker waited for the parent's pool threads"
    np.testing.assert_allclose(out, parent.detach().numpy(), rtol=1e-6)
