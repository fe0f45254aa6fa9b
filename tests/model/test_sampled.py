"""Coordinate-sampled AFVs: the kernel is exact at its coordinates, full coverage is the AFV itself,
the estimate is unbiased over seeds, and every read-out and normalisation goes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model import fisher, pyramid, sampled
from model.data import uint8_to_model
from model.extract import AFVExtractor
from model.pyramid import PyramidAFVExtractor, parse_readout
from model.sampled import LayerSample, SampledAFV, plan_samples, sampled_weight_cells, tap_masks
from model.sketch import pairwise_distances
from tests.tiny_model import on_device


def _with_norm(ex: AFVExtractor, normalization: str) -> AFVExtractor:
    return AFVExtractor(ex.d, ex.g, ex.stats, device=ex.device, normalization=normalization, batch_size=32)


def _pyramid(ex: AFVExtractor, readout: str) -> PyramidAFVExtractor:
    """A pyramid read-out with cheap per-cell statistics (a few generator samples)."""
    spec = parse_readout(readout)
    return PyramidAFVExtractor(ex, spec, pyramid.estimate_pyramid_stats(ex.d, ex.g, spec, 16, batch_size=16))


@pytest.mark.parametrize("kernel", ["sparse", "dense", "gather", "accumulate", "chosen"])
@pytest.mark.parametrize("grid", [1, 2, 4])
def test_sampled_kernels_equal_the_exact_cell_gradient_at_their_coordinates(extractor, image_batch, grid, kernel):
    d = extractor.d
    conv = next(m for m in d.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 3)
    captured, _ = pyramid.capture_with_map(d, uint8_to_model(image_batch[:3]))
    m, a, g = next(c for c in captured if c[0] is conv)
    exact = pyramid.cell_weight_grads(m, a, g, grid)  # B×cells×numel
    n, taps = m.weight.numel(), 9
    flat = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:50]
    coords = flat[torch.argsort((flat % taps) * n + flat)]
    masks = tap_masks(coords, tuple(m.weight.shape))
    plan = LayerSample("conv", tuple(m.weight.shape), 0, coords)
    got = {
        "sparse": lambda: sampled._sparse_select(m, a, g, masks, grid),
        "dense": lambda: sampled._dense_select(m, a, g, coords, grid),
        "gather": lambda: sampled._gather_select(m, a, g, masks, grid),
        "accumulate": lambda: sampled._accumulate_select(m, a, g, coords, grid),
        "chosen": lambda: sampled_weight_cells(m, a, g, plan, masks, grid),
    }[kernel]()
    torch.testing.assert_close(got, exact[:, :, coords], rtol=1e-4, atol=1e-5 * float(exact.abs().max()))


@pytest.mark.parametrize(
    "kernel",
    ["sparse", "dense", "gather", "gather one image at a time", "accumulate", "accumulate one image at a time"],
)
@pytest.mark.parametrize(("size", "padding"), [(3, 1), (3, 0), (5, 2), (1, 0), (3, 2)])
def test_sampled_kernels_are_exact_for_any_kernel_size_and_padding(size, padding, kernel, monkeypatch):
    if kernel.endswith("one image at a time"):
        monkeypatch.setattr(sampled, "GATHER_CHUNK_BYTES", 1)
        monkeypatch.setattr(sampled, "ACCUMULATE_CHUNK_BYTES", 1)
    torch.manual_seed(0)
    m = nn.Conv2d(4, 6, size, padding=padding)
    a = torch.randn(3, 4, 8, 8)
    out = 8 + 2 * padding - size + 1
    g = torch.randn(3, 6, out, out)
    grid = 2
    exact = pyramid.cell_weight_grads(m, a, g, grid)
    n, taps = m.weight.numel(), size * size
    flat = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 3]
    coords = flat[torch.argsort((flat % taps) * n + flat)]
    masks = tap_masks(coords, tuple(m.weight.shape))
    got = {
        "sparse": lambda: sampled._sparse_select(m, a, g, masks, grid),
        "dense": lambda: sampled._dense_select(m, a, g, coords, grid),
        "gather": lambda: sampled._gather_select(m, a, g, masks, grid),
        "accumulate": lambda: sampled._accumulate_select(m, a, g, coords, grid),
    }[kernel.split()[0]]()
    torch.testing.assert_close(got, exact[:, :, coords], rtol=1e-4, atol=1e-5 * float(exact.abs().max()))


@pytest.mark.parametrize("normalization", ["none", "l2", "power"])
@pytest.mark.parametrize("readout", ["global", "pyramid-1-2", "pyramid-2+lowres+blocks", "pyramid-2+grey"])
def test_with_every_coordinate_kept_it_is_the_exact_afv(extractor, image_batch, normalization, readout):
    ex = _with_norm(extractor, normalization)
    ex = ex if readout == "global" else _pyramid(ex, readout)
    full = SampledAFV(ex, samples=10**9, exact_below=10**9)
    assert full.sampled_fraction == 1.0
    x = image_batch[:6]
    ref = ex.embed(x)
    torch.testing.assert_close(full(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_squared_distances_are_unbiased_over_seeds(extractor, image_batch):
    """Over 40 seeded samples the mean estimate sits within 3 standard errors of the exact value."""
    x = image_batch[:8]
    ref = (pairwise_distances(extractor.embed(x)) ** 2).sum()
    assert SampledAFV(extractor, samples=600, exact_below=0).sampled_fraction < 0.3  # a real sample
    samplers = [SampledAFV(extractor, samples=600, seed=s, exact_below=0) for s in range(40)]
    est = np.array([(pairwise_distances(s(x)) ** 2).sum() for s in samplers])
    stderr = est.std(ddof=1) / np.sqrt(len(est))
    assert est.std() > 0.01 * ref  # the seeds do differ …
    assert abs(est.mean() - ref) < 3 * stderr  # … and their mean is the exact value


def test_sampled_distances_track_exact_ones_for_pyramid_power_afvs(extractor, image_batch):
    ex = _pyramid(_with_norm(extractor, "power"), "pyramid-1-2")
    x = image_batch[:24]
    ref, est = pairwise_distances(ex.embed(x)), pairwise_distances(SampledAFV(ex, samples=1500, exact_below=0)(x))
    assert np.corrcoef(ref, est)[0, 1] > 0.98
    assert np.abs(est / ref - 1).mean() < 0.05


@pytest.mark.parametrize("normalization", ["l2", "power"])
def test_each_cell_and_block_is_normalised_by_its_weighted_sample_norm(extractor, image_batch, normalization):
    ex = _pyramid(_with_norm(extractor, normalization), "pyramid-2+blocks")
    s = SampledAFV(ex, samples=600, exact_below=0)
    assert s.n_units > 1 and float(s.weights.max()) > 1  # blocks, and a real sample
    x = image_batch[:4]
    v = (pyramid.pool_levels(s.raw_cells(uint8_to_model(x)), s.levels) - s.mean) * s.inv
    v = v.sign() * v.abs().sqrt() if normalization == "power" else v
    want = torch.empty_like(v)
    for k in range(s.n_units):
        unit = s.unit_of == k
        norm = (v[:, :, unit] ** 2 * s.weights[unit]).sum(-1, keepdim=True).sqrt()
        want[:, :, unit] = v[:, :, unit] / norm
    want = want * s.weights.sqrt() * s.cell_weight[None, :, None]
    torch.testing.assert_close(s(x), want.flatten(1), rtol=1e-4, atol=1e-6)


def test_the_plan_is_seeded_and_spends_the_samples_where_maps_are_small(extractor):
    d, res = extractor.d, extractor.resolution
    a, b = plan_samples(d, res, 2000, 0, 0), plan_samples(d, res, 2000, 0, 0)
    assert all(torch.equal(p.coords, q.coords) for p, q in zip(a, b) if p.coords is not None)
    other = plan_samples(d, res, 2000, 1, 0)
    assert any(not torch.equal(p.coords, q.coords) for p, q in zip(a, other) if p.coords is not None)
    sampled = [p for p in a if not p.exact]
    assert abs(sum(len(p.coords) for p in sampled) - 2000) <= len(sampled)
    same_size = [p for p in sampled if p.numel == sampled[-1].numel]
    dense = {p.positions: len(p.coords) for p in same_size}
    assert dense[min(dense)] > dense[max(dense)]  # Neyman: n/√pos, more where the map is small
    assert all(p.exact for p in plan_samples(d, res, 2000, 0, exact_below=10**9))


def test_strided_convs_are_kept_exact_and_other_models_refused():
    seq = nn.Sequential(nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    strided, plain = plan_samples(seq, 16, 100, 0, 0)
    assert strided.exact and strided.numel * 0.25 > 100  # small enough a share to sample, but strided
    assert not plain.exact and len(plain.coords) == 100
    with pytest.raises(ValueError, match="AFV model"):
        SampledAFV(type("Enc", (), {"kind": "bigan"})())


def test_coordinates_are_distinct_and_cover_every_parameter(extractor):
    """Each parameter tensor contributes (wholly when exact), and no coordinate is counted twice."""
    s = SampledAFV(extractor, samples=800, exact_below=0)
    assert len(torch.unique(s.coords)) == len(s.coords)
    exact = {p.name + ".weight" for p in s.plans if p.exact}
    exact |= {n for n, _ in extractor.d.named_parameters() if "bias" in n}
    for slot in fisher.param_layout(extractor.d):
        inside = int(((s.coords >= slot.start) & (s.coords < slot.start + slot.numel)).sum())
        assert inside == slot.numel if slot.name in exact or "head" in slot.name else 0 < inside < slot.numel


@pytest.mark.gpu
@pytest.mark.parametrize("readout", ["global", "pyramid-2"])
def test_on_gpu_exact_and_sampled_afvs_match_the_cpu(extractor, image_batch, gpu, readout):
    ex = _with_norm(extractor, "power")
    ex = ex if readout == "global" else _pyramid(ex, readout)
    on_gpu = on_device(extractor, gpu)
    on_gpu = on_gpu if readout == "global" else PyramidAFVExtractor(on_gpu, ex.spec, ex.cell_stats.to("cpu"))
    x = image_batch[:6]
    for cpu_fn, gpu_fn in [
        (ex.embed, on_gpu.embed),
        (SampledAFV(ex, 800, exact_below=0), SampledAFV(on_gpu, 800, exact_below=0)),
    ]:
        ref = cpu_fn(x)
        torch.testing.assert_close(gpu_fn(x).cpu(), ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
