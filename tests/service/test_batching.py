"""The micro-batcher: concurrent submissions share one call, batches and waits are bounded."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import BatcherClosed, MicroBatcher


class Recorder:
    def __init__(self, delay: float = 0.0):
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return x * 2


def run(coro):
    return asyncio.run(coro)


async def _with(batcher: MicroBatcher, coro_fn):
    await batcher.start()
    try:
        return await coro_fn()
    finally:
        await batcher.stop()


def test_concurrent_requests_share_one_call():
    rec = Recorder()
    b = MicroBatcher({"f": rec}, max_batch=64, max_wait_s=0.005)
    xs = [np.full((1, 3), i) for i in range(10)]
    out = run(_with(b, lambda: asyncio.gather(*(b.submit("f", x) for x in xs))))
    assert [o.tolist() for o in out] == [(x * 2).tolist() for x in xs]
    assert rec.sizes == [10]
    assert all(name.startswith("afv-model") for name in rec.threads)  # never the event loop thread


def test_batches_are_bounded_and_large_requests_split():
    rec = Recorder()
    b = MicroBatcher({"f": rec}, max_batch=4, max_wait_s=0.005)
    big = np.arange(11).reshape(11, 1)
    out = run(_with(b, lambda: asyncio.gather(b.submit("f", big), b.submit("f", big[:3]))))
    assert out[0].ravel().tolist() == (big * 2).ravel().tolist() and len(out[1]) == 3
    assert max(rec.sizes) <= 4 and sum(rec.sizes) == 14


def test_a_one_chunk_request_gets_its_rows_of_the_pass_without_a_copy():
    passes: list[np.ndarray] = []

    def f(x: np.ndarray) -> np.ndarray:
        passes.append(x * 2)
        return passes[-1]

    b = MicroBatcher({"f": f}, max_batch=8, max_wait_s=0.005)
    small, big = np.arange(3).reshape(3, 1), np.arange(10).reshape(10, 1)
    out_small, out_big = run(_with(b, lambda: asyncio.gather(b.submit("f", small), b.submit("f", big))))
    assert out_small.tolist() == (small * 2).tolist() and np.shares_memory(out_small, passes[0])
    assert out_big.tolist() == (big * 2).tolist()  # two chunks, joined
    assert not any(np.shares_memory(out_big, p) for p in passes)


def test_wait_is_bounded():
    rec = Recorder()
    b = MicroBatcher({"f": rec}, max_batch=1000, max_wait_s=0.005)

    async def one():
        t0 = time.perf_counter()
        await b.submit("f", np.zeros((1, 2)))
        return time.perf_counter() - t0

    assert run(_with(b, one)) < 0.2


def test_requests_arriving_during_a_pass_form_the_next_batch():
    rec = Recorder(delay=0.05)
    b = MicroBatcher({"f": rec}, max_batch=100, max_wait_s=0.001)

    async def staggered():
        first = asyncio.create_task(b.submit("f", np.zeros((1, 1))))
        await asyncio.sleep(0.01)  # the first pass is running now
        rest = [asyncio.create_task(b.submit("f", np.zeros((1, 1)))) for _ in range(7)]
        await asyncio.gather(first, *rest)

    run(_with(b, staggered))
    assert rec.sizes == [1, 7]


def test_jobs_that_waited_through_a_pass_run_next_without_waiting_again():
    starts: list[float] = []
    ends: list[float] = []

    def timed(x: np.ndarray) -> np.ndarray:
        starts.append(time.perf_counter())
        time.sleep(0.5)
        ends.append(time.perf_counter())
        return x

    b = MicroBatcher({"f": timed}, max_batch=100, max_wait_s=0.2)

    async def during_a_pass():
        first = asyncio.create_task(b.submit("f", np.zeros((1, 1))))
        await asyncio.sleep(0.3)  # the first job waited out its 0.2 s alone; its pass is running
        second = asyncio.create_task(b.submit("f", np.zeros((1, 1))))
        await asyncio.gather(first, second)

    run(_with(b, during_a_pass))
    assert len(starts) == 2
    # by the pass's end the second job has waited 0.4 s, more than its 0.2 s: it goes at once
    assert starts[1] - ends[0] < 0.1, starts[1] - ends[0]


def test_a_job_arriving_at_an_idle_model_waits_for_company():
    rec = Recorder()
    b = MicroBatcher({"f": rec}, max_batch=100, max_wait_s=0.3)

    async def staggered():
        first = asyncio.create_task(b.submit("f", np.zeros((1, 1))))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, b.submit("f", np.zeros((1, 1))))

    run(_with(b, staggered))
    assert rec.sizes == [2]


def test_kinds_are_run_separately_and_errors_propagate():
    def boom(x):
        raise RuntimeError("model failed")

    rec = Recorder()
    b = MicroBatcher({"ok": rec, "bad": boom}, max_batch=8, max_wait_s=0.005)

    async def mixed():
        return await asyncio.gather(
            b.submit("ok", np.ones((2, 1))), b.submit("bad", np.ones((1, 1))), return_exceptions=True
        )

    ok, bad = run(_with(b, mixed))
    assert ok.tolist() == [[2.0], [2.0]] and isinstance(bad, RuntimeError) and rec.sizes == [2]


def test_submit_after_stop_fails_cleanly():
    b = MicroBatcher({"f": Recorder()})

    async def go():
        await b.start()
        await b.stop()
        await b.submit("f", np.zeros((1, 1)))

    with pytest.raises(BatcherClosed):
        run(go())


def test_invalid_configuration():
    with pytest.raises(ValueError):
        MicroBatcher({"f": Recorder()}, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher({"f": Recorder()}, workers=0)
    with pytest.raises(ValueError):
        MicroBatcher({"f": Recorder()}, images_per_row={"f": 0})


def test_each_kind_fills_its_own_pass():
    rec_a, rec_b = Recorder(), Recorder()
    b = MicroBatcher({"a": rec_a, "b": rec_b}, max_batch=4, max_wait_s=0.05)

    async def interleaved():
        return await asyncio.gather(*(b.submit(k, np.ones((2, 1))) for k in ("a", "b", "a")))

    run(_with(b, interleaved))
    assert rec_a.sizes == [4] and rec_b.sizes == [2]  # not a pass of 2 + 2 images shared by both kinds


def test_the_model_thread_keeps_working_while_the_event_loop_is_busy():
    rec = Recorder(delay=0.02)
    b = MicroBatcher({"f": rec}, max_batch=1, max_wait_s=0.0)

    async def blocked_loop():
        tasks = [asyncio.create_task(b.submit("f", np.ones((1, 1)))) for _ in range(3)]
        await asyncio.sleep(0)  # the three submissions are queued
        time.sleep(0.5)  # the event loop is busy (e.g. parsing requests): passes must not wait for it
        passes_while_blocked = len(rec.sizes)
        await asyncio.gather(*tasks)
        return passes_while_blocked

    assert run(_with(b, blocked_loop)) == 3


def test_other_model_work_runs_in_the_model_thread_and_stop_fails_what_waits():
    rec = Recorder(delay=0.2)
    b = MicroBatcher({"f": rec}, max_batch=1, max_wait_s=0.0)

    async def go():
        await b.start()
        name = await b.run_in_worker(lambda: threading.current_thread().name)
        running = asyncio.create_task(b.submit("f", np.ones((1, 1))))
        queued = asyncio.create_task(b.submit("f", np.ones((1, 1))))
        await asyncio.sleep(0.05)  # the first pass is running, the second waits
        await b.stop()
        return name, await asyncio.gather(running, queued, return_exceptions=True)

    name, (first, second) = run(go())
    assert name.startswith("afv-model")
    assert first.tolist() == [[2.0]] and isinstance(second, BatcherClosed)


def test_several_model_threads_run_passes_at_the_same_time_each_set_up_once():
    met = threading.Barrier(2, timeout=5)  # each pass waits for a second pass running beside it
    inits: list[str] = []

    def meet(x: np.ndarray) -> np.ndarray:
        met.wait()
        return x + 1

    b = MicroBatcher(
        {"f": meet},
        max_batch=1,
        max_wait_s=0.0,
        workers=2,
        thread_init=lambda: inits.append(threading.current_thread().name),
    )
    out = run(_with(b, lambda: asyncio.gather(*(b.submit("f", np.full((1, 1), i)) for i in range(4)))))
    assert [o.item() for o in out] == [1, 2, 3, 4]
    assert sorted(inits) == ["afv-model-0", "afv-model-1"]


def test_stop_ends_every_model_thread():
    b = MicroBatcher({"f": Recorder()}, workers=3)

    async def go():
        await b.start()
        threads = list(b._threads)
        await b.stop()
        return threads

    assert [t.is_alive() for t in run(go())] == [False, False, False]


def test_each_model_thread_runs_its_exit_hook_as_the_batcher_stops():
    exits: list[str] = []
    b = MicroBatcher({"f": Recorder()}, workers=2, thread_exit=lambda: exits.append(threading.current_thread().name))
    run(_with(b, lambda: b.submit("f", np.zeros((1, 1)))))
    assert sorted(exits) == ["afv-model-0", "afv-model-1"]


class Observed:
    def __init__(self):
        self.images: list[tuple[str, int]] = []

    def batch_done(self, kind: str, size: int, seconds: float) -> None:
        self.images.append((kind, size))

    def queue_wait(self, seconds: float) -> None:
        pass


def test_rows_of_image_pairs_count_twice_toward_the_batch_and_the_metrics():
    rec, seen = Recorder(), Observed()
    b = MicroBatcher({"pairs": rec}, max_batch=6, max_wait_s=0.05, observer=seen, images_per_row={"pairs": 2})
    pairs = np.arange(7 * 2).reshape(7, 2)
    out = run(_with(b, lambda: asyncio.gather(b.submit("pairs", pairs), b.submit("pairs", pairs[:2]))))
    assert out[0].tolist() == (pairs * 2).tolist() and len(out[1]) == 2
    assert max(rec.sizes) == 3 and sum(rec.sizes) == 9  # at most 6 images: 3 pairs a pass
    assert sum(n for _, n in seen.images) == 18 and {k for k, _ in seen.images} == {"pairs"}


def test_a_row_of_more_images_than_a_batch_holds_runs_in_a_pass_of_its_own():
    rec = Recorder()
    b = MicroBatcher({"triplets": rec}, max_batch=2, max_wait_s=0.01, images_per_row={"triplets": 3})
    rows = np.arange(3 * 3).reshape(3, 3)
    out = run(_with(b, lambda: asyncio.wait_for(b.submit("triplets", rows), 10)))
    assert out.tolist() == (rows * 2).tolist()
    assert rec.sizes == [1, 1, 1]
