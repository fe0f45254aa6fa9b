"""The bundled default model: loads as shipped, with its read-out's statistics, on a fresh clone."""

from __future__ import annotations

import pytest
import torch

from model import pyramid
from model.extract import WEIGHTS_DIR, default_run_dir
from model.loading import load_embedder


def _refuse(*_a, **_k):
    raise AssertionError("the bundled per-cell statistics did not match the bundled weights")


def test_bundled_default_loads_its_spatial_readout_from_the_shipped_statistics(monkeypatch, cifar_images):
    run = default_run_dir()
    assert run is not None and (run / "model.pt").is_file()

    monkeypatch.setattr(pyramid, "estimate_pyramid_stats", _refuse)
    ext = load_embedder(run, device="cpu")
    assert ext.readout == "pyramid-4" and ext.normalization == "power"
    v = ext.embed(cifar_images[:2])
    assert v.shape == (2, 16 * ext.param_dim)
    assert float(v[0].norm()) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("name", sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "model.pt").is_file()))
def test_every_bundled_model_loads_and_embeds_at_its_resolution(name, monkeypatch):
    monkeypatch.setattr(pyramid, "estimate_pyramid_stats", _refuse)
    ext = load_embedder(WEIGHTS_DIR / name, device="cpu")
    r = ext.resolution
    v = ext.embed(torch.randint(0, 256, (2, 3, r, r), dtype=torch.uint8))
    assert v.shape == (2, ext.dim) and bool(torch.isfinite(v).all())
    assert (WEIGHTS_DIR / name / "MODEL_CARD.md").is_file()
