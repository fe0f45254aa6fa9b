"""An index opened with the model that fills it: its pins checked, its sketches computed by that model.

`index.AFVIndex` stores vectors and knows no model; `model.sketch.Projector` turns images into
sketches and knows no index. `ModelIndex` joins the two for the ingest pipeline, the CLI and the
service: it refuses a model whose weights, Fisher statistics or projection differ from the ones the
index was built with, and refuses build options that would be silently ignored by an existing index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from index import AFVIndex, IndexMismatchError, InvalidInputError
from index.collection import DB_FILE, DEFAULT_MEMORY_BUDGET
from model.data import DRAFT_DECODE
from model.embedder import Embedder
from model.parallel import SplitProjector
from model.sketch import ProjectionError, Projector

DEFAULT_DIM = 1024
# Below this AFV length the exact extractor is as fast as coordinate sampling on CPU (the whole-image
# 32/64-px CPU models); above it (pyramid read-outs, the paper-size networks) sampling is several times
# faster at < 1 % distance error: `afv bench sketch`, docs/results.md.
SAMPLED_MIN_DIM = 262_144
PINNED = (("model_hash", "model weights"), ("stats_hash", "Fisher statistics"))


@dataclass(frozen=True)
class BuildOptions:
    """How a new index is made; None = the default (or, for an existing index, whatever it has)."""

    dim: int | None = None
    mode: str | None = None  # auto (see _projector) | exact | sampled | fast (legacy) | identity
    seed: int | None = None
    kind: str | None = None  # auto | flat | ivfpq | opq-ivfpq
    memory_budget: int | None = None


@dataclass
class ModelIndex:
    """An `AFVIndex` and the embedder + projector that made (and make) its vectors."""

    embedder: Embedder
    projector: Projector
    index: AFVIndex
    _split: SplitProjector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._split = SplitProjector(self.projector)

    @classmethod
    def create(cls, index_dir: str | Path, embedder: Embedder, options: BuildOptions = BuildOptions()) -> ModelIndex:
        """A new, empty index in `index_dir` pinned to `embedder` and a seeded projection."""
        projector = _projector(embedder, options)
        pins = {
            "model_hash": embedder.model_hash,
            "stats_hash": embedder.stats_hash,
            "model_name": embedder.name,
            "projection": projector.to_dict(),
            "decode": DRAFT_DECODE,
        }
        index = AFVIndex.create(
            index_dir,
            dim=projector.d,
            pins=pins,
            kind=options.kind or "auto",
            memory_budget=options.memory_budget or DEFAULT_MEMORY_BUDGET,
        )
        return cls(embedder, projector, index)

    @classmethod
    def open(cls, index_dir: str | Path, embedder: Embedder, *, read_only: bool = False) -> ModelIndex:
        """Open an existing index; IndexMismatchError if `embedder` did not build it."""
        index = AFVIndex.open(index_dir, read_only=read_only)
        try:
            return cls(embedder, check_pins(index.pins, embedder), index)
        except BaseException:
            index.close()
            raise

    @classmethod
    def open_or_create(
        cls, index_dir: str | Path, embedder: Embedder, options: BuildOptions = BuildOptions()
    ) -> ModelIndex:
        """Open the index in `index_dir` (refusing options it does not have), else create it."""
        if not (Path(index_dir) / DB_FILE).is_file():
            return cls.create(index_dir, embedder, options)
        self = cls.open(index_dir, embedder)
        try:
            _check_options(self, options)
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def repair(cls, index_dir: str | Path, embedder: Embedder) -> ModelIndex:
        """Rebuild the FAISS file from stored vectors, after checking that `embedder` built the index."""
        check_pins(AFVIndex.read_pins(index_dir), embedder)
        index = AFVIndex.repair(index_dir)
        return cls(embedder, check_pins(index.pins, embedder), index)

    @property
    def decode_fit(self) -> int | None:
        """What its images are decoded for: the model's resolution (JPEGs at a reduced DCT scale,
        `model.data.decode_image`), or None (a full decode) for an index built before that was pinned."""
        return self.embedder.resolution if self.index.pins.get("decode") == DRAFT_DECODE else None

    def sketch(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """N×3×R×R uint8 images → N×dim float32 sketches (model work only). On CPU the images are split
        in parts of about 8 across the calling thread's torch threads (`model.parallel`)."""
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        try:
            return self._split.embed(x)
        except ProjectionError as e:
            raise InvalidInputError(str(e)) from e

    def close(self) -> None:
        """Checkpoint and release the index."""
        self.index.close()

    def __enter__(self) -> ModelIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def auto_mode(embedder: Embedder) -> str:
    """'sampled' for AFVs of at least SAMPLED_MIN_DIM values (where it is measured faster), else 'exact'."""
    return "sampled" if embedder.kind == "afv" and embedder.dim >= SAMPLED_MIN_DIM else "exact"


def _projector(embedder: Embedder, options: BuildOptions) -> Projector:
    """The projection a new index gets: `auto_mode`, or identity when the embedding is already small."""
    dim, mode = options.dim or DEFAULT_DIM, options.mode or "auto"
    if mode == "auto":
        mode = auto_mode(embedder)
    if mode not in ("fast", "sampled") and embedder.dim <= dim:  # already small (e.g. a BiGAN z): store it as is
        mode, dim = "identity", embedder.dim
    try:
        return Projector(embedder, d=dim, mode=mode, seed=options.seed or 0)
    except ProjectionError as e:
        raise InvalidInputError(str(e)) from e


def check_pins(pins: dict, embedder: Embedder) -> Projector:
    """The index's projection rebuilt for `embedder`; IndexMismatchError if another model made it."""
    for key, what in PINNED:
        want, have = pins[key], getattr(embedder, key)
        if want != have:
            raise IndexMismatchError(
                f"this index was built with other {what} ({key} {str(want)[:12]}…, model "
                f"{pins['model_name']!r}) than the loaded model ({str(have)[:12]}…, "
                f"{embedder.name!r}); load the index's model or build a new index"
            )
    try:
        return Projector.from_dict(pins["projection"], embedder)
    except (ProjectionError, KeyError, TypeError) as e:
        raise IndexMismatchError(f"the index's projection does not fit this model: {e}") from e


def _check_options(mi: ModelIndex, options: BuildOptions) -> None:
    """Refuse build options an existing index would silently ignore."""
    spec, index = mi.projector.to_dict(), mi.index
    have = {
        "dim": index.dim,
        "mode": spec["mode"],
        "seed": spec["seed"],
        "kind": index.kind_request,
        "memory_budget": index.memory_budget,
    }
    for name, value in vars(options).items():
        if value is None or (name == "mode" and value == "auto") or value == have[name]:
            continue
        raise InvalidInputError(
            f"{index.index_dir} already holds an index with {name} {have[name]!r}; {name} {value!r} "
            "would be ignored (leave the option out, or build a new index in another folder)"
        )
