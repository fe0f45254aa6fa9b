"""A model-free embedder for API tests: the service runs on it exactly as on a trained model."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from model.embedder import Embedder, config_hash, named_layout
from model.presets import get_preset


class FakeEmbedder(Embedder):
    """Pixels average-pooled to a 4×4 grid per channel (48 values): deterministic, instant, no weights."""

    kind = "fake"

    def __init__(self, grid: int = 4):
        preset = get_preset("tiny")
        self.grid = grid
        super().__init__(
            preset,
            device=torch.device("cpu"),
            layout=named_layout([("red", grid * grid), ("green", grid * grid), ("blue", grid * grid)]),
            normalization="none",
            batch_size=16,
            name="fake-pooled-pixels",
            model_hash=config_hash("fake", preset.resolution, grid),
            stats_hash=config_hash("fake-stats", grid),
        )

    def raw_embed(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            return F.adaptive_avg_pool2d(x.float() / 255, self.grid).flatten(1)
