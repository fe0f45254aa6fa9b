"""Projection: exactness of the fast path's plumbing, distance fidelity and seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.extract import AFVExtractor
from model.sketch import ProjectionError, Projector, SparseSketch, kronecker_std, pairwise_distances


def test_fast_mode_without_sketching_is_the_exact_fisher_vector(extractor, image_batch):
    x = image_batch[:8]
    proj = Projector(extractor, d=64, mode="fast", exact_below=10**9)
    assert not any(p.sketched for p in proj.plans)
    z = proj.inner(x)
    fv = extractor.raw_fisher_vectors(x)
    torch.testing.assert_close(z, fv, rtol=1e-4, atol=1e-3 * float(fv.abs().max()))


def test_kronecker_fit_recovers_an_exact_kronecker_product():
    u, v, w = torch.rand(5) + 0.5, torch.rand(4) + 0.5, torch.rand(9) + 0.5
    sigma = u[:, None, None] * v[None, :, None] * w[None, None, :]
    a, b, c = kronecker_std(sigma)
    torch.testing.assert_close(a[:, None, None] * b[None, :, None] * c[None, None, :], sigma)


@pytest.mark.parametrize(
    "mode,kwargs,floor",
    [
        # JL at d=1024 of a 17k-dim vector: distance std ≈ 1/√d ≈ 3 %, so Pearson ≫ 0.98.
        ("exact", {}, 0.98),
        # Kronecker sketch with every conv layer factorised (r≈0.7 of each side). On the untrained tiny
        # model the Kronecker-factored Fisher alone gives Pearson ≈ 0.99 on CIFAR images (≈ 0.96 on
        # noise), so 0.95 leaves room for the sketch's own variance.
        ("fast", {"exact_below": 0, "inner_factor": 8}, 0.95),
        # A coordinate sample (about a quarter of the tiny model's weights), then the same JL sketch.
        ("sampled", {"exact_below": 0, "samples": 2000}, 0.95),
    ],
)
def test_sketch_distances_track_exact_afv_distances(extractor, image_batch, mode, kwargs, floor):
    x = image_batch[:40]
    ref = pairwise_distances(extractor.afv(x))
    est = pairwise_distances(torch.from_numpy(Projector(extractor, d=1024, mode=mode, **kwargs).embed(x)))
    assert np.corrcoef(ref, est)[0, 1] >= floor


@pytest.mark.parametrize("mode", ["exact", "fast", "sampled"])
def test_seeded_and_reproducible_through_to_dict(extractor, image_batch, mode):
    x = image_batch[:6]
    kw = {"fast": {"exact_below": 0, "inner_factor": 4}, "sampled": {"exact_below": 0, "samples": 500}}.get(mode, {})
    a = Projector(extractor, d=128, mode=mode, seed=3, **kw)
    b = Projector.from_dict(a.to_dict(), extractor)
    np.testing.assert_array_equal(a.embed(x), b.embed(x))
    other = Projector(extractor, d=128, mode=mode, seed=4, **kw).embed(x)
    assert not np.allclose(a.embed(x), other)
    assert a.embed(x).shape == (6, 128) and a.embed(x).dtype == np.float32


def test_fast_mode_refuses_power_normalisation(extractor):
    ex = AFVExtractor(extractor.d, extractor.g, extractor.stats, device=extractor.device, normalization="power")
    with pytest.raises(ProjectionError, match="power"):
        Projector(ex, mode="fast")
    Projector(ex, mode="exact", d=32)


def test_stored_projection_refuses_other_normalisation(extractor):
    spec = Projector(extractor, d=32, mode="exact").to_dict()
    ex = AFVExtractor(extractor.d, extractor.g, extractor.stats, device=extractor.device, normalization="l2")
    with pytest.raises(ProjectionError, match="normalisation"):
        Projector.from_dict(spec, ex)


def test_bad_input_is_rejected(extractor):
    with pytest.raises(ProjectionError):
        Projector(extractor, d=32, mode="exact").embed(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ProjectionError):
        Projector(extractor, mode="sloppy")


def test_a_stored_sampled_projection_refuses_another_sample_plan(extractor):
    spec = Projector(extractor, d=32, mode="sampled", exact_below=0, samples=500).to_dict()
    assert spec["samples"] == 500 and any(n != "exact" for _, n in spec["sampled"])
    with pytest.raises(ProjectionError, match="plan"):
        Projector.from_dict({**spec, "samples": 400}, extractor)


def test_sampled_mode_accepts_power_normalisation(extractor, image_batch):
    ex = AFVExtractor(extractor.d, extractor.g, extractor.stats, device=extractor.device, normalization="power")
    out = Projector(ex, mode="sampled", d=32, exact_below=0, samples=500).embed(image_batch[:4])
    assert out.shape == (4, 32) and np.isfinite(out).all()


@pytest.mark.parametrize("scaled", [False, True])
def test_sparse_sketch_adds_each_signed_coordinate_to_its_buckets(scaled):
    """Against a dense matrix built from the seeded buckets and signs (duplicate buckets add up)."""
    m, d, nnz = 300, 16, 4  # few buckets: some coordinates hash twice into one
    scale = torch.rand(m) + 0.5 if scaled else None
    sketch = SparseSketch(m, d, seed=3, nnz=nnz, scale=scale)
    rng = np.random.default_rng(np.random.SeedSequence([3, 0x5EED]))
    buckets = rng.integers(0, d, size=(nnz, m))
    signs = (rng.integers(0, 2, size=(nnz, m)) * 2 - 1) / np.sqrt(nnz)
    dense = np.zeros((m, d))
    for k in range(nnz):
        np.add.at(dense, (np.arange(m), buckets[k]), signs[k] * (scale.numpy() if scaled else 1.0))
    z = torch.randn(5, m)
    torch.testing.assert_close(sketch(z), z @ torch.from_numpy(dense).float(), rtol=1e-5, atol=1e-5)


def test_the_sampled_projection_sketches_the_sampled_vector(extractor, image_batch):
    """The sampled weights folded into the sketch's map give the sketch of the weighted sample."""
    proj = Projector(extractor, d=64, mode="sampled", samples=500, exact_below=0)
    x = image_batch[:4]
    plain = SparseSketch(proj.inner_dim, 64, proj.seed, proj.nnz)
    want = plain(proj.sampler(x))
    torch.testing.assert_close(torch.from_numpy(proj.embed(x)), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_a_map_too_large_for_csr_adds_the_same_buckets(monkeypatch):
    z = torch.randn(3, 500)
    sketch = SparseSketch(500, 32, seed=1, scale=torch.rand(500))
    via_csr = sketch(z)
    monkeypatch.setattr("model.sketch.CSR_MAX_NNZ", 10)
    torch.testing.assert_close(sketch(z), via_csr, rtol=1e-5, atol=1e-5)


def test_replicas_of_a_sketch_build_its_csr_map_once_and_share_it(monkeypatch):
    """The CPU model threads' replicas (`replicate`) use the map the first of them built, with the same result."""
    from model.parallel import replicate

    sketch, z = SparseSketch(500, 32, seed=1), torch.randn(3, 500)
    builds = []
    build = SparseSketch._build_csr
    monkeypatch.setattr(SparseSketch, "_build_csr", lambda self: builds.append(1) or build(self))
    copies = [replicate(sketch) for _ in range(3)]
    results = [c(z) for c in copies] + [sketch(z)]
    assert len(builds) == 1
    assert copies[0]._csr() is copies[2]._csr() is sketch._csr()
    for r in results[1:]:
        torch.testing.assert_close(r, results[0])


@pytest.mark.gpu
def test_on_gpu_the_sparse_sketch_adds_the_buckets_the_cpus_sparse_product_does(gpu):
    """Off the CPU the map is applied in index_add rounds, on it as one CSR product: the same sketch."""
    m, scale = 20_000, torch.rand(20_000) + 0.5
    z = torch.randn(6, m)
    on_cpu = SparseSketch(m, 256, seed=2, scale=scale)(z)
    on_gpu = SparseSketch(m, 256, seed=2, scale=scale, device=gpu)(z.to(gpu))
    assert on_gpu.device.type == gpu.type
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-4 * float(on_cpu.abs().max()))
