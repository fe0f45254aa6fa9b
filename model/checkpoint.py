"""Checkpoint files: save atomically, load safely (weights_only, strict keys) with clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from durable import atomic_write
from model.nets import Discriminator, Generator
from model.presets import Preset, preset_from_dict

FORMAT = "afv-checkpoint/1"
MODEL_FILE = "model.pt"  # inference export: preset, D, G_ema
LAST_FILE = "last.pt"  # full training state, rewritten at every checkpoint


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or of a different architecture."""


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save `obj` to `path` atomically (a crash leaves the old checkpoint or the new one)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint dict on CPU with weights_only=True; raise CheckpointError if unusable."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an AFV checkpoint (expected format {FORMAT!r})")
    return ckpt


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint a run directory (or a .pt path) stands for: model.pt, else last.pt."""
    run = Path(run)
    if run.is_file():
        return run
    for name in (MODEL_FILE, LAST_FILE):
        if (run / name).is_file():
            return run / name
    raise CheckpointError(f"no {MODEL_FILE} or {LAST_FILE} in {run}: is it a run directory made by `afv train`?")


def load_state(module: torch.nn.Module, state: dict, what: str, preset: Preset, path: Path) -> None:
    """Strict state-dict load whose error says which architecture the checkpoint expects."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(
            f"{path}: the {what} weights do not fit the '{preset.name}' architecture "
            f"(ndf={preset.ndf}, ngf={preset.ngf}, nz={preset.nz}, {preset.resolution}px): {first}"
        ) from e


def load_networks(path: Path, expect: Preset | None = None) -> tuple[Preset, Discriminator, Generator, dict]:
    """Discriminator, EMA generator and the checkpoint dict; checks against `expect` if given."""
    ckpt = read_checkpoint(path)
    preset = preset_from_dict(ckpt["preset"])
    if expect is not None and preset != expect:
        raise CheckpointError(f"{path} was trained with preset {preset} but {expect} was requested")
    d, g = Discriminator(preset), Generator(preset)
    load_state(d, ckpt["D"], "discriminator", preset, path)
    load_state(g, ckpt["G_ema"], "generator", preset, path)
    return preset, d.eval(), g.eval(), ckpt


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's tensors (names, shapes, bytes): identifies the weights, not the file."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
