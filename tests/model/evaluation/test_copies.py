"""Copy detection: recall with ties, exact distances, and recall of real edited copies on the fixture."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation import copies
from model.evaluation.edits import EDITS, Op
from model.evaluation.images import pixel_size, read_images, sample
from model.evaluation.metrics import get_metric


@pytest.fixture(scope="module")
def images60(cifar_dir):
    return read_images(cifar_dir, limit=60, seed=0)


def test_recall_counts_nearer_images_and_splits_ties():
    d = np.array(
        [
            [0.0, 1.0, 2.0, 3.0],  # original (0) nearest
            [0.6, 0.1, 0.5, 0.9],  # original (2) second: recall@1 0, @2 1
            [1.0, 1.0, 1.0, 0.0],
        ]
    )  # original (1) tied with 2 others behind 1 nearer
    r = copies.recall_at(d, np.array([0, 2, 1]), ks=(1, 2, 3))
    assert r[1].tolist() == [1.0, 0.0, 0.0]
    assert r[2].tolist() == pytest.approx([1.0, 1.0, 1 / 3])
    assert r[3].tolist() == pytest.approx([1.0, 1.0, 2 / 3])


def test_sq_distances_are_exact_in_chunks():
    rng = np.random.default_rng(0)
    q, db = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(23, 16)).astype(np.float32)
    ref = ((q[:, None] - db[None]) ** 2).sum(-1)
    assert np.allclose(copies.sq_distances(q, db, chunk=4), ref, rtol=1e-4, atol=1e-4)


def test_read_images_limits_with_a_seed_and_picks_the_pixel_size(cifar_dir, images60):
    assert len(images60) == 60 and images60.names == read_images(cifar_dir, limit=60, seed=0).names
    assert images60.names != read_images(cifar_dir, limit=60, seed=1).names
    assert pixel_size(images60.sizes) == 32 and pixel_size([(32, 32), (64, 48)]) == 64
    assert pixel_size([(128, 128)]) == 64 and pixel_size([(32, 32)], requested=24) == 24


def test_an_unedited_query_finds_itself(images60):
    idx = sample(len(images60), 10, 0)
    for name in ("l2", "phash", "ssim"):
        row = copies.run_copies(get_metric(name), images60, [Op("blur", 0, "identity")], idx, pixel=32)
        assert row["edits"]["identity"]["recall@1"] == 1.0, name


def test_l2_finds_jpeg_copies_and_ssim_is_capped(images60):
    idx = sample(len(images60), 30, 0)
    edits = [EDITS["jpeg-q40"], EDITS["hflip"]]
    row = copies.run_copies(get_metric("l2"), images60, edits, idx, pixel=32)
    assert row["edits"]["jpeg-q40"]["recall@1"] > 0.9 and row["edits"]["jpeg-q40"]["n"] == 30
    assert row["dim"] == 3072 and row["edits"]["hflip"]["recall@10"] >= row["edits"]["hflip"]["recall@1"]
    assert row["mean"]["recall@1"] == pytest.approx(np.mean([v["recall@1"] for v in row["edits"].values()]))
    ssim_row = copies.run_copies(get_metric("ssim"), images60, edits, idx, pixel=32, ssim_queries=8)
    assert ssim_row["n_queries"] == 8 and ssim_row["dim"] is None and ssim_row["edits"]["jpeg-q40"]["n"] == 8


def test_wide_embeddings_are_sketched_to_dim(images60):
    row = copies.run_copies(get_metric("l2"), images60, [EDITS["jpeg-q40"]], sample(60, 20, 0), pixel=32, dim=512)
    assert row["dim"] == 512 and row["edits"]["jpeg-q40"]["recall@1"] > 0.8


def test_an_archive_out_of_name_order_is_read_sorted(cifar_dir, tmp_path):
    import tarfile

    files = sorted(cifar_dir.rglob("*.jpg"))[:6]
    archive = tmp_path / "shuffled.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in reversed(files):
            tar.add(f, arcname=f"val/{f.parent.name}/{f.name}")
    images = read_images(archive, "val")
    assert images.names == sorted(images.names) and len(images) == 6


def test_mirror_search_finds_flipped_copies_for_every_metric(images60):
    idx = sample(len(images60), 20, 0)
    for name in ("l2", "ssim"):
        plain = copies.run_copies(get_metric(name), images60, [EDITS["hflip"]], idx, pixel=32, ssim_queries=20)
        mirrored = copies.run_copies(
            get_metric(name), images60, [EDITS["hflip"]], idx, pixel=32, ssim_queries=20, mirror=True
        )
        assert mirrored["edits"]["hflip"]["recall@1"] == 1.0 and mirrored["mirror"] is True, name
        assert plain["edits"]["hflip"]["recall@1"] < 0.9, name
