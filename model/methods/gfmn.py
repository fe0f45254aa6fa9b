"""Method 'gfmn': GFMN; its runs load as AFVs of the feature D (with this G's Fisher statistics) or as moments."""

from __future__ import annotations

from model.gfmn import load_gfmn_embedder, own_features
from model.registry import Method, register_method
from model.trainer import BaseTrainer


def _trainer() -> type[BaseTrainer]:
    from model.gfmn import GFMNTrainer

    return GFMNTrainer


METHOD = register_method(
    Method(
        name="gfmn",
        description="GFMN: G trained without an adversary to match a fixed network's feature moments",
        trainer=_trainer,
        export_keys=("G_ema", "features"),
        load=load_gfmn_embedder,
        features=own_features,
    )
)
