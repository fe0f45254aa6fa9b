"""Method 'afv': the AFV paper's EBM-GAN; its runs load as Adversarial Fisher Vectors of D.

Read-outs (`readout`: 'global', 'pyramid-1-2-4', …, see `model.pyramid.parse_readout`) are resolved by
`model.pyramid.with_readout`, whose errors list the choices.
"""

from __future__ import annotations

from model.extract import FISHER_FILE
from model.gfmn import afv_features
from model.nets import Discriminator
from model.pyramid import load_afv_embedder
from model.registry import Method, register_method
from model.trainer import BaseTrainer


def _trainer() -> type[BaseTrainer]:
    from model.ebmgan import EBMGANTrainer

    return EBMGANTrainer


METHOD = register_method(
    Method(
        name="afv",
        description="EBM-GAN (the AFV paper): embeds the Fisher vectors of its discriminator",
        trainer=_trainer,
        export_keys=("D", "G_ema", "normalization", "readout"),
        load=load_afv_embedder,
        options=("readout",),
        required_files=(FISHER_FILE,),
        features=afv_features,
        feature_network=Discriminator,
    )
)
