"""The metric registry: the trained AFV distance and the four baselines behind one interface.

| name        | distance between two images                                  | embedding (for probes)        |
|-------------|--------------------------------------------------------------|-------------------------------|
| afv         | ‖AFV(a) − AFV(b)‖ of the trained discriminator               | AFV (P values)                |
| l2          | ‖a − b‖ of the pixels scaled to [0, 1]                        | the pixels (3·H·W values)     |
| ssim        | 1 − SSIM(a, b) (`model.evaluation.ssim`, scikit-image defaults) | none: k-NN by brute force     |
| phash       | Hamming distance of the 64-bit DCT perceptual hashes          | the 64 hash bits as 0/1       |
|             | (`imagehash.phash`, hash_size 8): the classic copy detector   | (‖·‖² = Hamming distance)     |
| dpool       | ‖f(a) − f(b)‖, f = D's globally pooled last-block activations  | f (ndf values)                |
| afv-random  | as afv, for a randomly initialised D of the same preset       | AFV (P values)                |
| bigan       | ‖E(a) − E(b)‖ of a BiGAN run's encoder (`--model`)              | E(x) (nz values)              |
| bigbigan    | ‖μ_E(a) − μ_E(b)‖ of a BigBiGAN run's encoder mean (`--model`)  | μ_E(x) (nz values)            |
| gfmn-moments| ‖f(a) − f(b)‖, f = every block's activations of the model's     | f (Σ block sizes)             |
|             | feature trunk (D of an AFV run, E of a BiGAN run): GFMN's moment |                               |
|             | loss between one-image sets                                      |                               |

Inputs are N×3×R×R uint8 batches. The model metrics expect R = the model's resolution
(`Metric.resolution`); the pixel metrics (l2, ssim, phash: `resolution None`) take images at their
own size, which must be one size within a call. pHash's embedding distance is √Hamming, a monotone
function of its distance, so its nearest neighbours are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.evaluation.ssim import ssim

DEFAULT_METRICS = ("afv", "l2", "ssim", "phash", "dpool", "afv-random")  # one AFV model and its baselines
PIXEL_METRICS = ("l2", "ssim", "phash")  # no model: images at their own size
ENCODER_METRICS = ("bigan", "bigbigan")  # need --model of a run of that method
METRICS = DEFAULT_METRICS + ENCODER_METRICS + ("gfmn-moments",)
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EmbedFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Metric:
    """One distance: `distance(a, b)` → N distances of N pairs; `embed(x)` → N×F features whose
    Euclidean distances are this metric's (None where there is no such embedding, e.g. SSIM)."""

    name: str
    resolution: int | None
    pair_fn: DistanceFn
    embed_fn: EmbedFn | None = None
    batch_size: int = 64
    extractor: object | None = None

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        """N×3×R×R uint8 pairs (a[i], b[i]) → N float64 distances, in batches."""
        if a.shape != b.shape or a.dim() != 4:
            raise ValueError(
                f"{self.name}: need two N×3×H×W batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        parts = [
            self.pair_fn(a[i : i + self.batch_size], b[i : i + self.batch_size]).double().cpu()
            for i in range(0, a.shape[0], self.batch_size)
        ]
        return torch.cat(parts).numpy() if parts else np.zeros(0)

    @property
    def has_embedding(self) -> bool:
        return self.embed_fn is not None

    def iter_embed(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Stream N×F float32 features of N images in batches (memory O(batch × F))."""
        if self.embed_fn is None:
            raise ValueError(f"metric {self.name!r} has no embedding; compare images pairwise instead")
        for i in range(0, x.shape[0], self.batch_size):
            yield self.embed_fn(x[i : i + self.batch_size]).float().cpu()


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255.0).flatten(1)


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_pixels(a) - _pixels(b)).norm(dim=1)


def _one_minus_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - ssim(a, b)


def _phash_bits(x: torch.Tensor) -> torch.Tensor:
    """N×3×H×W uint8 → N×64 float32 0/1: the bits of `imagehash.phash` (8×8 DCT hash) of each image."""
    import imagehash
    from PIL import Image

    rows = [imagehash.phash(Image.fromarray(img.permute(1, 2, 0).numpy())).hash.reshape(-1) for img in x.cpu()]
    return torch.from_numpy(np.stack(rows).astype(np.float32)) if rows else torch.zeros(0, 64)


def _hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_phash_bits(a) != _phash_bits(b)).sum(1)


def _feature_distance(embed: EmbedFn) -> DistanceFn:
    """‖f(a) − f(b)‖ of a feature map f, with a and b embedded in one batch."""

    def pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        f = embed(torch.cat([a, b])).double()
        return (f[: a.shape[0]] - f[a.shape[0] :]).norm(dim=1)

    return pair


def _extractor_metric(name: str, ext, batch_size: int, pooled: bool = False) -> Metric:
    embed = ext.pooled_features if pooled else ext.embed
    # a pair batch embeds 2×batch images: halve it so AFV memory stays O(batch_size × P)
    if not pooled and ext.kind == "afv":
        batch_size = max(1, batch_size // 2)
    elif not pooled:
        batch_size = max(batch_size, ext.batch_size)
    return Metric(name, ext.resolution, _feature_distance(embed), embed, batch_size=batch_size, extractor=ext)


@dataclass(frozen=True)
class ModelNeed:
    """What a model metric loads: the embedder kind it scores and the loader's `embedding` option."""

    kind: str
    embedding: str | None = None  # ENCODER: the metric's own --embedding
    needs_model: bool = False  # no --model: error (the bundled default is another method)
    random: bool = False  # a randomly initialised twin of the trained model


ENCODER = "encoder"
MODEL_METRICS = {
    "afv": ModelNeed("afv"),
    "dpool": ModelNeed("afv"),
    "afv-random": ModelNeed("afv", random=True),
    "bigan": ModelNeed("bigan", ENCODER, needs_model=True),
    "bigbigan": ModelNeed("bigbigan", ENCODER, needs_model=True),
    "gfmn-moments": ModelNeed("gfmn-moments", "moments"),
}
AFV_METRICS = tuple(m for m, need in MODEL_METRICS.items() if need.kind == "afv")  # share one trained model


def load_extractors(
    metric: str,
    model: str | Path | None,
    device: str = "auto",
    normalization: str | None = None,
    seed: int = 0,
    embedding: str | None = None,
    trained=None,
):
    """The embedder a model metric needs, through `model.loading.load_embedder` (or `trained`, already
    loaded): the trained one, or a random AFV model of the same preset."""
    from model.loading import load_embedder

    need = MODEL_METRICS[metric]
    if need.needs_model and model is None:
        raise ValueError(f"metric {metric!r} needs --model RUN_DIR of a '{metric}' run (afv train --method {metric})")
    option = embedding if need.embedding == ENCODER else need.embedding
    if trained is None:
        trained = load_embedder(model, device=device, normalization=normalization, embedding=option)
    if trained.kind != need.kind:
        hint = f"--metric {trained.kind}" if trained.kind in METRICS else "another --model"
        raise ValueError(
            f"metric {metric!r} needs a '{need.kind}' model but {model} is a '{trained.kind}' model: use {hint}"
        )
    return random_twin(trained, seed) if need.random else trained


def random_twin(trained, seed: int = 0):
    """A seeded, randomly initialised AFV model of the trained model's preset (the 'afv-random' baseline)."""
    from model.extract import AFVExtractor

    return AFVExtractor.untrained(trained.preset.name, trained.device, normalization=trained.normalization, seed=seed)


PIXEL = {  # pixel metric → (pair distance, embedding or None)
    "l2": (_l2, _pixels),
    "ssim": (_one_minus_ssim, None),
    "phash": (_hamming, _phash_bits),
}


def get_metric(
    name: str,
    model: str | Path | None = None,
    *,
    device: str = "auto",
    normalization: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    extractor=None,
) -> Metric:
    """Build metric `name` (see `METRICS`); model metrics load `model` (or use `extractor`)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    if name in PIXEL:
        return Metric(name, None, *PIXEL[name], batch_size=batch_size)
    ext = extractor or load_extractors(name, model, device, normalization, seed)
    label = name
    if getattr(ext, "embedding", "z") != "z":
        label = f"{name}:{ext.embedding}"  # e.g. bigan:hidden, so rows say which encoder output they score
    return _extractor_metric(label, ext, batch_size, pooled=name == "dpool")


def get_metrics(
    names: list[str],
    model: str | Path | None = None,
    *,
    device: str = "auto",
    normalization: str | None = None,
    embeddings: list[str] | None = None,
) -> list[Metric]:
    """Several metrics, loading the trained AFV model once for all of afv, dpool and afv-random; the
    encoder metrics once per requested `embeddings` output."""
    bad = [n for n in names if n not in METRICS]
    if bad:
        raise ValueError(f"unknown metric {bad[0]!r}; choose from {', '.join(METRICS)}")
    trained = load_extractors("afv", model, device, normalization) if set(names) & set(AFV_METRICS) else None
    out = []
    encoder_outputs: list[str | None] = [*embeddings] if embeddings else [None]
    for n in names:
        need = MODEL_METRICS.get(n)
        for emb in encoder_outputs if need and need.embedding == ENCODER else [None]:
            shared = trained if n in AFV_METRICS else None
            ext = load_extractors(n, model, device, normalization, embedding=emb, trained=shared) if need else None
            out.append(get_metric(n, extractor=ext))
    return out
