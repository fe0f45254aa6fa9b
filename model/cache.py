"""Where statistics computed on first use are kept: a per-user cache, never the model's own folder.

A model folder may be read-only (an installed package, a container image) or under version control
(the bundled weights), so files the code estimates itself (Fisher statistics of a read-out a folder
does not ship) go to `$AFV_CACHE_DIR`, else `$XDG_CACHE_HOME/afv`, else `~/.cache/afv`, in a folder
per set of weights (the first 16 hex digits of their SHA-256). Files a model folder ships are read
first; every cached file also pins the full hashes it belongs to, so a stale one is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AFV_CACHE_DIR"


def cache_dir() -> Path:
    """The root of this user's AFV cache (not created here)."""
    if root := os.environ.get(CACHE_ENV):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "afv"


def stats_cache_path(model_hash: str, filename: str) -> Path:
    """Where estimated statistics `filename` of the weights with SHA-256 `model_hash` are cached."""
    return cache_dir() / "stats" / model_hash[:16] / filename


def lookup(filename: str, model_hash: str, run_folder: Path | None) -> list[Path]:
    """The places to look for `filename`, in order: the model's own folder, then the cache."""
    shipped = [run_folder / filename] if run_folder is not None else []
    return [*shipped, stats_cache_path(model_hash, filename)]
