"""A tiny untrained model as a run folder: Ray workers load their model from a path, not from a fixture."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 'tiny' run folder whose Fisher statistics are estimated once here (workers then read the cache)."""
    from model.extract import save_untrained_run
    from model.loading import load_embedder

    run = save_untrained_run("tiny", tmp_path_factory.mktemp("bulk-model") / "tiny")
    load_embedder(run, device="cpu")  # estimates fisher.pt into the statistics cache (model.cache)
    return run
