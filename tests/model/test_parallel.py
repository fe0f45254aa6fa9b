"""Batch parallelism on CPU: replicas own their modules and share the rest, a split batch gives the
unsplit result, each part runs on one torch thread, and the caller's thread settings are left alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from model import parallel
from model.parallel import BatchSplitter, SplitProjector, model_threads, replicate, split_threads
from model.sampled import SampledAFV
from model.sketch import Projector


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_replica_owns_its_modules_and_locks_and_shares_the_other_tensors(extractor):
    copy_ = replicate(extractor)
    assert copy_.d is not extractor.d and copy_.lock is not extractor.lock
    for p, q in zip(extractor.d.parameters(), copy_.d.parameters(), strict=True):
        assert p is not q and torch.equal(p, q)
    assert copy_.stats.mean is extractor.stats.mean and copy_.inv_std is extractor.inv_std  # read-only, shared


def test_a_replicated_sampler_keys_its_plans_by_its_own_modules(extractor):
    sampler = SampledAFV(extractor, samples=256)
    copy_ = replicate(sampler)
    assert copy_.extractor.d is not extractor.d
    mine = set(copy_.extractor.d.modules())
    assert copy_._by_module and all(m in mine for m in copy_._by_module)


@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_a_batch_split_across_threads_gives_the_unsplit_sketches(extractor, image_batch, mode, two_torch_threads):
    projector = Projector(extractor, d=64, mode=mode, samples=256)
    torch.set_num_threads(1)
    whole = projector.embed(image_batch[:9])
    torch.set_num_threads(2)
    parts = BatchSplitter(projector).map(Projector.embed, image_batch[:9], split_threads(extractor.device))
    assert [len(p) for p in parts] == [5, 4]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())


def test_parts_run_on_one_torch_thread_and_the_callers_setting_stays(two_torch_threads):
    def threads(_, x: torch.Tensor) -> list[int]:
        return [torch.get_num_threads()] * len(x)

    splitter = BatchSplitter(object())
    assert splitter.map(threads, torch.zeros(5), 2) == [[1, 1, 1], [1, 1]]
    assert splitter.map(threads, torch.zeros(1), 2) == [[2]]  # one image: the caller's threads, no split
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == 2 and seen == [2]  # new threads still get the process's setting


def test_parts_of_a_given_size_are_a_multiple_of_the_threads_and_run_on_that_many_replicas(two_torch_threads):
    splitter = BatchSplitter(object())
    sizes = splitter.map(lambda _, x: len(x), torch.zeros(40), 2, part=8)
    assert sizes == [7, 7, 7, 7, 6, 6] and splitter._count == 2  # 6 parts of about 8, on 2 threads
    assert splitter.map(lambda _, x: len(x), torch.zeros(3), 2, part=8) == [2, 1]


def test_concurrent_callers_each_get_their_own_results(extractor, image_batch, two_torch_threads):
    projector = Projector(extractor, d=64, mode="sampled", samples=256)
    splitter = BatchSplitter(projector)
    torch.set_num_threads(1)
    want = [projector.embed(image_batch[i : i + 6]) for i in (0, 6, 12)]
    torch.set_num_threads(2)
    got: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        got[i] = np.concatenate(splitter.map(Projector.embed, image_batch[i : i + 6], 2))

    callers = [threading.Thread(target=call, args=(i,)) for i in (0, 6, 12)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    for i, w in zip((0, 6, 12), want):
        np.testing.assert_allclose(got[i], w, rtol=1e-5, atol=1e-6 * np.abs(w).max())


def test_off_the_cpu_a_batch_is_not_split():
    assert split_threads(torch.device("cuda")) == 1 and split_threads(torch.device("cpu")) == torch.get_num_threads()


def test_one_thread_runs_the_parts_in_turn_on_the_calling_thread(two_torch_threads):
    splitter = BatchSplitter(object())
    calls = splitter.map(lambda _, x: (int(x[0]), len(x), threading.current_thread()), torch.arange(20), 1, part=8)
    me = threading.current_thread()
    assert calls == [(0, 7, me), (7, 7, me), (14, 6, me)] and splitter.replicas == 1


def test_without_a_part_size_one_thread_runs_the_whole_batch(two_torch_threads):
    splitter = BatchSplitter(object())
    assert splitter.map(lambda _, x: len(x), torch.zeros(20), 1) == [20]


def test_on_one_cpu_thread_a_split_projector_embeds_parts_of_its_serial_size(extractor, image_batch, monkeypatch):
    split = SplitProjector(Projector(extractor, d=64, mode="sampled", samples=256), part=2, serial_part=4)
    sizes: list[int] = []
    monkeypatch.setattr(Projector, "embed", lambda self, x: sizes.append(len(x)) or np.zeros((len(x), 64)))
    monkeypatch.setattr(parallel, "split_threads", lambda device: 1)
    assert split.embed(image_batch[:10]).shape == (10, 64)
    assert sizes == [4, 3, 3]


def test_off_the_cpu_a_split_projector_embeds_the_batch_whole(extractor, image_batch, monkeypatch):
    split = SplitProjector(Projector(extractor, d=64, mode="sampled", samples=256), part=2, serial_part=2)
    sizes: list[int] = []
    monkeypatch.setattr(Projector, "embed", lambda self, x: sizes.append(len(x)) or np.zeros((len(x), 64)))
    monkeypatch.setattr(split.projector.extractor, "device", torch.device("cuda"))  # only read, never used
    split.embed(image_batch[:6])
    assert sizes == [6]


def test_concurrent_whole_batch_callers_get_replicas_of_their_own(extractor, image_batch):
    splitter = BatchSplitter(extractor)
    met = threading.Barrier(2, timeout=10)  # both callers must hold a replica at the same time
    held: list[int] = []

    def embed(e, x: torch.Tensor) -> torch.Tensor:
        held.append(id(e))
        met.wait()
        return e.embed(x)

    want = extractor.embed(image_batch[:4])
    got: list[torch.Tensor] = []
    callers = [threading.Thread(target=lambda: got.extend(splitter.map(embed, image_batch[:4], 1))) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(set(held)) == 2 and splitter.replicas == 2 and len(got) == 2
    for g in got:
        torch.testing.assert_close(g, want)


def test_two_splitters_of_one_model_never_share_its_modules_or_lock(extractor, image_batch):
    afvs, sketches = BatchSplitter(extractor), BatchSplitter(Projector(extractor, d=64, mode="sampled", samples=256))
    used = afvs.map(lambda e, _: (e.d, e.lock), image_batch[:2], 1)
    used += sketches.map(lambda p, _: (p.extractor.d, p.extractor.lock), image_batch[:2], 1)
    used.append((extractor.d, extractor.lock))
    assert len({id(d) for d, _ in used}) == 3 and len({id(lock) for _, lock in used}) == 3


def test_model_threads_default_to_one_per_torch_thread_on_the_cpu_and_one_on_a_gpu(two_torch_threads):
    assert model_threads(None, torch.device("cpu")) == (2, 1)
    assert model_threads(None, torch.device("cuda")) == (1, 2)
    assert model_threads(1, torch.device("cpu")) == (1, 2)
    assert model_threads(3, torch.device("cpu")) == (3, 1)
