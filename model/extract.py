"""AFV extraction: load a run's discriminator and Fisher statistics, turn images into AFVs and distances."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from model import cache, fisher
from model.checkpoint import (
    FORMAT,
    MODEL_FILE,
    CheckpointError,
    atomic_torch_save,
    state_hash,
)
from model.data import uint8_to_model
from model.embedder import DistanceReport, Embedder
from model.nets import Discriminator, Generator, fold_spectral_norm
from model.precision import PRECISIONS, computing_in
from model.presets import get_preset

log = logging.getLogger(__name__)

FISHER_FILE = "fisher.pt"
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_POINTER = WEIGHTS_DIR / "DEFAULT"  # one line: the folder name of the bundled default model


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA GPU is available")
    return torch.device(device)


def default_run_dir() -> Path | None:
    """The bundled default model's folder, or None while no model is bundled."""
    if DEFAULT_POINTER.is_file():
        run = WEIGHTS_DIR / DEFAULT_POINTER.read_text().strip()
        if run.is_dir():
            return run
    return None


def stats_hash(stats: fisher.FisherStats) -> str:
    h = hashlib.sha256(stats.mean.numpy().tobytes())
    h.update(stats.var.numpy().tobytes())
    return h.hexdigest()


def load_or_estimate_stats(
    run: Path, d: Discriminator, g: Generator, model_hash: str, n: int, device: torch.device
) -> fisher.FisherStats:
    """RUN's fisher.pt (or a cached one) if it belongs to these weights; else estimate from G and cache it."""
    folder = run if run.is_dir() else run.parent
    stats = load_pinned_stats(cache.lookup(FISHER_FILE, model_hash, folder), {"model_sha256": model_hash})
    if stats is not None:
        return stats
    log.info("estimating Fisher statistics from %d generator samples (once per model)", n)
    stats = fisher.estimate_stats(fold_spectral_norm(d).to(device), g.to(device), n, progress=True)
    save_stats(cache.stats_cache_path(model_hash, FISHER_FILE), stats, model_hash)
    return stats


def load_pinned_stats(paths: list[Path], pins: dict[str, str]) -> fisher.FisherStats | None:
    """The first of `paths` that exists and carries all of `pins` (stale files are skipped with a warning)."""
    for path in paths:
        if not path.is_file():
            continue
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if all(saved.get(k) == v for k, v in pins.items()):
            return fisher.FisherStats(
                saved["mean"], saved["var"], int(saved["n_samples"]), float(saved.get("eps_rel", 1e-6))
            )
        log.warning("%s belongs to other weights; not used", path)
    return None


def save_stats(path: Path, stats: fisher.FisherStats, model_hash: str, extra: dict | None = None) -> None:
    """Store Fisher statistics at `path` atomically, pinned to the weights' hash (and `extra` pins)."""
    try:
        atomic_torch_save(
            {
                "mean": stats.mean,
                "var": stats.var,
                "n_samples": stats.n_samples,
                "eps_rel": stats.eps_rel,
                "model_sha256": model_hash,
                **(extra or {}),
            },
            path,
        )
    except OSError as e:
        log.warning("could not save Fisher statistics to %s: %s", path, e)


class AFVExtractor(Embedder):
    """Images → Adversarial Fisher Vectors of one discriminator (with its stored Fisher statistics)."""

    kind = "afv"
    precisions = PRECISIONS

    def __init__(
        self,
        d: Discriminator,
        g: Generator,
        stats: fisher.FisherStats,
        *,
        device: torch.device,
        normalization: str = "none",
        batch_size: int = 64,
        name: str = "unnamed",
        model_hash: str | None = None,
    ):
        folded = fold_spectral_norm(d).to(device)
        super().__init__(
            d.preset,
            device=device,
            layout=fisher.param_layout(folded),
            normalization=normalization,
            batch_size=batch_size,
            name=name,
            model_hash=model_hash or state_hash(d),
            stats_hash=stats_hash(stats),
        )
        self.d = folded
        self.g = g.to(device).eval()
        self.stats = stats.to(device)
        self.inv_std = self.stats.inv_std()

    @classmethod
    def untrained(
        cls,
        preset_name: str,
        device: torch.device,
        normalization: str = "none",
        batch_size: int = 64,
        seed: int = 0,
        fisher_samples: int | None = None,
    ) -> AFVExtractor:
        """A seeded, freshly initialised model: a stand-in and the 'afv-random' baseline (statistics from
        `fisher_samples` generator samples, default the preset's)."""
        log.warning(
            "!!! NO TRAINED MODEL: using a freshly initialised '%s' discriminator (seed %d). "
            "Distances are NOT perceptually meaningful; pass --model RUN_DIR. !!!",
            preset_name,
            seed,
        )
        d, g = untrained_networks(preset_name, seed)
        n = fisher_samples or d.preset.fisher_samples
        stats = fisher.estimate_stats(fold_spectral_norm(d).to(device), g.to(device), n, seed=seed)
        return cls(
            d,
            g,
            stats,
            device=device,
            normalization=normalization,
            batch_size=batch_size,
            name=f"untrained-{preset_name}-seed{seed}",
        )

    def raw_fisher_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 (one batch) → N×P un-normalised V = diag(I)^-1/2 (∇θD(x) − mean), on device."""
        with self.lock, computing_in(self.precision, self.device):
            grads = fisher.per_sample_grads(self.d, uint8_to_model(x.to(self.device)))  # float32 out
        return grads.sub_(self.stats.mean).mul_(self.inv_std)  # fisher_vectors in place: no B×P temporaries

    def afv(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×R×R uint8 (one batch) → N×P AFVs with this extractor's normalisation, on device."""
        return self.embed(x)

    def raw_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw_fisher_vectors(x)

    def iter_afvs(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Stream AFVs of any number of images in batches: memory stays O(batch × P)."""
        return self.iter_embed(x)

    def mean_afv(self, x: torch.Tensor) -> torch.Tensor:
        """Mean AFV of a set (float64 accumulation), the set's representative in the Fisher space."""
        return self.mean_embedding(x)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 'discriminator features' baseline: globally pooled last-block activations, N×ndf."""
        with torch.no_grad():
            return self.d.features(uint8_to_model(x.to(self.device)))


def untrained_networks(preset_name: str, seed: int = 0) -> tuple[Discriminator, Generator]:
    """Seeded, freshly initialised D and G of a preset (in eval mode)."""
    preset = get_preset(preset_name)
    torch.manual_seed(seed)
    return Discriminator(preset).eval(), Generator(preset).eval()


def save_untrained_run(preset_name: str, out: Path, seed: int = 0) -> Path:
    """A run folder (model.pt) of untrained networks of a preset, loadable like any model (benchmarks)."""
    d, g = untrained_networks(preset_name, seed)
    state = {"format": FORMAT, "method": "afv", "preset": d.preset.to_dict(), "step": 0}
    atomic_torch_save({**state, "D": d.state_dict(), "G_ema": g.state_dict()}, Path(out) / MODEL_FILE)
    return Path(out)


__all__ = [
    "AFVExtractor",
    "CheckpointError",
    "DistanceReport",
    "resolve_device",
    "default_run_dir",
]
