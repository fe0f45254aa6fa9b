"""mixed and bf16 arithmetic of the gradient pass: AFVs, pyramid AFVs and sampled sketches stay close to fp32
(and do change, so the precision is really in effect), in split threads too; mixed keeps near copies' distances;
bad names and non-AFV models are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import pyramid
from model.data import uint8_to_model
from model.embedder import Embedder, named_layout
from model.extract import AFVExtractor
from model.loading import load_embedder
from model.parallel import SplitProjector
from model.precision import check_precision, computing_in
from model.pyramid import PyramidAFVExtractor, parse_readout
from model.sampled import SampledAFV
from model.sketch import Projector, pairwise_distances
from tests.tiny_model import on_device


def _power(ex: AFVExtractor) -> AFVExtractor:
    return AFVExtractor(ex.d, ex.g, ex.stats, device=ex.device, normalization="power", batch_size=32)


def _pyramid(ex: AFVExtractor) -> PyramidAFVExtractor:
    spec = parse_readout("pyramid-1-2")
    return PyramidAFVExtractor(ex, spec, pyramid.estimate_pyramid_stats(ex.d, ex.g, spec, 16, batch_size=16))


def _in(embedder, precision: str, fn):
    before = embedder.precision
    embedder.set_precision(precision)
    try:
        return fn()
    finally:
        embedder.set_precision(before)


def _distance_error(a: torch.Tensor, b: torch.Tensor) -> float:
    da, db = pairwise_distances(a), pairwise_distances(b)
    return float(np.abs(db / da - 1).mean())


@pytest.mark.parametrize("precision", ["mixed", "bf16"])
@pytest.mark.parametrize("kind", ["global", "pyramid", "sampled"])
def test_vectors_differ_from_fp32_yet_keep_their_distances(extractor, image_batch, kind, precision):
    ex = _pyramid(extractor) if kind == "pyramid" else _power(extractor)
    embed = SampledAFV(ex, samples=2000) if kind == "sampled" else ex.embed
    x = image_batch[:8]
    v32, v16 = _in(ex, "fp32", lambda: embed(x)), _in(ex, precision, lambda: embed(x))
    assert v16.dtype == torch.float32 and v16.shape == v32.shape
    assert not torch.equal(v16, v32)  # bf16 was in effect
    assert _distance_error(v32, v16) < 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["mixed", "bf16"])
@pytest.mark.parametrize("kind", ["global", "pyramid", "sampled"])
def test_on_gpu_bfloat16_vectors_keep_the_distances_of_the_cpus_fp32_ones(extractor, image_batch, gpu, kind, precision):
    """torch.autocast on CUDA, not the CPU's bfloat16 kernels: the same tolerance as on the CPU."""
    ex, on_gpu = _power(extractor), on_device(extractor, gpu)
    if kind == "pyramid":
        ex = _pyramid(ex)
        on_gpu = PyramidAFVExtractor(on_gpu, ex.spec, ex.cell_stats.to("cpu"))
    x = image_batch[:8]
    if kind == "sampled":
        v32, v16 = SampledAFV(ex, samples=2000)(x), _in(on_gpu, precision, lambda: SampledAFV(on_gpu, samples=2000)(x))
    else:
        v32, v16 = ex.embed(x), _in(on_gpu, precision, lambda: on_gpu.embed(x))
    assert v16.dtype == torch.float32 and v16.shape == v32.shape
    assert _distance_error(v32, v16.cpu()) < 0.02


@pytest.mark.parametrize("precision", ["mixed", "bf16"])
def test_split_threads_compute_in_the_embedders_precision(extractor, image_batch, precision):
    ex = _power(extractor)
    proj = Projector(ex, d=128, mode="sampled", samples=2000)
    x = image_batch[:8]
    fp32 = proj.embed(x)
    ex.set_precision(precision)
    whole, split = proj.embed(x), SplitProjector(proj, part=2)
    torch.set_num_threads(2)  # the split uses the calling thread's torch threads: 2 parts on 2 threads
    try:
        parts = split.embed(x)
    finally:
        torch.set_num_threads(1)
    assert not np.array_equal(parts, fp32)  # the precision is per thread: the parts' threads entered it too
    np.testing.assert_allclose(parts, whole, rtol=0, atol=2e-2 * float(np.abs(whole).max()))


def test_mixed_keeps_the_distance_to_a_near_copy(extractor, image_batch):
    ex = _power(extractor)
    x = image_batch[:8]
    noise = torch.randint(-2, 3, x.shape, generator=torch.Generator().manual_seed(0))
    near = (x.int() + noise).clamp(0, 255).to(torch.uint8)  # every pixel off by at most 2 levels
    d32 = _in(ex, "fp32", lambda: (ex.embed(x) - ex.embed(near)).norm(dim=1))
    dmix = _in(ex, "mixed", lambda: (ex.embed(x) - ex.embed(near)).norm(dim=1))
    assert not torch.equal(d32, dmix)
    assert float((dmix / d32 - 1).abs().max()) < 0.02


def test_the_per_sample_shift_kernel_in_bf16_is_the_fp32_gradient_rounded(extractor, image_batch):
    from torch import nn

    from model import fisher

    conv = next(m for m in extractor.d.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 3)
    captured = fisher.capture(extractor.d, uint8_to_model(image_batch[:4]))
    m, a, g = next(c for c in captured if c[0] is conv)
    ref = fisher._conv_w_shift(m, a, g)
    got = fisher._conv_w_shift_mm(m, a.bfloat16(), g.bfloat16()).float()
    assert float((got - ref).norm() / ref.norm()) < 0.02


def test_mixed_capture_keeps_the_fp32_forward_and_rounds_only_the_gradients(extractor, image_batch):
    from torch import nn

    from model import fisher

    x = uint8_to_model(image_batch[:4])
    ref = fisher.capture(extractor.d, x)
    with computing_in("mixed", torch.device("cpu")):
        got = fisher.capture(extractor.d, x)
    convs = [m for m in extractor.d.modules() if isinstance(m, nn.Conv2d)]
    assert all("forward" not in vars(m) for m in convs)  # the convs' own forward is back
    for (m, a32, g32), (_, a16, g16) in zip(ref, got, strict=True):
        assert a16.dtype == g16.dtype == torch.bfloat16
        assert torch.equal(a16, a32.to(torch.bfloat16))  # the forward ran in float32: its inputs, rounded once
        assert float((g16.float() - g32).norm() / g32.norm()) < 0.05, m  # bf16 input gradients on the way
    # the backward ran in bfloat16: deeper output-gradients are not the float32 ones rounded once
    assert any(not torch.equal(g16, g32.to(torch.bfloat16)) for (_, _, g32), (_, _, g16) in zip(ref, got))


def test_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="fp32, mixed, bf16"):
        check_precision("bf32")
    with pytest.raises(ValueError, match="bf32"):
        computing_in("bf32", torch.device("cpu"))


def test_a_bad_precision_fails_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        load_embedder(tmp_path / "no-such-run", precision="bf32")


def test_embedders_without_bf16_support_refuse_it(extractor):
    emb = Embedder(
        extractor.preset,
        device=torch.device("cpu"),
        layout=named_layout([("z", 4)]),
        normalization="none",
        batch_size=4,
        name="plain",
        model_hash="0",
        stats_hash="0",
    )
    emb.set_precision("fp32")
    with pytest.raises(ValueError, match="fp32 only"):
        emb.set_precision("bf16")
    assert emb.precision == "fp32"
