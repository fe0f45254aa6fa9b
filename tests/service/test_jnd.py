"""JND threshold fitting, calibration through the API, persistence across restarts."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from service import jnd
from tests.service.conftest import API_KEY, cifar, encode, fake_app, noisy

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_fit_threshold_separable():
    t, acc = jnd.fit_threshold(np.array([1.0, 2.0, 5.0, 6.0]), np.array([1, 1, 0, 0]))
    assert t == pytest.approx(3.5) and acc == 1.0


def test_fit_threshold_soft_labels_and_edges():
    t, acc = jnd.fit_threshold(np.array([1.0, 2.0, 3.0]), np.array([0.9, 0.2, 0.1]))
    assert 1.0 < t < 2.0 and acc == pytest.approx((0.9 + 0.8 + 0.9) / 3)
    assert jnd.fit_threshold(np.array([1.0, 2.0]), np.array([1, 1]))[0] > 2.0
    assert jnd.fit_threshold(np.array([1.0, 2.0]), np.array([0, 0]))[0] < 1.0
    with pytest.raises(ValueError):
        jnd.fit_threshold(np.array([]), np.array([]))


def test_calibrate_persists_and_is_pinned_to_the_model(tmp_path):
    client, settings = fake_app(tmp_path)
    ref = cifar(4)
    pairs = [
        {
            "image_a": base64.b64encode(encode(ref)).decode(),
            "image_b": base64.b64encode(encode(noisy(ref, s, seed=s))).decode(),
            "same": float(s < 5),
        }
        for s in (1, 2, 3, 40, 60, 80)
    ]
    with client as c:
        r = c.post("/v1/jnd/calibrate", json={"pairs": pairs}, headers=AUTH)
        assert r.status_code == 200, r.text
        fitted = r.json()
        assert fitted["source"] == "calibrated" and fitted["accuracy"] == 1.0 and fitted["n_pairs"] == 6
        assert c.get("/v1/jnd/threshold").json() == fitted
        bad = c.post("/v1/jnd/calibrate", json={"pairs": [{"same": 1}, {"distance": 1, "same": 2}]}, headers=AUTH)
        assert bad.status_code == 422
    assert settings.jnd_file.is_file()
    with fake_app(tmp_path)[0] as c:  # restart: the calibration is kept
        assert c.get("/v1/jnd/threshold").json()["threshold"] == fitted["threshold"]
    assert jnd.load(settings.jnd_file, "other-model") is None


def test_threshold_from_settings(tmp_path):
    with fake_app(tmp_path, jnd_threshold=12.5)[0] as c:
        assert c.get("/v1/jnd/threshold").json() == {
            "threshold": 12.5,
            "source": "settings",
            "n_pairs": 0,
            "accuracy": None,
        }


def test_a_full_disk_while_saving_the_calibration_is_a_507_not_a_500(tmp_path, monkeypatch):
    import errno

    def no_space(path, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(jnd, "atomic_write_bytes", no_space)
    pairs = [{"distance": 1.0, "same": 1}, {"distance": 5.0, "same": 0}]
    with fake_app(tmp_path)[0] as c:
        r = c.post("/v1/jnd/calibrate", json={"pairs": pairs}, headers=AUTH)
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
        assert "JND calibration" in r.json()["error"]["message"]
        unsaved = c.post("/v1/jnd/calibrate", json={"pairs": pairs, "save": False}, headers=AUTH)
        assert unsaved.status_code == 200
