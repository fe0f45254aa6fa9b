"""BAPPS loaders and scores: hand-computed values, layout errors, and the committed fixture."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation import bapps


def test_2afc_score_matches_hand_computed_values():
    d0 = np.array([1.0, 2.0, 3.0, 5.0])
    d1 = np.array([2.0, 1.0, 3.0, 4.0])
    judge = np.array([0.2, 0.9, 0.4, 0.5])
    # d0<d1 → 1−0.2; d1<d0 → 0.9; tie → 0.5; d1<d0 → 0.5
    assert bapps.score_2afc(d0, d1, judge) == pytest.approx((0.8 + 0.9 + 0.5 + 0.5) / 4)


def test_jnd_map_matches_hand_computed_values():
    # sorted by distance, same = [1, 0, 1]: precision [1, .5, 2/3], recall [.5, .5, 1]
    # interpolated: max precision at recall ≥ r → AP = .5·1 + .5·(2/3)
    d = np.array([0.3, 0.1, 0.2])
    same = np.array([1.0, 1.0, 0.0])
    assert bapps.score_jnd(d, same) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_jnd_map_is_one_for_a_perfect_detector_and_handles_fractions():
    assert bapps.score_jnd(np.array([0.1, 0.2, 5.0, 6.0]), np.array([1.0, 1, 0, 0])) == pytest.approx(1.0)
    frac = bapps.score_jnd(np.array([0.1, 0.2, 5.0]), np.array([0.9, 0.8, 0.1]))
    assert 0.8 < frac < 1.0


def test_bad_score_inputs_raise_value_error():
    with pytest.raises(ValueError):
        bapps.score_2afc(np.zeros(2), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="same"):
        bapps.score_jnd(np.array([1.0]), np.array([0.0]))


def test_loaders_read_the_fixture(bapps_dir):
    two = bapps.load_2afc(bapps_dir / "2afc")
    jnd = bapps.load_jnd(bapps_dir / "jnd")
    assert len(two) == 30 and len(jnd) == 30
    assert [p.stem for p in two.ref] == [p.stem for p in two.p1] == [p.stem for p in two.p0]
    assert ((two.judge >= 0) & (two.judge <= 1)).all() and set(np.unique(jnd.same)) <= {0, 0.1, 0.2, 0.8, 0.9, 1}
    x = bapps.read_images(two.ref[:3], 32)
    assert tuple(x.shape) == (3, 3, 32, 32)
    assert tuple(bapps.read_images(two.ref[:2], None).shape) == (2, 3, 64, 64)


def test_unmatched_files_and_missing_folders_are_clear_errors(bapps_dir, tmp_path):
    import shutil

    with pytest.raises(bapps.BAPPSLayoutError, match="missing folder"):
        bapps.load_2afc(bapps_dir / "jnd")
    root = tmp_path / "jnd"
    shutil.copytree(bapps_dir / "jnd", root)
    (root / "same" / "000000.npy").unlink()
    with pytest.raises(bapps.BAPPSLayoutError, match="without a match"):
        bapps.load_jnd(root)
    np.save(root / "same" / "000000.npy", np.array([1.5]))
    with pytest.raises(bapps.BAPPSLayoutError, match=r"\[0, 1\]"):
        bapps.load_jnd(root)


@pytest.mark.parametrize("name", ["l2", "ssim"])
def test_pixel_metrics_score_well_on_the_clear_cut_fixture(bapps_dir, name):
    from model.evaluation.metrics import get_metric

    metric = get_metric(name)
    two = bapps.load_2afc(bapps_dir / "2afc")
    best = float(np.mean(np.maximum(two.judge, 1 - two.judge)))  # always siding with the majority
    assert bapps.evaluate_2afc(metric, two)["score"] == pytest.approx(best)
    assert bapps.evaluate_jnd(metric, bapps.load_jnd(bapps_dir / "jnd"))["map"] > 0.9
