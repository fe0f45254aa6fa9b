"""What every method's trainer shares: `TrainConfig` (a run's settings) and `BaseTrainer` (data split,
RNG, EMA and checkpoint state).

A method's trainer (`model.ebmgan.EBMGANTrainer` for 'afv', `model.bigan`, `model.bigbigan`,
`model.gfmn`) subclasses `BaseTrainer` and provides its networks (`modules`), optimisers
(`optimizers`), one `train_step`, a sample grid, a monitor and its inference export. The training
loop that drives them all alike is `model.train.train`; the methods are listed in `model.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn

from model.augment import augment_batch
from model.checkpoint import FORMAT, load_state, read_checkpoint
from model.data import uint8_to_model
from model.presets import Preset, preset_from_dict

BASE_FIELDS = ["step", "wall_s", "img_per_s"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as RUN_DIR/config.json)."""

    data: str
    out: str
    preset: str = "cpu"
    method: str = "afv"  # a registered method (model.registry): afv (EBM-GAN) | bigan | bigbigan | gfmn
    steps: int | None = None  # default: the preset's
    batch_size: int | None = None  # default: the preset's
    device: str = "auto"
    split: str | None = "auto"  # sub-folder of the collection to train on; 'auto' → 'train' if present
    limit: int | None = None  # train on the first N images only (over-fitting experiments)
    lr_g: float | None = None  # default: the method's (afv, bigan, bigbigan 2e-4; gfmn 1e-4)
    lr_d: float = 4e-4
    lr_e: float | None = None  # encoder (bigan: = lr_g; bigbigan: 10 × lr_g, the paper's decoupling)
    betas: tuple[float, float] | None = None  # Adam's; default: the method's (GANs (0, 0.999); gfmn (0.5, 0.999))
    ema: float = 0.999
    gamma: float = 0.0  # afv: MCMC-inspired generator term, Langevin step size (0 = off)
    noise_std: float = 0.0  # … and its noise
    truncation: float | None = None  # bigbigan: sample grids with latents truncated at this |z|
    features: str | None = None  # gfmn: run directory of the fixed feature extractor
    ama_lr: float = 1e-2  # gfmn: learning rate of the ADAM moving average of the mean difference
    augment: str = "none"  # real-image augmentation: none | flip | flip+translate (see model.augment)
    ckpt_every: int = 500
    holdout: int = 256  # real images held back for the monitor
    monitor_samples: int = 256
    fisher_samples: int | None = None  # generator samples for the final Fisher statistics (default: the preset's)
    keep_checkpoints: int = 3
    seed: int = 0
    max_minutes: float | None = None  # stop (checkpointed, resumable) after this much wall time
    extra: dict = field(default_factory=dict)


class BaseTrainer:
    """Owns one run's networks, optimisers, RNG and data; subclasses define the method."""

    method = "base"
    fields: list[str] = []  # the method's metrics.csv columns (after BASE_FIELDS)
    default_lr_g = 2e-4
    default_betas: tuple[float, float] = (0.0, 0.999)  # BigGAN/SNGAN-style Adam for adversarial training

    def __init__(self, cfg: TrainConfig, preset: Preset, images: torch.Tensor, device: torch.device):
        self.cfg, self.preset, self.device = cfg, preset, device
        self.steps = cfg.steps or preset.steps
        self.batch_size = cfg.batch_size or preset.batch_size
        self.lr_g = cfg.lr_g if cfg.lr_g is not None else self.default_lr_g
        # cfg.betas may be the JSON list read back from config.json; Adam takes any 2-sequence
        self.betas = cast("tuple[float, float]", tuple(cfg.betas)) if cfg.betas is not None else self.default_betas
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.wall_s = 0.0  # training wall time so far, across resumes
        self._split_data(images)
        torch.manual_seed(cfg.seed)

    def _split_data(self, images: torch.Tensor) -> None:
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.cfg.seed))
        n_val = min(self.cfg.holdout, images.shape[0] // 5)
        self.val = images[perm[:n_val]]
        self.train = images[perm[n_val:]].to(self.device)

    # --- what a method defines ------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Networks saved in last.pt under their names (e.g. D, G, G_ema)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers saved in last.pt as opt_NAME."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    def sample_grid(self, n: int = 64) -> torch.Tensor:
        """n images in [-1, 1] from fixed latents, for the checkpoint's sample grid."""
        raise NotImplementedError

    def monitor(self) -> dict[str, float]:
        """Quality numbers logged at every checkpoint (beyond the averaged step losses)."""
        return {}

    def export(self) -> dict:
        """The inference weights model.pt holds (besides format, method, preset and step)."""
        raise NotImplementedError

    def finish(self, out: Path) -> None:
        """Extra files written when training ends (e.g. Fisher statistics)."""

    # --- shared ------------------------------------------------------------------------------
    def state(self) -> dict:
        state = {
            "format": FORMAT,
            "method": self.method,
            "preset": self.preset.to_dict(),
            "step": self.step,
            "rng": self.rng.get_state(),
            "wall_s": self.wall_s,
        }
        state.update({name: m.state_dict() for name, m in self.modules().items()})
        state.update({f"opt_{name}": o.state_dict() for name, o in self.optimizers().items()})
        return state

    def load(self, path: Path) -> None:
        """Resume from a last.pt of the same method and preset."""
        ckpt = read_checkpoint(path)
        saved, method = preset_from_dict(ckpt["preset"]), ckpt.get("method", "afv")
        if method != self.method:
            raise ValueError(f"{path} is a '{method}' run; cannot resume it with --method {self.method}")
        if saved != self.preset:
            raise ValueError(
                f"{path} was trained with preset '{saved.name}' ({saved}); cannot resume it as '{self.preset.name}'"
            )
        for key, mod in self.modules().items():
            load_state(mod, ckpt[key], key, self.preset, path)
        for key, opt in self.optimizers().items():
            opt.load_state_dict(ckpt[f"opt_{key}"])
        self.rng.set_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        self.wall_s = float(ckpt.get("wall_s", 0.0))

    @property
    def fisher_samples(self) -> int:
        """Generator samples for the Fisher statistics written when training ends."""
        return self.cfg.fisher_samples or self.preset.fisher_samples

    def export_state(self) -> dict:
        """model.pt: the method's inference weights on CPU plus what identifies them."""
        return {
            "format": FORMAT,
            "method": self.method,
            "preset": self.preset.to_dict(),
            "step": self.step,
            **{key: _to_cpu(value) for key, value in self.export().items()},
        }

    def real_batch(self) -> torch.Tensor:
        """A random batch of training images in [-1, 1] (from the run's RNG: resumable)."""
        idx = torch.randint(0, self.train.shape[0], (self.batch_size,), generator=self.rng)
        x = augment_batch(self.train[idx.to(self.device)], self.cfg.augment, self.rng)
        return uint8_to_model(x)

    def latents(self, n: int | None = None) -> torch.Tensor:
        """N(0, I) latents from the run's RNG."""
        return torch.randn(n or self.batch_size, self.preset.nz, generator=self.rng).to(self.device)

    def fixed_latents(self, n: int = 64) -> torch.Tensor:
        """The same latents at every checkpoint, so sample grids are comparable over training."""
        return torch.randn(n, self.preset.nz, generator=torch.Generator().manual_seed(1234)).to(self.device)


def _to_cpu(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·live for parameters; buffers (BN statistics) are copied."""
    for pe, p in zip(ema.parameters(), live.parameters()):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), live.buffers()):
        be.copy_(b)


def apply_grads(params: list[nn.Parameter], grads: tuple[torch.Tensor | None, ...]) -> None:
    """Set .grad of each parameter (for simultaneous updates computed with autograd.grad)."""
    for p, g in zip(params, grads):
        p.grad = g
