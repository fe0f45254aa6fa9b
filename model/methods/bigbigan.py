"""Method 'bigbigan': BigBiGAN; its runs load as their encoder's mean (`embedding`: z | hidden | z+hidden)."""

from __future__ import annotations

from functools import partial

from model.encoder import Encoder, load_encoder_embedder
from model.gfmn import encoder_features
from model.registry import Method, register_method
from model.trainer import BaseTrainer


def _trainer() -> type[BaseTrainer]:
    from model.bigbigan import BigBiGANTrainer

    return BigBiGANTrainer


METHOD = register_method(
    Method(
        name="bigbigan",
        description="BigBiGAN: BiGAN with unary scores, hinge losses and a decoupled Gaussian encoder; embeds μ_E(x)",
        trainer=_trainer,
        export_keys=("E_ema", "G_ema", "D"),
        load=partial(load_encoder_embedder, stochastic=True),
        options=("embedding",),
        features=encoder_features,
        feature_network=partial(Encoder, stochastic=True),
        encoder=partial(Encoder, stochastic=True),
    )
)
