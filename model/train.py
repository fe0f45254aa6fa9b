"""The EBM-GAN training loop: checkpoints, bit-exact resume, EMA generator, sample grids, metrics, monitor."""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from model import losses
from model.checkpoint import (
    FORMAT,
    LAST_FILE,
    MODEL_FILE,
    atomic_torch_save,
    load_state,
    read_checkpoint,
    state_hash,
)
from model.data import load_collection, uint8_to_model
from model.extract import FISHER_FILE, save_stats
from model.fisher import estimate_stats
from model.monitor import fisher_monitor
from model.nets import Discriminator, Generator, fold_spectral_norm
from model.plots import plot_metrics, save_grid
from model.presets import Preset, get_preset, preset_from_dict

log = logging.getLogger(__name__)

METRIC_FIELDS = ["step", "wall_s", "img_per_s", "loss_d", "loss_g", "loss_mcmc", "d_real", "d_fake",
                 "fd_val_gen", "fd_train_gen", "fd_val_train"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as RUN_DIR/config.json)."""

    data: str
    out: str
    preset: str = "cpu"
    steps: int | None = None  # default: the preset's
    batch_size: int | None = None  # default: the preset's
    device: str = "auto"
    split: str | None = "auto"  # sub-folder of the collection to train on; 'auto' → 'train' if present
    limit: int | None = None  # train on the first N images only (over-fitting experiments)
    lr_g: float = 2e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.999)
    ema: float = 0.999
    gamma: float = 0.0  # MCMC-inspired generator term: Langevin step size (0 = off)
    noise_std: float = 0.0  # … and its noise
    ckpt_every: int = 500
    holdout: int = 256  # real images held back for the Fisher-similarity monitor
    monitor_samples: int = 256
    keep_checkpoints: int = 3
    seed: int = 0
    max_minutes: float | None = None  # stop (checkpointed, resumable) after this much wall time
    extra: dict = field(default_factory=dict)


class Trainer:
    """Owns the networks, optimisers, RNG and data of one run; `run()` trains to `steps`."""

    def __init__(self, cfg: TrainConfig, preset: Preset, images: torch.Tensor, device: torch.device):
        self.cfg, self.preset, self.device = cfg, preset, device
        self.steps = cfg.steps or preset.steps
        self.batch_size = cfg.batch_size or preset.batch_size
        torch.manual_seed(cfg.seed)
        self.d, self.g = Discriminator(preset).to(device), Generator(preset).to(device)
        self.g_ema = copy.deepcopy(self.g).eval()
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.wall_s = 0.0  # training wall time so far, across resumes
        self._split_data(images)

    def _split_data(self, images: torch.Tensor) -> None:
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.cfg.seed))
        n_val = min(self.cfg.holdout, images.shape[0] // 5)
        self.val = images[perm[:n_val]]
        self.train = images[perm[n_val:]].to(self.device)

    # --- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"format": FORMAT, "preset": self.preset.to_dict(), "step": self.step,
                "D": self.d.state_dict(), "G": self.g.state_dict(), "G_ema": self.g_ema.state_dict(),
                "opt_D": self.opt_d.state_dict(), "opt_G": self.opt_g.state_dict(),
                "rng": self.rng.get_state(), "wall_s": self.wall_s, "normalization": "none"}

    def load(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        saved = preset_from_dict(ckpt["preset"])
        if saved != self.preset:
            raise ValueError(f"{path} was trained with preset '{saved.name}' ({saved}); "
                             f"cannot resume it as '{self.preset.name}'")
        for mod, key in ((self.d, "D"), (self.g, "G"), (self.g_ema, "G_ema")):
            load_state(mod, ckpt[key], key, self.preset, path)
        self.opt_d.load_state_dict(ckpt["opt_D"])
        self.opt_g.load_state_dict(ckpt["opt_G"])
        self.rng.set_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        self.wall_s = float(ckpt.get("wall_s", 0.0))

    # --- one step -----------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.train.shape[0], (self.batch_size,), generator=self.rng)
        z = torch.randn(self.batch_size, self.preset.nz, generator=self.rng)
        return uint8_to_model(self.train[idx.to(self.device)]), z.to(self.device)

    def train_step(self) -> dict[str, float]:
        x, z = self._batch()
        fake = self.g(z)
        d_real, d_fake = self.d(x), self.d(fake.detach())
        ld = losses.d_loss(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        ld.backward()
        self.opt_d.step()

        d_gen = self.d(fake)
        lg = losses.g_loss(d_gen)
        lm = torch.zeros((), device=self.device)
        if self.cfg.gamma > 0:
            target = losses.langevin_target(self.d, fake, self.cfg.gamma, self.cfg.noise_std, self.rng)
            lm = losses.mcmc_loss(fake, target)
        self.opt_g.zero_grad(set_to_none=True)
        (lg + lm).backward()
        self.opt_g.step()
        self._update_ema()
        self.step += 1
        return {"loss_d": ld.item(), "loss_g": lg.item(), "loss_mcmc": lm.item(),
                "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        for pe, p in zip(self.g_ema.parameters(), self.g.parameters()):
            pe.lerp_(p, 1.0 - self.cfg.ema)
        for be, b in zip(self.g_ema.buffers(), self.g.buffers()):
            be.copy_(b)


def resolve_split(data: str, split: str | None) -> str | None:
    """'auto' → 'train' when the collection has a top-level train/ folder (e.g. CIFAR-10's archive), else all.

    Every entry is looked at: archives need not list train/ first (CIFAR-10's lists test/ first).
    """
    if split != "auto":
        return split
    from model.data import iter_names

    return "train" if any(n.split("/")[0] == "train" for n in iter_names(data)) else None


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) the run in cfg.out; returns the run directory."""
    from model.extract import resolve_device

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    preset = get_preset(cfg.preset)
    split = resolve_split(cfg.data, cfg.split)
    images, _ = load_collection(cfg.data, preset.resolution, subdir=split, limit=cfg.limit, progress=progress)
    log.info("training on %d images from %s%s", images.shape[0], cfg.data, f" ({split}/)" if split else "")
    trainer = Trainer(cfg, preset, images, device)
    if (out / LAST_FILE).is_file():
        trainer.load(out / LAST_FILE)
        log.info("resuming %s from step %d", out, trainer.step)
    (out / MODEL_FILE).unlink(missing_ok=True)  # stale once training continues
    (out / "config.json").write_text(json.dumps({"config": asdict(cfg), "preset": preset.to_dict(),
                                                  "split": split, "n_images": images.shape[0]}, indent=2))
    _loop(trainer, out, progress)
    finish(trainer, out)
    return out


def _loop(tr: Trainer, out: Path, progress: bool) -> None:
    bar = tqdm(total=tr.steps, initial=tr.step, desc="training", unit="step", disable=not progress)
    window: list[dict] = []
    t0 = start = time.perf_counter()
    deadline = start + tr.cfg.max_minutes * 60 if tr.cfg.max_minutes else float("inf")
    while tr.step < tr.steps:
        window.append(tr.train_step())
        bar.update(1)
        if tr.step % 10 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in window[-1].items() if k != "loss_mcmc"})
        out_of_time = time.perf_counter() > deadline
        if tr.step % tr.cfg.ckpt_every == 0 or tr.step == tr.steps or out_of_time:
            wall = time.perf_counter() - t0
            tr.wall_s += wall
            checkpoint(tr, out, window, img_per_s=len(window) * tr.batch_size / max(wall, 1e-9))
            window, t0 = [], time.perf_counter()
        if out_of_time:
            log.info("stopping at step %d after %.1f min (--max-minutes); run again to resume",
                     tr.step, tr.cfg.max_minutes)
            break
    bar.close()


def checkpoint(tr: Trainer, out: Path, window: list[dict], img_per_s: float) -> None:
    """Write last.pt (atomically), a numbered copy, a sample grid, the metrics row and the plot."""
    state = tr.state()
    atomic_torch_save(state, out / LAST_FILE)
    ckdir = out / "checkpoints"
    atomic_torch_save(state, ckdir / f"step_{tr.step:07d}.pt")
    for old in sorted(ckdir.glob("step_*.pt"))[: -tr.cfg.keep_checkpoints]:
        old.unlink()
    z = torch.randn(64, tr.preset.nz, generator=torch.Generator().manual_seed(1234)).to(tr.device)
    with torch.no_grad():
        save_grid(tr.g_ema(z), out / "samples" / f"step_{tr.step:07d}.png")
    row = {k: sum(w[k] for w in window) / len(window) for k in window[0]} if window else {}
    row.update(fisher_monitor(tr.d, tr.g_ema, tr.train, tr.val, tr.cfg.monitor_samples, tr.cfg.seed))
    row.update(step=tr.step, wall_s=round(tr.wall_s, 1), img_per_s=round(img_per_s, 1))
    _append_metrics(out / "metrics.csv", row)
    plot_metrics(out / "metrics.csv", out / "training.png")


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in METRIC_FIELDS})


def finish(tr: Trainer, out: Path) -> None:
    """Estimate the full Fisher statistics and export the inference model (model.pt)."""
    d = fold_spectral_norm(tr.d)
    stats = estimate_stats(d, tr.g_ema, tr.preset.fisher_samples, progress=False)
    save_stats(out / FISHER_FILE, stats, state_hash(tr.d.cpu()))
    tr.d.to(tr.device)
    export = {"format": FORMAT, "preset": tr.preset.to_dict(), "step": tr.step,
              "D": {k: v.cpu() for k, v in tr.d.state_dict().items()},
              "G_ema": {k: v.cpu() for k, v in tr.g_ema.state_dict().items()}, "normalization": "none"}
    atomic_torch_save(export, out / MODEL_FILE)
