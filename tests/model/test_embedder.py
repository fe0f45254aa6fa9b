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
    parts, total = squared_parts(a, b, 4, blocks)
    d2 = ((a.astype(np.float64) - b) ** 2).reshape(4, 1000)
    expected = np.stack([d2[:, s].sum(1) for s in blocks], axis=1)
    np.testing.assert_allclose(parts, expected, rtol=1e-5)
    assert total == pytest.approx(d2.sum(), rel=1e-6)


def test_total_covers_the_whole_vector_when_blocks_leave_gaps():
    a, b = _pair(100, 1)
    parts, total = squared_parts(torch.from_numpy(a), torch.from_numpy(b), 1, [slice(0, 10), slice(50, 60)])
    assert parts.shape == (1, 2)
    assert total == pytest.approx(((a.astype(np.float64) - b) ** 2).sum(), rel=1e-6)
    assert total > parts.sum()


def test_a_vector_against_itself_has_no_parts():
    a, _ = _pair(64)
    parts, total = squared_parts(a, a.copy(), 2, [slice(0, 32)])
    assert total == 0.0 and not parts.any()
