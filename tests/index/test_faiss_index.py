"""The FAISS wrapper against an exact faiss.IndexFlatL2: plans, search of every kind, ids, files, re-ranking."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from index.faiss_index import (
    FLAT_MAX,
    ID_BYTES,
    MIN_TRAIN,
    FaissIndexError,
    IndexPlan,
    VectorIndex,
    exact_rerank,
    plan_index,
)

D, N, NQ, K = 16, 1500, 40, 10
MiB = 2**20


def clustered(n: int, seed: int) -> np.ndarray:
    """Points around 30 shared centres (real sketches cluster; uniform noise is PQ's worst case)."""
    centres = np.random.default_rng(1234).normal(size=(30, D))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 30, n)] + 0.35 * rng.normal(size=(n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Database vectors, queries and non-contiguous external ids."""
    return clustered(N, 0), clustered(NQ, 1), np.arange(N, dtype=np.int64) * 3 + 1000


@pytest.fixture(scope="module")
def exact(data) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: squared L2 distances and external ids from faiss.IndexFlatL2."""
    xb, xq, ids = data
    flat = faiss.IndexFlatL2(D)
    flat.add(xb)
    D2, I = flat.search(xq, K)
    return D2, ids[I]


def recall_at_k(I: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(I, truth)]))


def build(plan: IndexPlan, data) -> VectorIndex:
    xb, _, ids = data
    faiss.omp_set_num_threads(1)
    v = VectorIndex.build(plan, None if plan.kind == "flat" else xb)
    v.add(xb, ids)
    return v


@pytest.fixture(scope="module")
def flat(data) -> VectorIndex:
    return build(IndexPlan("flat", D), data)


@pytest.fixture(scope="module")
def ivfpq(data) -> VectorIndex:
    return build(IndexPlan("ivfpq", D, nlist=16, m=8, nprobe=16), data)


@pytest.fixture(scope="module")
def opq(data) -> VectorIndex:
    return build(IndexPlan("opq-ivfpq", D, nlist=16, m=4, nprobe=16), data)


# ---- plans -------------------------------------------------------------------------------------


def test_plan_small_collection_is_flat():
    plan = plan_index(1000, 256)
    assert plan == IndexPlan("flat", 256)
    assert plan.factory == "Flat"
    assert plan.bytes_per_vector == 4 * 256 + ID_BYTES
    assert plan.min_train == 0


def test_plan_below_min_train_is_flat_even_over_budget():
    assert plan_index(MIN_TRAIN - 1, 1024, memory_budget=1 * MiB).kind == "flat"


def test_plan_large_collection_is_opq_ivfpq_within_budget():
    n, d, budget = 1_000_000, 256, 64 * MiB
    plan = plan_index(n, d, memory_budget=budget)
    assert plan.kind == "opq-ivfpq"
    assert d % plan.m == 0 and plan.m <= d // 8
    assert n * plan.bytes_per_vector <= budget
    assert 16 <= plan.nlist <= 4096 and plan.nlist & (plan.nlist - 1) == 0  # a power of two
    assert 8 <= plan.nprobe <= 64
    assert plan.factory == f"OPQ{plan.m},IVF{plan.nlist},PQ{plan.m}"
    assert plan.min_train == max(39 * plan.nlist, 256 * 39)


def test_plan_over_flat_max_is_compressed_even_when_flat_fits_budget():
    assert plan_index(FLAT_MAX + 1, 8, memory_budget=2**40).kind == "opq-ivfpq"
    assert plan_index(FLAT_MAX, 8, memory_budget=2**40).kind == "flat"


def test_plan_over_flat_budget_is_compressed():
    n, d = 20_000, 256
    assert plan_index(n, d, memory_budget=n * (4 * d + ID_BYTES)).kind == "flat"
    assert plan_index(n, d, memory_budget=n * (4 * d + ID_BYTES) - 1).kind == "opq-ivfpq"


def test_plan_smaller_budget_gives_fewer_pq_bytes():
    big = plan_index(1_000_000, 256, memory_budget=256 * MiB)
    small = plan_index(1_000_000, 256, memory_budget=20 * MiB)
    assert small.m < big.m
    assert 1_000_000 * small.bytes_per_vector <= 20 * MiB


def test_plan_explicit_kinds_are_honoured():
    assert plan_index(10, 64, kind="flat").kind == "flat"
    assert plan_index(10**6, 64, kind="flat").kind == "flat"
    plan = plan_index(100_000, 64, kind="ivfpq")
    assert plan.kind == "ivfpq" and plan.factory == f"IVF{plan.nlist},PQ{plan.m}"
    assert plan_index(100_000, 64, kind="opq-ivfpq").kind == "opq-ivfpq"


def test_plan_unknown_kind_raises():
    with pytest.raises(FaissIndexError, match="unknown index kind 'hnsw'"):
        plan_index(10, 64, kind="hnsw")


def test_plan_budget_too_small_for_any_code_raises():
    with pytest.raises(FaissIndexError, match="memory budget"):
        plan_index(1_000_000, 256, memory_budget=1 * MiB)


def test_plan_to_dict_round_trips():
    plan = plan_index(200_000, 128)
    assert IndexPlan(**plan.to_dict()) == plan


# ---- search against exact ----------------------------------------------------------------------


def test_flat_search_matches_exact_ids_and_euclidean_distances(flat, data, exact):
    _, xq, _ = data
    D2, truth = exact
    Dv, I = flat.search(xq, K)
    np.testing.assert_array_equal(I, truth)
    np.testing.assert_allclose(Dv, np.sqrt(D2), rtol=1e-5, atol=1e-5)  # plain L2, not squared


def test_flat_distances_are_plain_euclidean_not_squared():
    v = VectorIndex.build(IndexPlan("flat", 2))
    v.add(np.array([[0, 0], [30, 40]], np.float32), np.array([7, 8]))
    Dv, I = v.search(np.array([[3, 4]], np.float32), 2)
    assert I.tolist() == [[7, 8]]
    np.testing.assert_allclose(Dv, [[5, 45]])  # squared would be 25 and 2025


@pytest.mark.parametrize("kind, min_recall", [("ivfpq", 0.8), ("opq", 0.55)])  # 8 and 4 bytes/vector; got .89, .68
def test_compressed_kinds_recall_at_10_against_exact(kind, min_recall, request, data, exact):
    v = request.getfixturevalue(kind)
    _, xq, _ = data
    _, truth = exact
    Dv, I = v.search(xq, K)
    assert recall_at_k(I, truth) >= min_recall
    assert (np.diff(Dv, axis=1) >= -1e-6).all()  # nearest first
    assert np.isin(I, data[2]).all()  # external ids, no -1 with nprobe = nlist


@pytest.mark.parametrize("kind", ["ivfpq", "opq"])
def test_compressed_kinds_with_exact_rerank_recover_exact_neighbours(kind, request, data, exact):
    v = request.getfixturevalue(kind)
    xb, xq, ids = data
    D2, truth = exact
    _, cand = v.search(xq, 10 * K)
    Dr, Ir = exact_rerank(xq, cand, dict(zip(ids.tolist(), xb)), K)
    assert recall_at_k(Ir, truth) >= 0.95
    np.testing.assert_allclose(Dr[Ir == truth], np.sqrt(D2)[Ir == truth], rtol=1e-4, atol=1e-4)


def test_ivf_build_skips_polysemous_training(ivfpq, opq):
    """Polysemous training (~30 s per build) only serves polysemous_ht searches, which are never made."""
    for v in (ivfpq, opq):
        assert faiss.downcast_index(faiss.extract_index_ivf(v.index)).do_polysemous_training is False


def test_nprobe_override_limits_search_to_that_many_lists(ivfpq, data):
    xb, xq, ids = data
    ivf = faiss.extract_index_ivf(ivfpq.index)
    list_of = dict(zip(ids.tolist(), ivf.quantizer.assign(xb, 1).ravel().tolist()))

    def lists_hit(nprobe: int) -> list[int]:
        _, I = ivfpq.search(xq, 50, nprobe=nprobe)
        return [len({list_of[int(i)] for i in row if i >= 0}) for row in I]

    assert max(lists_hit(1)) == 1
    assert max(lists_hit(16)) > 1  # the plan's default (16) probes every list


def test_ivf_build_without_enough_training_vectors_raises(data):
    plan = IndexPlan("ivfpq", D, nlist=16, m=4, nprobe=4)
    with pytest.raises(FaissIndexError, match="needs training vectors"):
        VectorIndex.build(plan, None)
    with pytest.raises(FaissIndexError, match="got 255"):
        VectorIndex.build(plan, data[0][:255])


# ---- ids, subsets, shapes ----------------------------------------------------------------------


def test_empty_index_search_returns_minus_one_and_inf():
    v = VectorIndex.build(IndexPlan("flat", D))
    Dv, I = v.search(np.zeros((2, D), np.float32), 3)
    assert I.shape == (2, 3) and (I == -1).all() and np.isinf(Dv).all()


def test_k_larger_than_index_pads_with_minus_one(data):
    xb, xq, ids = data
    v = VectorIndex.build(IndexPlan("flat", D))
    v.add(xb[:3], ids[:3])
    Dv, I = v.search(xq[:2], 5)
    assert sorted(I[0, :3]) == sorted(ids[:3])
    assert (I[:, 3:] == -1).all()


def test_add_and_remove_by_id(data):
    xb, xq, ids = data
    v = VectorIndex.build(IndexPlan("flat", D))
    v.add(xb[:100], ids[:100])
    assert v.ntotal == 100
    _, I = v.search(xb[5:6], 1)
    assert I[0, 0] == ids[5]
    assert v.remove(np.array([ids[5], ids[6], 999_999])) == 2
    assert v.ntotal == 98
    _, I = v.search(xb[5:7], 98)
    assert not np.isin([ids[5], ids[6]], I).any()
    assert v.remove(np.array([], dtype=np.int64)) == 0


def test_remove_from_ivfpq_by_id(data):
    xb, _, ids = data
    v = build(IndexPlan("ivfpq", D, nlist=16, m=4, nprobe=16), data)
    removed = ids[:50]
    assert v.remove(removed) == 50
    assert v.ntotal == N - 50
    _, I = v.search(xb[:50], 20)
    assert not np.isin(removed, I).any()


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "opq"])
def test_subset_search_returns_only_subset_ids(kind, request, data):
    v = request.getfixturevalue(kind)
    xb, xq, ids = data
    subset = ids[::7][:40]
    Dv, I = v.search(xq, K, subset=subset)
    assert np.isin(I[I >= 0], subset).all()
    assert (I >= 0).sum() > 0


def test_flat_subset_search_matches_exact_search_over_the_subset(flat, data):
    xb, xq, ids = data
    pos = np.arange(0, N, 11)
    sub = faiss.IndexFlatL2(D)
    sub.add(xb[pos])
    D2, I = sub.search(xq, K)
    Dv, Iv = flat.search(xq, K, subset=ids[pos])
    np.testing.assert_array_equal(Iv, ids[pos][I])
    np.testing.assert_allclose(Dv, np.sqrt(D2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(D,), (3, D + 1), (2, 1, D)])
def test_wrong_vector_shapes_raise(shape, flat, data):
    with pytest.raises(FaissIndexError, match=f"n×{D}"):
        flat.search(np.zeros(shape, np.float32), 1)
    v = VectorIndex.build(IndexPlan("flat", D))
    with pytest.raises(FaissIndexError):
        v.add(np.zeros(shape, np.float32), np.arange(3))


def test_float64_queries_are_accepted(flat, data):
    _, xq, _ = data
    np.testing.assert_array_equal(flat.search(xq.astype(np.float64), K)[1], flat.search(xq, K)[1])


# ---- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "opq"])
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_save_load_round_trip_gives_identical_search(kind, mmap, request, data, tmp_path):
    v = request.getfixturevalue(kind)
    _, xq, _ = data
    path = tmp_path / "vectors.faiss"
    v.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.faiss"]  # no temp file left
    w = VectorIndex.load(path, v.plan, mmap=mmap)
    assert w.ntotal == v.ntotal and w.mmapped is mmap and w.plan == v.plan
    Dv, Iv = v.search(xq, K)
    Dw, Iw = w.search(xq, K)
    np.testing.assert_array_equal(Iw, Iv)
    np.testing.assert_allclose(Dw, Dv, rtol=1e-6)


def test_mmapped_index_refuses_writes(flat, tmp_path, data):
    path = tmp_path / "v.faiss"
    flat.save(path)
    w = VectorIndex.load(path, flat.plan, mmap=True)
    with pytest.raises(FaissIndexError, match="memory-mapped"):
        w.add(data[0][:1], np.array([1]))
    with pytest.raises(FaissIndexError, match="memory-mapped"):
        w.remove(np.array([data[2][0]]))
    assert w.ntotal == N


def test_load_rejects_wrong_dimension(flat, tmp_path):
    path = tmp_path / "v.faiss"
    flat.save(path)
    with pytest.raises(FaissIndexError, match=f"dimension {D}, expected {D * 2}"):
        VectorIndex.load(path, IndexPlan("flat", D * 2))


@pytest.mark.parametrize("content", [b"", b"garbage" * 50], ids=["empty", "garbage"])
def test_load_unreadable_file_raises_faiss_index_error(content, tmp_path):
    path = tmp_path / "v.faiss"
    path.write_bytes(content)
    with pytest.raises(FaissIndexError, match="cannot read FAISS index"):
        VectorIndex.load(path, IndexPlan("flat", D))


def test_load_truncated_file_raises_faiss_index_error(flat, tmp_path):
    path = tmp_path / "v.faiss"
    flat.save(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FaissIndexError):
        VectorIndex.load(path, flat.plan)


def test_save_replaces_existing_file_atomically(flat, tmp_path: Path):
    path = tmp_path / "v.faiss"
    path.write_bytes(b"old")
    flat.save(path)
    assert VectorIndex.load(path, flat.plan).ntotal == N


# ---- exact re-ranking --------------------------------------------------------------------------


def test_exact_rerank_equals_brute_force(data):
    xb, xq, ids = data
    rng = np.random.default_rng(5)
    cand = np.stack([rng.choice(ids, 30, replace=False) for _ in range(NQ)])
    vectors = dict(zip(ids.tolist(), xb))
    Dr, Ir = exact_rerank(xq, cand, vectors, K)
    for q in range(NQ):
        dist = np.linalg.norm(np.stack([vectors[int(i)] for i in cand[q]]) - xq[q], axis=1)
        order = np.argsort(dist, kind="stable")[:K]
        np.testing.assert_array_equal(Ir[q], cand[q][order])
        np.testing.assert_allclose(Dr[q], dist[order], rtol=1e-6)


def test_exact_rerank_skips_missing_and_unknown_ids_and_pads():
    xq = np.zeros((2, 2), np.float32)
    vectors = {1: np.array([1, 0], np.float32), 2: np.array([0, 2], np.float32), 3: np.array([3, 0], np.float32)}
    cand = np.array([[3, -1, 2, 99, 1], [-1, -1, -1, -1, -1]])
    Dr, Ir = exact_rerank(xq, cand, vectors, 4)
    assert Ir.tolist() == [[1, 2, 3, -1], [-1, -1, -1, -1]]
    np.testing.assert_allclose(Dr[0, :3], [1, 2, 3])
    assert np.isinf(Dr[0, 3]) and np.isinf(Dr[1]).all()
