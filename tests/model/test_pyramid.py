"""Spatial-pyramid AFVs: exact cell decomposition, per-cell statistics, read-out loading and explanations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import fisher, pyramid
from model.cache import stats_cache_path
from model.data import uint8_to_model
from model.loading import load_embedder


@pytest.fixture(scope="module")
def extractor(tiny_run):
    return load_embedder(tiny_run, device="cpu", readout="pyramid-1-2-4")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grid", [1, 2, 4])
def test_cell_gradients_sum_exactly_to_the_whole_image_gradient(tiny_run, cifar_images, grid, channels_last):
    base = load_embedder(tiny_run, device="cpu")
    d = base.d.double()
    x = uint8_to_model(cifar_images[:4]).double()
    cells = pyramid.cell_grads(d, x, grid, channels_last)
    assert cells.shape == (4, grid * grid, base.dim)
    torch.testing.assert_close(cells.sum(1), fisher.per_sample_grads(d, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", ["_cell_w_unfold", "_cell_w_rows", "_cell_w_rows_taps", "cell_weight_grads"])
@pytest.mark.parametrize(("size", "padding"), [(3, 1), (3, 0), (5, 2), (1, 0), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_cell_kernel_gives_each_cells_own_conv_gradient(kernel, size, padding, channels_last):
    """Against torch's own weight gradient of the output-gradient masked to one cell (a non-square map)."""
    torch.manual_seed(0)
    m = torch.nn.Conv2d(4, 6, size, padding=padding).double()
    a = torch.randn(3, 4, 8, 12, dtype=torch.float64)
    ho, wo = 8 + 2 * padding - size + 1, 12 + 2 * padding - size + 1
    g = torch.randn(3, 6, ho, wo, dtype=torch.float64)
    if channels_last:
        a, g = a.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    grid = 2
    got = torch.full((3, grid * grid, m.weight.numel()), float("nan"), dtype=torch.float64)
    getattr(pyramid, kernel)(m, a, g, grid, out=got)
    for c in range(grid * grid):
        r, k = divmod(c, grid)
        mask = torch.zeros(ho, wo, dtype=torch.float64)
        mask[r * ho // grid : (r + 1) * ho // grid, k * wo // grid : (k + 1) * wo // grid] = 1
        for b in range(3):
            want = torch.nn.grad.conv2d_weight(a[b : b + 1], m.weight.shape, (g[b] * mask)[None], padding=padding)
            torch.testing.assert_close(got[b, c], want.flatten(), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(pyramid.cell_sums(g, grid)[b, c], (g[b] * mask).sum((1, 2)))


def test_each_pyramid_level_is_a_coarsening_of_the_finest(tiny_run, cifar_images):
    d = load_embedder(tiny_run, device="cpu").d.double()
    x = uint8_to_model(cifar_images[:3]).double()
    pg = pyramid.pyramid_grads(d, x, (1, 2, 4))
    whole, quads, cells = pg[:, :1], pg[:, 1:5], pg[:, 5:]
    torch.testing.assert_close(whole[:, 0], quads.sum(1), rtol=0, atol=1e-12)
    top_left = cells[:, [0, 1, 4, 5]].sum(1)  # rows 0-1, columns 0-1 of the 4×4 grid
    torch.testing.assert_close(quads[:, 0], top_left, rtol=0, atol=1e-12)


def test_cells_follow_image_position(tiny_run):
    """A change confined to the top-left quadrant moves only cells whose receptive fields reach it."""
    d = load_embedder(tiny_run, device="cpu").d.double()
    x = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    x[1, :, :4, :4] = 1.0  # a corner patch, far from the bottom-right cell
    g = pyramid.cell_grads(d, x, 4)
    diff = (g[0] - g[1]).abs().sum(1)
    assert diff[0] > 0
    assert diff[15] < diff[0] * 1e-3


def test_readout_names_parse_and_reject_bad_levels():
    assert pyramid.parse_readout("global") == pyramid.Readout((1,), False)
    assert pyramid.parse_readout("pyramid-1-2-4").levels == (1, 2, 4)
    assert pyramid.parse_readout("pyramid-2-4+blocks") == pyramid.Readout((2, 4), True)
    assert pyramid.Readout((1, 2)).name == "pyramid-1-2" and pyramid.Readout((1,), True).name == "global+blocks"
    for bad in ("pyramid-3", "pyramid-2-1", "pyramid", "grid-2", "pyramid-1-1", "global+cells"):
        with pytest.raises(ValueError, match="pyramid"):
            pyramid.parse_readout(bad)


def test_a_grid_finer_than_the_smallest_feature_map_is_refused(tiny_run):
    with pytest.raises(ValueError, match="finer than"):
        load_embedder(tiny_run, device="cpu", readout="pyramid-1-16")


def test_pyramid_vectors_have_one_unit_norm_fisher_vector_per_cell(tiny_run, cifar_images):
    ext = load_embedder(tiny_run, device="cpu", readout="pyramid-1-2", normalization="power")
    v = ext.embed(cifar_images[:3])
    assert v.shape == (3, 5 * ext.param_dim) and ext.dim == 5 * ext.param_dim
    norms = v.reshape(3, 5, -1).norm(dim=2)
    expected = pyramid.level_weights((1, 2)).expand(3, -1)
    torch.testing.assert_close(norms, expected.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3), rtol=1e-4, atol=1e-6)


def test_cell_statistics_are_cached_pinned_and_reused_without_writing_to_the_model_folder(tiny_run, extractor):
    assert not pyramid.stats_path(tiny_run, "pyramid-1-2-4").exists()
    path = stats_cache_path(extractor.model_hash, pyramid.stats_file("pyramid-1-2-4"))
    saved = torch.load(path, weights_only=True)
    assert saved["model_sha256"] == extractor.model_hash and saved["readout"] == "pyramid-1-2-4"
    assert saved["mean"].numel() == 21 * extractor.param_dim
    again = load_embedder(tiny_run, device="cpu", readout="pyramid-1-2-4")
    assert again.stats_hash == extractor.stats_hash
    assert again.stats_hash != load_embedder(tiny_run, device="cpu").stats_hash


def test_distance_explains_blocks_and_image_cells(extractor, cifar_images):
    report = extractor.distance(cifar_images[0], cifar_images[100])
    assert report.distance > 0
    assert sum(report.layers.values()) == pytest.approx(1.0)
    grids = report.regions
    assert [len(grids[k]) for k in ("1x1", "2x2", "4x4")] == [1, 2, 4]
    assert sum(v for g in grids.values() for row in g for v in row) == pytest.approx(1.0)
    v = extractor.embed(cifar_images[[0, 100]])
    assert report.distance == pytest.approx(float((v[0] - v[1]).norm()), rel=1e-4)
    assert extractor.distance(cifar_images[0], cifar_images[0]).distance == 0.0


def test_reports_from_a_batch_of_pair_parts_are_each_pairs_own_explanation(extractor, cifar_images):
    v = extractor.embed(cifar_images[[0, 1, 2, 3, 4, 5]]).numpy()
    parts = extractor.pair_parts(v[0::2], v[1::2])
    assert parts.shape == (3, extractor.r, len(extractor.blocks) + 1)
    for i in range(3):
        assert extractor.report(parts[i]) == extractor.explain(v[2 * i], v[2 * i + 1])
    assert len({extractor.report(p).distance for p in parts}) == 3


def test_fast_projection_refuses_a_spatial_readout(extractor):
    from model.sketch import ProjectionError, Projector

    with pytest.raises(ProjectionError, match="exact"):
        Projector(extractor, d=64, mode="fast")


def test_per_block_weighting_gives_every_block_of_every_cell_the_same_norm(tiny_run, cifar_images):
    ext = load_embedder(tiny_run, device="cpu", readout="pyramid-1-2+blocks", normalization="l2")
    v = ext.embed(cifar_images[:2]).reshape(2, 5, -1)
    blocks = list(ext.blocks.values())
    norms = torch.stack([v[:, :, s].norm(dim=2) for s in blocks], dim=2)  # B × cells × blocks
    expected = pyramid.level_weights((1, 2))[None, :, None] / len(blocks) ** 0.5
    torch.testing.assert_close(norms, expected.expand_as(norms).float(), rtol=1e-4, atol=1e-6)


def test_whole_image_per_block_readout_uses_the_plain_statistics(tiny_run, cifar_images):
    plain = load_embedder(tiny_run, device="cpu", normalization="l2")
    ext = load_embedder(tiny_run, device="cpu", readout="global+blocks", normalization="l2")
    assert ext.dim == plain.dim and ext.readout == "global+blocks"
    assert not torch.allclose(ext.embed(cifar_images[:2]), plain.embed(cifar_images[:2]))


def test_lowres_readout_names_parse_in_either_order():
    spec = pyramid.parse_readout("pyramid-2-4+lowres")
    assert spec == pyramid.Readout((2, 4), False, True) and spec.n_views == 2
    assert pyramid.parse_readout("global+blocks+lowres") == pyramid.parse_readout("global+lowres+blocks")
    assert pyramid.Readout((4,), True, True).name == "pyramid-4+lowres+blocks"
    assert pyramid.Readout((4,), True, True).stats_name == "pyramid-4+lowres"
    with pytest.raises(ValueError, match="lowres"):
        pyramid.parse_readout("pyramid-4+lowres+lowres")


def test_lowres_view_stacks_the_low_passed_image_as_more_cells(tiny_run, cifar_images):
    d = load_embedder(tiny_run, device="cpu").d.double()
    x = uint8_to_model(cifar_images[:2]).double()
    both = pyramid.view_grads(d, x, pyramid.parse_readout("pyramid-1-2+lowres"))
    assert both.shape[1] == 2 * 5
    views = [pyramid.pyramid_grads(d, v, (1, 2), channels_last=True) for v in (x, pyramid.lowpass(x))]  # as on CPU
    torch.testing.assert_close(both[:, :5], views[0], rtol=0, atol=0)
    torch.testing.assert_close(both[:, 5:], views[1], rtol=0, atol=0)
    flat = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    torch.testing.assert_close(pyramid.lowpass(flat), flat)  # a constant image has nothing to lose


def test_grey_readout_names_parse_in_any_order_and_count_their_views():
    spec = pyramid.parse_readout("pyramid-4+grey")
    assert spec == pyramid.Readout((4,), grey=True) and spec.n_views == 2 and spec.name == "pyramid-4+grey"
    both = pyramid.parse_readout("pyramid-2+blocks+grey+lowres")
    assert both.n_views == 3 and both.name == "pyramid-2+lowres+grey+blocks"
    assert both.stats_name == "pyramid-2+lowres+grey"
    with pytest.raises(ValueError, match="grey"):
        pyramid.parse_readout("pyramid-4+grey+grey")
    with pytest.raises(ValueError, match="grey"):
        pyramid.parse_readout("pyramid-4+gray")


def test_the_grey_view_is_pillows_luma_standardised_per_image(cifar_images):
    from PIL import Image

    rgb = cifar_images[:3]
    pillow = [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("L"), np.float64) for im in rgb]
    np.testing.assert_allclose(pyramid.luma(rgb.double())[:, 0].numpy(), np.stack(pillow), atol=0.51)  # rounding
    view = pyramid.greyscale(uint8_to_model(rgb).double())
    assert view.shape == rgb.shape and torch.equal(view[:, 0], view[:, 2]) and bool((view.abs() <= 1).all())
    assert bool((view.mean((1, 2, 3)).abs() < 0.05).all())
    std, clipped = view.std((1, 2, 3)), (view.abs() == 1).double().mean((1, 2, 3))
    assert bool((std <= pyramid.GREY_STD + 1e-9).all())  # clipping the tails only lowers it
    for k in range(len(rgb)):
        if clipped[k] < 0.005:
            assert float(std[k]) == pytest.approx(pyramid.GREY_STD, rel=0.02)


def test_greyscale_brightness_and_contrast_changes_leave_the_grey_view_unchanged(cifar_images):
    x = uint8_to_model(cifar_images[:4]).double()
    view = pyramid.greyscale(x)
    grey = pyramid.luma(x).expand(-1, 3, -1, -1)  # a greyscale copy: every channel the luma
    darker = (x + 1) * 0.7 - 1  # 30 % less light: pixels × 0.7
    flatter = 0.6 * x + 0.4 * x.mean((1, 2, 3), keepdim=True)  # contrast −40 %: blended with the mean
    for edited in (grey, darker, flatter):
        torch.testing.assert_close(pyramid.greyscale(edited), view, rtol=0, atol=5e-3)  # the std's 1e-3 floor
    assert not torch.allclose(pyramid.greyscale(x.flip(3)), view)  # a real view of the image, not a constant


def test_grey_view_stacks_the_greyscale_image_after_the_others(tiny_run, cifar_images):
    d = load_embedder(tiny_run, device="cpu").d.double()
    x = uint8_to_model(cifar_images[:2]).double()
    three = pyramid.view_grads(d, x, pyramid.parse_readout("pyramid-1-2+lowres+grey"))
    assert three.shape[1] == 3 * 5
    for k, view in enumerate((x, pyramid.lowpass(x), pyramid.greyscale(x))):
        want = pyramid.pyramid_grads(d, view, (1, 2), channels_last=True)  # as on CPU
        torch.testing.assert_close(three[:, 5 * k : 5 * (k + 1)], want, rtol=0, atol=0)


def test_in_the_grey_view_a_greyscale_copy_is_far_nearer_than_any_other_image(tiny_run, cifar_images):
    """The colour view alone may place another image nearer than an image's greyscale copy; the grey view
    places the copy at a small fraction of the distance to the nearest other image."""
    x = cifar_images[:8]
    grey = pyramid.luma(x.double()).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    ext = load_embedder(tiny_run, device="cpu", readout="pyramid-2+grey", normalization="power")
    v, g = ext.embed(x).reshape(8, 2, -1), ext.embed(grey).reshape(8, 2, -1)

    def copy_over_nearest_other(view: int) -> torch.Tensor:
        nearest = (torch.cdist(v[:, view], v[:, view]) + torch.eye(8) * 1e9).min(dim=1).values
        return (v[:, view] - g[:, view]).norm(dim=1) / nearest

    colour, grey_view = copy_over_nearest_other(0), copy_over_nearest_other(1)
    assert float(grey_view.max()) < 0.2 and float(colour.max()) > 0.5, (grey_view, colour)


def test_lowres_vectors_give_both_views_equal_weight_and_explain_per_cell(tiny_run, cifar_images):
    ext = load_embedder(tiny_run, device="cpu", readout="pyramid-1-2+lowres", normalization="power")
    v = ext.embed(cifar_images[:2])
    assert ext.dim == 10 * ext.param_dim
    views = v.reshape(2, 2, -1).norm(dim=2)
    torch.testing.assert_close(views, torch.full((2, 2), 0.5**0.5), rtol=1e-4, atol=1e-6)
    assert stats_cache_path(ext.model_hash, pyramid.stats_file("pyramid-1-2+lowres")).is_file()
    report = ext.distance(cifar_images[0], cifar_images[100])
    assert [len(report.regions[k]) for k in ("1x1", "2x2")] == [1, 2]
    assert sum(v for g in report.regions.values() for row in g for v in row) == pytest.approx(1.0)
