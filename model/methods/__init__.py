"""One file per training method, each registering its `model.registry.Method` (imported on first registry use)."""

from model.methods import afv, bigan, bigbigan, gfmn

__all__ = ["afv", "bigan", "bigbigan", "gfmn"]
