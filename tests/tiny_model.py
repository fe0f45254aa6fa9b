"""Fixtures shared by model- and service-level tests: a seeded tiny extractor (cheap Fisher statistics)
and small real images. Conftests that need them import them (`from tests.tiny_model import ...`)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import fisher
from model.extract import AFVExtractor
from model.nets import Discriminator, Generator, fold_spectral_norm
from model.presets import get_preset

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cifar10"


def make_extractor(seed: int = 0, n_stats: int = 32) -> AFVExtractor:
    """A seeded untrained 'tiny' model with Fisher statistics from few samples (seconds on CPU)."""
    torch.manual_seed(seed)
    preset = get_preset("tiny")
    d, g = Discriminator(preset).eval(), Generator(preset).eval()
    stats = fisher.estimate_stats(fold_spectral_norm(d), g, n_stats, batch_size=n_stats, seed=seed)
    return AFVExtractor(d, g, stats, device=torch.device("cpu"), batch_size=32, name=f"tiny-test-{seed}")


def on_device(ex: AFVExtractor, device: torch.device, normalization: str = "power") -> AFVExtractor:
    """The same model on `device` (G copied first: AFVExtractor moves its G there in place)."""
    return AFVExtractor(ex.d, copy.deepcopy(ex.g), ex.stats, device=device, normalization=normalization, batch_size=32)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: intra-op threads cost far more than they give."""
    import faiss

    before, before_omp = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    faiss.omp_set_num_threads(before_omp)


@pytest.fixture(scope="session")
def extractor() -> AFVExtractor:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_extractor()
    finally:
        torch.set_num_threads(before)


def _synthetic_pngs(n: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = rng.integers(0, 256, size=(1, 1, 3))
        img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append((f"synthetic/{i:04d}.png", buf.getvalue()))
    return out


@pytest.fixture(scope="session")
def images() -> list[tuple[str, bytes]]:
    """60 small real images (CIFAR-10 fixtures, 6 per class) or, without them, synthetic PNGs."""
    files = sorted(FIXTURES.glob("*/*.jpg"))
    if not files:
        return _synthetic_pngs(60)
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(f.parent.name, []).append(f)
    picked = [f for fs in by_class.values() for f in fs[:6]]
    return [(f"{f.parent.name}/{f.name}", f.read_bytes()) for f in picked]


@pytest.fixture(scope="session")
def image_batch(extractor, images) -> torch.Tensor:
    from model.data import decode_image

    return torch.from_numpy(np.stack([extractor.preprocess(decode_image(b)) for _, b in images]))
