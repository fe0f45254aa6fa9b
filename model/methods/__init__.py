"""One file per training method, each registering its `model.registry.Method` (imported by model/__init__.py)."""

from model.methods import afv, bigan, bigbigan, gfmn

__all__ = ["afv", "bigan", "bigbigan", "gfmn"]
