"""The BiGAN/BigBiGAN encoder E: images → latents, and the embedder that serves its outputs.

E shares the discriminator's residual trunk (without spectral norm) at the discriminator's width,
so at one preset AFV, BiGAN and BigBiGAN learn from networks of the same size. A two-layer MLP head maps
the pooled trunk features to z (BiGAN: deterministic) or to a Gaussian's mean and scale (BigBiGAN;
the scale below 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from model.checkpoint import load_state, state_hash
from model.data import uint8_to_model
from model.embedder import Embedder, config_hash, named_layout
from model.nets import resnet_trunk
from model.presets import Preset, preset_from_dict

EMBEDDINGS = ("z", "hidden", "z+hidden")


class Encoder(nn.Module):
    """E(x): N×3×R×R images in [-1, 1] → N×nz latents (or, stochastic, their mean and scale)."""

    def __init__(self, preset: Preset, stochastic: bool = False):
        super().__init__()
        self.preset, self.stochastic, self.nz = preset, stochastic, preset.nz
        self.hidden_dim = 4 * preset.ndf
        self.blocks = resnet_trunk(preset.ndf, preset.resolution, use_sn=False)
        self.fc = nn.Linear(preset.ndf, self.hidden_dim)
        self.out = nn.Linear(self.hidden_dim, preset.nz * (2 if stochastic else 1))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer: N×hidden_dim."""
        return F.relu(self.fc(F.relu(self.blocks(x)).mean(dim=(2, 3))))

    def mean_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(μ, σ or None, hidden): σ only for the stochastic (BigBiGAN) encoder."""
        h = self.hidden(x)
        out = self.out(h)
        if not self.stochastic:
            return out, None, h
        mu, raw = out.chunk(2, dim=1)
        return mu, torch.sigmoid(raw) + 1e-4, h  # σ < 1: a posterior no wider than the prior

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent for each image: μ, plus σ·ε when stochastic (ε from `generator`)."""
        mu, sigma, _ = self.mean_and_scale(x)
        if sigma is None:
            return mu
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        return mu + sigma * eps


class EncoderEmbedder(Embedder):
    """Images → E's latent mean (z), its last hidden layer, or both: the BiGAN/BigBiGAN representation."""

    def __init__(
        self,
        encoder: Encoder,
        kind: str,
        *,
        device: torch.device,
        embedding: str = "z",
        normalization: str = "none",
        batch_size: int = 256,
        name: str = "unnamed",
    ):
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown encoder embedding {embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
        parts = {
            "z": [("z", encoder.nz)],
            "hidden": [("hidden", encoder.hidden_dim)],
            "z+hidden": [("z", encoder.nz), ("hidden", encoder.hidden_dim)],
        }[embedding]
        super().__init__(
            encoder.preset,
            device=device,
            layout=named_layout(parts),
            normalization=normalization,
            batch_size=batch_size,
            name=name,
            model_hash=state_hash(encoder),
            stats_hash=config_hash(kind, embedding),
        )
        self.kind, self.embedding = kind, embedding
        self.encoder = encoder.to(device).eval()

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: dict,
        path: Path,
        encoder: Encoder,
        *,
        device: torch.device,
        embedding: str | None = None,
        normalization: str | None = None,
        batch_size: int = 256,
    ) -> EncoderEmbedder:
        """The (EMA) encoder weights of a bigan/bigbigan model.pt or last.pt, loaded into `encoder`."""
        preset = preset_from_dict(ckpt["preset"])
        load_state(encoder, ckpt["E_ema"] if "E_ema" in ckpt else ckpt["E"], "encoder", preset, path)
        name = path.parent.name if path.is_file() else path.name
        return cls(
            encoder,
            ckpt["method"],
            device=device,
            embedding=embedding or "z",
            normalization=normalization or "none",
            batch_size=batch_size,
            name=name,
        )

    @torch.no_grad()
    def raw_embed(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            mu, _, h = self.encoder.mean_and_scale(uint8_to_model(x.to(self.device)))
        return {"z": mu, "hidden": h, "z+hidden": torch.cat([mu, h], dim=1)}[self.embedding]


def load_encoder_embedder(
    ckpt: dict,
    path: Path,
    run: Path,
    device: torch.device,
    *,
    normalization: str | None,
    batch_size: int,
    embedding: str | None = None,
    stochastic: bool = False,
) -> EncoderEmbedder:
    """A bigan (deterministic E) or bigbigan (`stochastic` Gaussian E) run → its encoder's embedder."""
    encoder = Encoder(preset_from_dict(ckpt["preset"]), stochastic=stochastic)
    return EncoderEmbedder.from_checkpoint(
        ckpt,
        path,
        encoder,
        device=device,
        embedding=embedding,
        normalization=normalization,
        batch_size=max(batch_size, 256),
    )
