"""The training loop for every method: `train(cfg)` runs checkpoints, bit-exact resume, sample grids,
metrics.csv and the final export (model.pt) alike for all of them.

What lives where:
* `model.train` (here): the loop, `train()`, and `trainer_class(method)`;
* `model.trainer`: `TrainConfig` and `BaseTrainer`, the interface each method's trainer implements;
* `model.ebmgan`, `model.bigan`, `model.bigbigan`, `model.gfmn`: each method's networks and trainer;
* `model.methods.*`: each method's registration (`model.registry`).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from model.augment import check_augment
from model.checkpoint import LAST_FILE, MODEL_FILE, atomic_torch_save
from model.data import load_collection
from model.plots import plot_metrics, save_grid
from model.presets import get_preset
from model.registry import get_method
from model.trainer import BASE_FIELDS, BaseTrainer, TrainConfig

__all__ = ["TrainConfig", "train", "trainer_class", "resolve_split"]

log = logging.getLogger(__name__)


def trainer_class(method: str) -> type[BaseTrainer]:
    """The trainer of `method` (ValueError listing the registered methods if unknown)."""
    return get_method(method).trainer()


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
    check_augment(cfg.augment)
    split = resolve_split(cfg.data, cfg.split)
    images, _ = load_collection(cfg.data, preset.resolution, subdir=split, limit=cfg.limit, progress=progress)
    log.info("training on %d images from %s%s", images.shape[0], cfg.data, f" ({split}/)" if split else "")
    trainer = trainer_class(cfg.method)(cfg, preset, images, device)
    if (out / LAST_FILE).is_file():
        trainer.load(out / LAST_FILE)
        log.info("resuming %s from step %d", out, trainer.step)
    (out / MODEL_FILE).unlink(missing_ok=True)  # stale once training continues
    (out / "config.json").write_text(
        json.dumps(
            {"config": asdict(cfg), "preset": preset.to_dict(), "split": split, "n_images": images.shape[0]}, indent=2
        )
    )
    _loop(trainer, out, progress)
    finish(trainer, out)
    return out


def _loop(tr: BaseTrainer, out: Path, progress: bool) -> None:
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
            log.info(
                "stopping at step %d after %.1f min (--max-minutes); run again to resume", tr.step, tr.cfg.max_minutes
            )
            break
    bar.close()


def checkpoint(tr: BaseTrainer, out: Path, window: list[dict], img_per_s: float) -> None:
    """Write last.pt (atomically), a numbered copy, a sample grid, the metrics row and the plot."""
    state = tr.state()
    atomic_torch_save(state, out / LAST_FILE)
    ckdir = out / "checkpoints"
    atomic_torch_save(state, ckdir / f"step_{tr.step:07d}.pt")
    for old in sorted(ckdir.glob("step_*.pt"))[: -tr.cfg.keep_checkpoints]:
        old.unlink()
    save_grid(tr.sample_grid(64), out / "samples" / f"step_{tr.step:07d}.png")
    row = {k: sum(w[k] for w in window) / len(window) for k in window[0]} if window else {}
    row.update(tr.monitor())
    row.update(step=tr.step, wall_s=round(tr.wall_s, 1), img_per_s=round(img_per_s, 1))
    _append_metrics(out / "metrics.csv", row, BASE_FIELDS + tr.fields)
    plot_metrics(out / "metrics.csv", out / "training.png", tr.method)


def _append_metrics(path: Path, row: dict, fields: list[str]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})


def finish(tr: BaseTrainer, out: Path) -> None:
    """The method's final files (e.g. Fisher statistics), then the inference export model.pt."""
    tr.finish(out)
    atomic_torch_save(tr.export_state(), out / MODEL_FILE)
