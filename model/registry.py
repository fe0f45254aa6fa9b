"""The method registry: every training method, and how its runs train, export and load, in one place.

Each method registers one `Method` record in its own file under `model/methods/` (`afv.py`, `bigan.py`,
`bigbigan.py`, `gfmn.py`, all of the same shape). Everything that depends on which method trained a
run (`model.train`, `model.loading.load_embedder`, GFMN's feature sources, `afv export`, `afv
reconstruct`) asks `get_method(name)` instead of comparing method strings. To add a method, write its
networks and `BaseTrainer` subclass in `model/<method>.py`, then a `model/methods/<method>.py` that
calls `register_method`, and list it in `model/methods/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from model.embedder import Embedder
    from model.encoder import Encoder
    from model.presets import Preset
    from model.trainer import BaseTrainer

COMMON_KEYS = ("method", "preset", "step")  # what every model.pt keeps besides the method's own keys
OPTIONS = ("embedding", "readout")  # loader options a method may accept (see `Method.options`)


# A method's loader: load(ckpt, path, run, device, *, normalization, batch_size, **options) → Embedder, where
# `options` are only those its `Method.options` names (model.loading filters them), each a keyword argument of
# that loader (e.g. `readout: str | None = None`). A Protocol with `**options: str` would demand that every
# loader accept any keyword, so the type leaves the arguments unchecked.
Loader = Callable[..., "Embedder"]


@dataclass(frozen=True)
class Method:
    """One training method: its trainer, what its model.pt keeps, how its runs load and what they offer."""

    name: str
    description: str  # one line, for help texts
    trainer: Callable[[], type[BaseTrainer]]  # imported lazily: training code loads only when training
    export_keys: tuple[str, ...]  # checkpoint keys model.pt keeps (besides COMMON_KEYS)
    load: Loader  # a checkpoint of this method → its embedder
    options: tuple[str, ...] = ()  # loader options it accepts: 'embedding' (encoder output), 'readout' (AFV)
    required_files: tuple[str, ...] = ()  # files beside the checkpoint that `afv export` needs
    features: Callable[[dict, Path], dict] | None = None  # checkpoint → GFMN feature-source record
    feature_network: Callable[[Preset], nn.Module] | None = None  # the network a feature record rebuilds
    encoder: Callable[[Preset], Encoder] | None = None  # E, for methods that learn one (reconstruct)

    def build_feature_network(self, preset: Preset) -> nn.Module:
        """The network a feature record of this method rebuilds; ValueError if the method has none."""
        if self.feature_network is None:
            raise ValueError(f"a '{self.name}' run has no feature network")
        return self.feature_network(preset)

    def export_state(self, ckpt: dict) -> dict:
        """The part of a checkpoint that model.pt keeps."""
        return {k: ckpt[k] for k in COMMON_KEYS + self.export_keys if k in ckpt}


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry (called once per file in model/methods/)."""
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    bad = [o for o in method.options if o not in OPTIONS]
    if bad:
        raise ValueError(f"method {method.name!r}: unknown loader option {bad[0]!r}; choose from {', '.join(OPTIONS)}")
    _METHODS[method.name] = method
    return method


def _registry() -> dict[str, Method]:
    if not _METHODS:  # model/__init__.py imports model.methods, so this means a broken import
        raise RuntimeError("no training methods are registered: model.methods was not imported")
    return _METHODS


def method_names() -> tuple[str, ...]:
    """The registered methods, in registration order."""
    return tuple(_registry())


def get_method(name: str) -> Method:
    """The method called `name`; ValueError listing the choices if there is none."""
    methods = _registry()
    if name not in methods:
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(methods)}")
    return methods[name]


def methods() -> tuple[Method, ...]:
    """The registered method records, in registration order."""
    return tuple(_registry().values())


def methods_with(option: str) -> tuple[str, ...]:
    """The methods whose loader accepts `option` (for error messages)."""
    return tuple(m.name for m in _registry().values() if option in m.options)


def checkpoint_method(ckpt: dict, path: Path | None = None) -> Method:
    """The method that wrote a checkpoint (checkpoints from before methods existed are 'afv')."""
    try:
        return get_method(ckpt.get("method", "afv"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path is not None else str(e)) from None
