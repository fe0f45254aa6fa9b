"""The bundled default model: loads as shipped, with its read-out's statistics, on a fresh clone."""

from __future__ import annotations

import pytest

from model import pyramid
from model.extract import default_run_dir
from model.loading import load_embedder


def test_bundled_default_loads_its_spatial_readout_from_the_shipped_statistics(monkeypatch, cifar_images):
    run = default_run_dir()
    assert run is not None and (run / "model.pt").is_file()

    def refuse(*_a, **_k):
        raise AssertionError("the bundled per-cell statistics did not match the bundled weights")

    monkeypatch.setattr(pyramid, "estimate_pyramid_stats", refuse)
    ext = load_embedder(run, device="cpu")
    assert ext.readout == "pyramid-4" and ext.normalization == "power"
    v = ext.embed(cifar_images[:2])
    assert v.shape == (2, 16 * ext.param_dim)
    assert float(v[0].norm()) == pytest.approx(1.0, rel=1e-4)
