"""Shared fixtures: the committed CIFAR-10 and BAPPS-layout images and small trained/untrained tiny models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One intra-op thread: on a busy 2-core machine torch's thread pool stalls small ops by 10-40x,
# and the suite's models are small enough that a second thread buys little when the machine is idle.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
CIFAR = FIXTURES / "cifar10"
BAPPS = FIXTURES / "bapps"


# The device of the `gpu`-marked tests. AFV_TEST_GPU_DEVICE=cpu runs them on the CPU instead, which checks
# the tests themselves on a machine without CUDA (their comparisons are then CPU against CPU).
GPU_DEVICE_ENV = "AFV_TEST_GPU_DEVICE"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests on machines without CUDA (the marker is declared in pyproject.toml)."""
    if torch.cuda.is_available() or os.environ.get(GPU_DEVICE_ENV):
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu() -> torch.device:
    """The device of `gpu`-marked tests: CUDA (or $AFV_TEST_GPU_DEVICE)."""
    return torch.device(os.environ.get(GPU_DEVICE_ENV, "cuda"))


@pytest.fixture(scope="session", autouse=True)
def afv_cache(tmp_path_factory) -> Iterator[Path]:
    """A private statistics cache for the session (`model.cache`): the suite never writes to ~/.cache."""
    from model.cache import CACHE_ENV

    root = tmp_path_factory.mktemp("afv-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root))
        yield root


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    return CIFAR


@pytest.fixture(scope="session")
def bapps_dir() -> Path:
    """The committed BAPPS-layout fixture (2AFC and JND folders)."""
    return BAPPS


@pytest.fixture(scope="session")
def cifar_images() -> torch.Tensor:
    """All 300 fixture images as N×3×32×32 uint8."""
    from model.data import load_collection

    return load_collection(CIFAR, 32)[0]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on the fixture (a real run directory)."""
    return _train_tiny(tmp_path_factory.mktemp("tiny_run"), "afv", steps=30, ckpt_every=15)


def _train_tiny(out: Path, method: str, steps: int = 20, ckpt_every: int = 10, **kw) -> Path:
    from model.train import TrainConfig, train

    cfg = TrainConfig(
        data=str(CIFAR),
        out=str(out),
        preset="tiny",
        method=method,
        steps=steps,
        ckpt_every=ckpt_every,
        device="cpu",
        monitor_samples=64,
        holdout=32,
        **kw,
    )
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def method_runs(tmp_path_factory, tiny_run) -> dict[str, Path]:
    """Tiny run directories of every other training method (BiGAN, BigBiGAN, GFMN on tiny_run's D)."""
    root = tmp_path_factory.mktemp("method_runs")
    return {
        "afv": tiny_run,
        "bigan": _train_tiny(root / "bigan", "bigan"),
        "bigbigan": _train_tiny(root / "bigbigan", "bigbigan", truncation=1.0),
        "gfmn": _train_tiny(root / "gfmn", "gfmn", features=str(tiny_run)),
    }
