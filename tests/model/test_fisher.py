"""Per-sample gradients, Fisher statistics and normalisations."""

from __future__ import annotations

import time

import pytest
import torch

from model import fisher
from model.nets import Discriminator, Generator, fold_spectral_norm
from model.presets import PRESETS, Preset

TINY64 = Preset("tiny64", 64, ndf=8, ngf=8, nz=16, batch_size=4, steps=1, fisher_samples=64)


def _warm_sn(d: Discriminator) -> Discriminator:
    """Run a few training-mode forwards so the spectral-norm vectors are not at their init."""
    for _ in range(3):
        d(torch.randn(2, 3, d.preset.resolution, d.preset.resolution))
    return d


@pytest.mark.parametrize("preset", [PRESETS["tiny"], PRESETS["cpu"], TINY64], ids=lambda p: p.name)
def test_per_sample_grads_equal_the_per_example_loop(preset):
    # float64, so that the backend's batch-size-dependent conv algorithms don't blur the comparison
    torch.manual_seed(0)
    d = fold_spectral_norm(_warm_sn(Discriminator(preset))).double()
    x = torch.rand(5, 3, preset.resolution, preset.resolution, dtype=torch.float64) * 2 - 1
    fast, loop = fisher.per_sample_grads(d, x), fisher.per_sample_grads_loop(d, x)
    assert fast.shape == (5, sum(p.numel() for p in d.parameters()))
    torch.testing.assert_close(fast, loop, rtol=1e-9, atol=1e-12)


def test_per_sample_grads_match_the_loop_in_float32_within_backend_precision():
    torch.manual_seed(0)
    d = fold_spectral_norm(_warm_sn(Discriminator(PRESETS["cpu"])))
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    fast, loop = fisher.per_sample_grads(d, x), fisher.per_sample_grads_loop(d, x)
    rel = (fast - loop).norm(dim=1) / loop.norm(dim=1)
    assert rel.max().item() < 1e-2


@pytest.mark.parametrize("channels_last", [False, True])
def test_per_sample_grads_sum_to_the_batched_gradient(channels_last):
    torch.manual_seed(1)
    d = fold_spectral_norm(Discriminator(PRESETS["tiny"]))
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    summed = fisher.summed_grad(d, x, channels_last)
    torch.testing.assert_close(fisher.per_sample_grads(d, x).sum(0), summed, rtol=1e-4, atol=1e-5)


def test_folded_discriminator_computes_what_the_spectral_norm_one_does():
    torch.manual_seed(2)
    d = _warm_sn(Discriminator(PRESETS["tiny"]))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(fold_spectral_norm(d)(x), d.eval()(x))
    assert not any("parametrizations" in n for n, _ in fold_spectral_norm(d).named_parameters())


def test_fisher_score_has_zero_mean_and_unit_variance_over_fresh_generator_samples():
    torch.manual_seed(3)
    preset = PRESETS["tiny"]
    d, g = fold_spectral_norm(Discriminator(preset)), Generator(preset).eval()
    stats = fisher.estimate_stats(d, g, 1024, seed=0)
    with torch.no_grad():
        fresh = g(torch.randn(256, preset.nz, generator=torch.Generator().manual_seed(99)))
    v = fisher.fisher_vectors(fisher.per_sample_grads(d, fresh), stats)
    mean_rms = v.mean(0).pow(2).mean().sqrt().item()
    assert mean_rms < 0.25, f"AFV mean over generator samples is not ≈ 0 (rms {mean_rms:.3f})"
    assert 0.5 < v.var(0).median().item() < 2.0


def test_fisher_vectors_use_the_given_statistics():
    g = torch.tensor([[1.0, 2.0, 3.0]])
    stats = fisher.FisherStats(
        mean=torch.tensor([1.0, 0.0, 1.0]), var=torch.tensor([4.0, 1.0, 0.25]), n_samples=10, eps_rel=0.0
    )
    torch.testing.assert_close(fisher.fisher_vectors(g, stats), torch.tensor([[0.0, 2.0, 4.0]]))


def test_moment_accumulator_matches_numpy_moments():
    x = torch.randn(100, 7, dtype=torch.float64)
    acc = fisher.MomentAccumulator(7)
    for chunk in x.split(13):
        acc.update(chunk)
    stats = acc.finish()
    torch.testing.assert_close(stats.mean.double(), x.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.var.double(), x.var(0, unbiased=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["l2", "power"])
def test_normalisations_give_unit_vectors(method):
    v = torch.randn(4, 50) * 10
    out = fisher.normalize(v, method)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    assert torch.equal(out.sign(), v.sign())


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="unknown normalization"):
        fisher.normalize(torch.ones(1, 2), "zca")


def test_block_slices_cover_every_parameter_once():
    d = fold_spectral_norm(Discriminator(PRESETS["tiny"]))
    layout = fisher.param_layout(d)
    blocks = fisher.block_slices(layout)
    covered = sorted((s.start, s.stop) for s in blocks.values())
    assert covered[0][0] == 0 and covered[-1][1] == sum(p.numel() for p in d.parameters())
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    assert list(blocks) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"]


def _autograd_conv_weight_grads(m: torch.nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Reference: per image, autograd of <conv(a_b), g_b> with respect to the weight."""
    rows = []
    for i in range(a.shape[0]):
        (w,) = torch.autograd.grad((m(a[i : i + 1]) * g[i : i + 1]).sum(), [m.weight])
        rows.append(w)
    return torch.stack(rows)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=5, out_channels=7, kernel_size=3, padding=1),
        dict(in_channels=3, out_channels=4, kernel_size=1),
        dict(in_channels=4, out_channels=6, kernel_size=(3, 5), padding=(0, 2)),
        dict(in_channels=4, out_channels=3, kernel_size=3, padding=1, stride=2),
    ],
    ids=["3x3pad1", "1x1", "3x5", "stride2"],
)
def test_every_conv_weight_gradient_method_equals_autograd_per_image(conv, channels_last):
    torch.manual_seed(4)
    m = torch.nn.Conv2d(**conv).double()
    a = torch.randn(3, conv["in_channels"], 9, 11, dtype=torch.float64)
    g = torch.randn_like(m(a))
    if channels_last:
        a, g = (t.contiguous(memory_format=torch.channels_last) for t in (a, g))
    ref = _autograd_conv_weight_grads(m, a, g)
    shifts = (fisher._conv_w_shift, fisher._conv_w_shift_mm)
    methods = [f for f in fisher._CONV_METHODS if f not in shifts or fisher.shift_applies(m)]
    assert (fisher._conv_w_shift_mm in methods) == (conv.get("stride", 1) == 1)
    for fn in methods:
        got = fn(m, a, g).reshape(ref.shape)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12, msg=fn.__name__)
    torch.testing.assert_close(fisher._conv_grads(m, a, g)["weight"], ref, rtol=1e-10, atol=1e-12)


def test_chunked_channels_last_per_sample_grads_equal_the_loop_in_float32():
    torch.manual_seed(5)
    d = fold_spectral_norm(_warm_sn(Discriminator(TINY64)))
    x = torch.rand(7, 3, 64, 64) * 2 - 1
    loop = fisher.per_sample_grads_loop(d, x)
    for chunk in (1, 3, 7):
        torch.testing.assert_close(fisher.per_sample_grads(d, x, chunk=chunk), loop, rtol=1e-4, atol=1e-6)


def test_conv_method_choice_is_shared_by_batch_sizes_of_one_bucket():
    from torch import nn

    from model import fisher

    conv = nn.Conv2d(3, 4, 3, padding=1)
    fisher._conv_choice.clear()
    for b in (5, 6, 7, 8):  # one bucket (≤ 8): timed once, not once per micro-batch size
        a, g = torch.randn(b, 3, 6, 6), torch.randn(b, 4, 6, 6)
        fisher._fastest_conv_method(conv, a, g)
    assert len(fisher._conv_choice) == 1
    fisher._fastest_conv_method(conv, torch.randn(9, 3, 6, 6), torch.randn(9, 4, 6, 6))
    assert len(fisher._conv_choice) == 2


def _sleeper(calls: list[float]):
    def run(seconds: float) -> None:
        calls.append(seconds)
        time.sleep(seconds)

    return run


def test_kernels_far_slower_on_their_first_call_run_once_and_a_lone_survivor_wins_untimed():
    calls: list[float] = []
    assert fisher.fastest([0.06, 0.004, 0.08], _sleeper(calls), torch.device("cpu")) == 0.004
    assert sorted(calls) == [0.004, 0.06, 0.08]


def test_kernels_close_on_their_first_call_are_timed_again_and_the_faster_wins():
    calls: list[float] = []
    assert fisher.fastest([0.03, 0.02, 0.3], _sleeper(calls), torch.device("cpu")) == 0.02
    assert calls.count(0.03) == calls.count(0.02) == 3 and calls.count(0.3) == 1


@pytest.mark.parametrize("method", fisher.NORMALIZATIONS)
def test_in_place_normalisation_equals_the_pure_one_on_rows_and_views(method):
    v = torch.randn(3, 4, 50)
    v[0, 0] = 0.0  # a zero row stays zero
    before = v.clone()
    want = fisher.normalize(v, method)
    assert torch.equal(v, before)  # the pure one leaves its input alone
    assert torch.equal(fisher.normalize_(v.clone(), method), want)
    part = v.clone()[:, :, 10:30]  # a block of a wider tensor, as per-block read-outs pass
    assert torch.allclose(fisher.normalize_(part, method), fisher.normalize(v[:, :, 10:30], method), atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signed_square_root_keeps_the_sign_and_takes_zero_and_the_tiniest_values_to_zero(dtype):
    tiny = torch.finfo(dtype).tiny
    v = torch.cat([torch.randn(1000, dtype=dtype) * 10.0 ** torch.randint(-6, 6, (1000,)), torch.tensor([0.0, -0.0])])
    v = torch.cat([v, torch.tensor([tiny, -tiny, tiny / 4, -tiny / 4], dtype=dtype)])
    got = fisher.signed_sqrt(v, v.abs(), out=torch.empty_like(v))
    want = v.sign() * v.abs().sqrt()
    torch.testing.assert_close(got[:-2], want[:-2], rtol=2 * torch.finfo(dtype).eps, atol=0.0)
    assert torch.equal(got[-2:].sign(), v[-2:].sign()) and float(got[-2:].abs().max()) < 1e-19  # subnormals


def test_in_place_normalisation_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="unknown normalization"):
        fisher.normalize_(torch.ones(2, 3), "softmax")


@pytest.mark.parametrize("method", ["none", "l2", "power"])
@pytest.mark.parametrize("cells", [1, 4])
@pytest.mark.parametrize("block_rows", [1, 3, 64])
@pytest.mark.parametrize("weighted", [False, True])
def test_fisher_normalize_in_blocks_equals_the_whole_tensor_steps(method, cells, block_rows, weighted, monkeypatch):
    """Blocks of any size, across samples and cells, give (v − mean)·inv normalised per row, times the cell scale."""
    torch.manual_seed(0)
    n, p = 5, 37
    monkeypatch.setattr(fisher, "_BLOCK_BYTES", block_rows * p * 4)
    v, mean, inv = torch.randn(n, cells, p), torch.randn(cells, p), torch.rand(cells, p) + 0.5
    scale, weights = torch.rand(cells) + 0.5, (torch.rand(p) * 3 if weighted else None)
    x = (v - mean) * inv
    x = x.sign() * x.abs().sqrt() if method == "power" else x
    w = torch.ones(p) if weights is None else weights
    want = x if method == "none" else x / (x**2 * w).sum(-1, keepdim=True).sqrt()
    got = fisher.fisher_normalize_(v.clone(), mean, inv, method, scale, weights)
    torch.testing.assert_close(got, want * scale[:, None], rtol=1e-5, atol=1e-6)
