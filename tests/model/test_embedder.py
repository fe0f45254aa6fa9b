"""Distances between embedded vectors: the float32 block parts against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.embedder import squared_parts


def _pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    return a, (a + 0.01 * rng.standard_normal(n)).astype(np.float32)


def test_block_parts_per_row_match_float64_sums():
    a, b = _pair(4 * 1000)
    blocks = [slice(0, 300), slice(300, 301), slice(301, 1000)]
    parts = squared_parts(a, b, 4, blocks)
    d2 = ((a.astype(np.float64) - b) ** 2).reshape(4, 1000)
    expected = np.stack([d2[:, s].sum(1) for s in blocks], axis=1)
    assert parts.shape == (1, 4, 4)
    np.testing.assert_allclose(parts[0, :, :3], expected, rtol=1e-5)
    assert not parts[0, :, 3].any()  # the blocks tile each row: nothing left over
    assert parts.sum() == pytest.approx(d2.sum(), rel=1e-6)


def test_the_last_column_holds_what_the_blocks_leave_out():
    a, b = _pair(100, 1)
    parts = squared_parts(torch.from_numpy(a), torch.from_numpy(b), 1, [slice(0, 10), slice(50, 60)])
    d2 = (a.astype(np.float64) - b) ** 2
    assert parts.shape == (1, 1, 3)
    assert parts[0, 0, 2] == pytest.approx(d2[10:50].sum() + d2[60:].sum(), rel=1e-5)
    assert parts.sum() == pytest.approx(d2.sum(), rel=1e-6)


def test_each_pair_of_a_batch_gets_its_own_parts():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 2 * 50)).astype(np.float32)
    b = rng.standard_normal((3, 2 * 50)).astype(np.float32)
    blocks = [slice(0, 20), slice(20, 50)]
    batch = squared_parts(a, b, 2, blocks)
    assert batch.shape == (3, 2, 3)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], squared_parts(a[i], b[i], 2, blocks)[0])
    assert len({float(p.sum()) for p in batch}) == 3


def test_a_vector_against_itself_has_no_parts():
    a, _ = _pair(64)
    parts = squared_parts(a, a.copy(), 2, [slice(0, 32)])
    assert parts.shape == (1, 2, 2) and not parts.any()


def test_set_sums_streamed_in_batches_equal_the_whole_sets_and_leave_the_vectors_alone():
    from model.embedder import SetStats

    v = torch.randn(37, 50, dtype=torch.float64)
    before = v.clone()
    stats = SetStats.of([v[:20], v[20:].numpy()])
    assert torch.equal(v, before)  # float64 rows are copied before squaring
    assert stats.n == 37
    torch.testing.assert_close(stats.mean, v.mean(0))
    torch.testing.assert_close(stats.var, v.var(0, unbiased=False))
    with pytest.raises(ValueError):
        SetStats.of([])
