"""Model presets: resolution and widths for every supported configuration, defined in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    """Architecture and default training settings of one model size."""

    name: str
    resolution: int  # 32 or 64
    ndf: int  # discriminator width
    ngf: int  # generator width
    nz: int  # latent size
    batch_size: int
    steps: int
    fisher_samples: int = 2048

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # Tests: seconds on a laptop CPU.
    "tiny": Preset("tiny", 32, ndf=16, ngf=16, nz=32, batch_size=16, steps=200, fisher_samples=256),
    # About an hour on 2 CPU cores: ~0.5 s per step of batch 64 gives thousands of steps.
    "cpu": Preset("cpu", 32, ndf=32, ngf=32, nz=128, batch_size=64, steps=8000),
    # 64 px natural images on 2 CPU cores: ~1 s per step of 32, tens of thousands of steps in resumable chunks.
    "cpu64": Preset("cpu64", 64, ndf=32, ngf=32, nz=128, batch_size=32, steps=40_000),
    # cpu64 at twice the width and batch: minutes on a GPU, still small enough to serve on a CPU.
    "base64": Preset("base64", 64, ndf=64, ngf=64, nz=128, batch_size=64, steps=40_000),
    # The AFV paper's CIFAR-10 networks; for a GPU.
    "paper": Preset("paper", 32, ndf=256, ngf=256, nz=256, batch_size=64, steps=100_000),
    # BAPPS patch size (64 px): one more down/up-sampling stage; for a GPU.
    "paper64": Preset("paper64", 64, ndf=128, ngf=128, nz=256, batch_size=64, steps=100_000),
}


def get_preset(name: str) -> Preset:
    """Return the preset called `name`, or raise ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def preset_from_dict(d: dict) -> Preset:
    """Rebuild a preset saved with a checkpoint (so old runs load even if PRESETS changes)."""
    return Preset(**d)
