"""Method 'bigan': BiGAN; its runs load as their encoder's outputs (`embedding`: z | hidden | z+hidden)."""

from __future__ import annotations

from functools import partial

from model.encoder import Encoder, load_encoder_embedder
from model.gfmn import encoder_features
from model.registry import Method, register_method
from model.trainer import BaseTrainer


def _trainer() -> type[BaseTrainer]:
    from model.bigan import BiGANTrainer

    return BiGANTrainer


METHOD = register_method(
    Method(
        name="bigan",
        description="BiGAN: an encoder E learnt jointly with G against a joint D(x, z); embeds E(x)",
        trainer=_trainer,
        export_keys=("E_ema", "G_ema", "D"),
        load=partial(load_encoder_embedder, stochastic=False),
        options=("embedding",),
        features=encoder_features,
        feature_network=partial(Encoder, stochastic=False),
        encoder=partial(Encoder, stochastic=False),
    )
)
