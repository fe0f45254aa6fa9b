"""ModelIndex: an index opened with its model — pins checked, projection chosen and rebuilt, options refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index import IndexMismatchError, InvalidInputError
from model import pyramid
from model.data import decode_image
from model.extract import AFVExtractor
from model.fisher import FisherStats
from service.model_index import SAMPLED_MIN_DIM, BuildOptions, ModelIndex, auto_mode
from tests.tiny_model import on_device


def _batch(extractor, images) -> np.ndarray:
    return np.stack([extractor.preprocess(decode_image(b)) for _, b in images])


@pytest.fixture
def built(tmp_path, extractor, images):
    mi = ModelIndex.create(tmp_path / "idx", extractor, BuildOptions(dim=128, mode="fast"))
    x = _batch(extractor, images[:10])
    records = [{"name": n, "sha256": f"{i:064x}", "metadata": {}} for i, (n, _) in enumerate(images[:10])]
    ids = [r.id for r in mi.index.add_embedded(mi.sketch(x), records)]
    mi.close()
    return x, ids


def test_reopened_index_rebuilds_the_same_projection(tmp_path, extractor, built):
    x, ids = built
    with ModelIndex.open(tmp_path / "idx", extractor) as mi:
        assert mi.projector.mode == "fast" and mi.index.dim == 128
        hits = mi.index.search(mi.sketch(x[:3]), k=1)
        assert [h[0].id for h in hits] == ids[:3]
        assert mi.index.pins["model_name"] == extractor.name


def test_other_model_or_statistics_are_refused(tmp_path, extractor, built):
    other_weights = AFVExtractor(
        extractor.d, extractor.g, extractor.stats, device=extractor.device, model_hash="f" * 64
    )
    with pytest.raises(IndexMismatchError, match="model weights"):
        ModelIndex.open(tmp_path / "idx", other_weights)
    stats = FisherStats(extractor.stats.mean, extractor.stats.var * 2, extractor.stats.n_samples)
    other_stats = AFVExtractor(
        extractor.d, extractor.g, stats, device=extractor.device, model_hash=extractor.model_hash
    )
    with pytest.raises(IndexMismatchError, match="Fisher statistics"):
        ModelIndex.open(tmp_path / "idx", other_stats)
    with pytest.raises(IndexMismatchError, match="model weights"):
        ModelIndex.repair(tmp_path / "idx", other_weights)
    with ModelIndex.open(tmp_path / "idx", extractor) as mi:  # a refused open released the lock
        assert mi.index.count == 10


def test_existing_index_refuses_options_it_would_ignore(tmp_path, extractor, built):
    with pytest.raises(InvalidInputError, match="dim 128"):
        ModelIndex.open_or_create(tmp_path / "idx", extractor, BuildOptions(dim=512))
    with pytest.raises(InvalidInputError, match="kind"):
        ModelIndex.open_or_create(tmp_path / "idx", extractor, BuildOptions(kind="ivfpq"))
    same = BuildOptions(dim=128, mode="fast", kind="auto")
    with ModelIndex.open_or_create(tmp_path / "idx", extractor, same) as mi:
        assert mi.index.count == 10


def test_auto_mode_is_exact_for_small_afvs_and_small_embeddings_are_kept_whole(tmp_path):
    torch.manual_seed(0)
    ext = AFVExtractor.untrained("tiny", torch.device("cpu"), normalization="power")
    with ModelIndex.create(tmp_path / "a", ext, BuildOptions(dim=64)) as mi:
        assert mi.index.stats()["mode"] == "exact" and mi.index.dim == 64
    with ModelIndex.create(tmp_path / "b", ext, BuildOptions(dim=ext.dim + 1)) as mi:
        assert mi.projector.mode == "identity" and mi.index.dim == ext.dim


def test_bad_projection_options_are_invalid_input(tmp_path, extractor):
    with pytest.raises(InvalidInputError, match="mode"):
        ModelIndex.create(tmp_path / "idx", extractor, BuildOptions(mode="sideways"))
    assert not (tmp_path / "idx").exists()


def test_auto_mode_samples_coordinates_of_large_afvs(tmp_path, extractor):
    """A pyramid read-out's AFV (cells × parameters) passes SAMPLED_MIN_DIM: auto indexes a coordinate sample."""
    spec = pyramid.parse_readout("pyramid-1-2-4")
    stats = pyramid.estimate_pyramid_stats(extractor.d, extractor.g, spec, 8, batch_size=8)
    big = pyramid.PyramidAFVExtractor(extractor, spec, stats)
    assert extractor.dim < SAMPLED_MIN_DIM <= big.dim
    assert auto_mode(extractor) == "exact"
    with ModelIndex.create(tmp_path / "idx", big, BuildOptions(dim=64)) as mi:
        assert mi.projector.mode == "sampled" and mi.index.stats()["mode"] == "sampled"


@pytest.mark.parametrize("mode", ["fast", "sampled"])
def test_with_two_torch_threads_a_sketch_is_split_and_equals_the_one_thread_sketch(tmp_path, extractor, images, mode):
    mi = ModelIndex.create(tmp_path / "idx", extractor, BuildOptions(dim=128, mode=mode))
    x = _batch(extractor, images[:7])
    one = mi.sketch(x)  # the suite runs on one torch thread: not split
    torch.set_num_threads(2)  # the autouse fixture puts it back
    split = mi.sketch(x)
    assert mi._split._parts._count == 2  # a second replica was made, so the batch was split
    np.testing.assert_allclose(split, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())
    mi.close()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_on_gpu_an_index_sketches_as_on_the_cpu(tmp_path, extractor, images, gpu, mode):
    """Off the CPU a batch runs whole and the sketch's map is applied in index_add rounds: the same sketches."""
    x = _batch(extractor, images[:7])
    with ModelIndex.create(tmp_path / "cpu", extractor, BuildOptions(dim=128, mode=mode)) as mi:
        on_cpu = mi.sketch(x)
    moved = on_device(extractor, gpu, extractor.normalization)
    with ModelIndex.create(tmp_path / "gpu", moved, BuildOptions(dim=128, mode=mode)) as mi:
        on_gpu = mi.sketch(x)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3 * np.abs(on_cpu).max())


def test_a_new_index_pins_the_reduced_jpeg_decode_and_an_older_one_keeps_the_full_decode(tmp_path, extractor):
    from index import AFVIndex
    from model.data import DRAFT_DECODE

    with ModelIndex.create(tmp_path / "new", extractor, BuildOptions(dim=64)) as mi:
        assert mi.index.pins["decode"] == DRAFT_DECODE and mi.decode_fit == extractor.resolution
        older = {k: v for k, v in mi.index.pins.items() if k != "decode"}  # as indexes were pinned before
    AFVIndex.create(tmp_path / "old", dim=64, pins=older).close()
    with ModelIndex.open(tmp_path / "old", extractor) as mi:
        assert mi.index.pins["decode"] is None and mi.decode_fit is None
