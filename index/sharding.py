"""Split an index into S shard indexes by a stable hash of the item id, for serving by S replicas.

Each shard is a complete index folder (`OUT/shard-000`, …) in the one on-disk format, with the source's
pins and its trained FAISS structure (the same IVF centroids, PQ codebooks and OPQ rotation), so a
vector in a shard has the distance it has in the source, and the merged top-k of the shards is the
source's top-k. Items keep their ids; an id lives in shard `shard_of(id, S)` and nowhere else, which is
how a router finds the item of an `id` query. Each shard's `shard` setting ({index, count, hash, split})
lets a router check that it is talking to the shard it expects, of the same split.

The source is opened read-only and never written. Every shard is built in a hidden temporary folder
inside OUT and renamed into place only once all are complete (a crash leaves no `shard-*` folder that
is partial); `shards.json`, written last and atomically, lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from durable import atomic_write_bytes, fsync_dir
from index.collection import SHARD_KEY, AFVIndex, IndexExistsError, InvalidInputError

HASH = "splitmix64"  # the id → shard function, recorded in every shard
LAYOUT_FILE = "shards.json"
LAYOUT_FORMAT = "afv-shards/1"


def shard_of(ids: np.ndarray | list[int], shards: int) -> np.ndarray:
    """The shard of each id: splitmix64 of the id's 64 bits, modulo `shards` (stable across processes and
    versions, unlike Python's `hash`; neighbouring ids scatter evenly)."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(shards)).astype(np.int64)


def shard_name(k: int) -> str:
    """The folder of shard k inside the output folder."""
    return f"shard-{k:03d}"


@dataclass(frozen=True)
class ShardInfo:
    """What a shard records about itself (its `shard` setting)."""

    index: int
    count: int  # shards in the split
    split: str  # the split's id: shards of one split share it
    hash: str = HASH


@dataclass(frozen=True)
class SplitResult:
    """The shard folders written and how many items each holds."""

    folders: list[Path]
    counts: list[int]
    split: str


def split_index(source_dir: str | Path, out_dir: str | Path, shards: int, batch: int = 10_000) -> SplitResult:
    """Split the index in `source_dir` into `shards` indexes `out_dir/shard-000` … by `shard_of(id)`."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if shards < 1:
        raise InvalidInputError(f"the number of shards must be at least 1, got {shards}")
    _check_output(source_dir, out_dir)
    with AFVIndex.open(source_dir, read_only=True) as source:
        out_dir.mkdir(parents=True, exist_ok=True)
        split = uuid.uuid4().hex
        temps = [out_dir / f".{shard_name(k)}.tmp-{split[:8]}" for k in range(shards)]
        try:
            counts = _build(source, temps, split, batch)
            folders = [out_dir / shard_name(k) for k in range(shards)]
            for temp, folder in zip(temps, folders):
                os.rename(temp, folder)
            fsync_dir(out_dir)
        except BaseException:
            for temp in temps:
                shutil.rmtree(temp, ignore_errors=True)
            raise
    layout = {
        "format": LAYOUT_FORMAT,
        "hash": HASH,
        "split": split,
        "source": source_dir.resolve().name,
        "count": sum(counts),
        "shards": [{"name": f.name, "count": c} for f, c in zip(folders, counts)],
    }
    atomic_write_bytes(out_dir / LAYOUT_FILE, json.dumps(layout, indent=1).encode())
    return SplitResult(folders, counts, split)


def _check_output(source_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder that holds anything, or lies inside the source (which is never written)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise IndexExistsError(f"{out_dir} already exists and is not empty: choose a new folder for the shards")
    if out_dir.resolve().is_relative_to(source_dir.resolve()):
        raise InvalidInputError(f"the shards cannot be written inside the index being split ({source_dir})")


def _build(source: AFVIndex, temps: list[Path], split: str, batch: int) -> list[int]:
    """Fill one empty copy of the source per shard in a single pass over its items; returns the counts."""
    shards = len(temps)
    parts: list[AFVIndex] = []
    try:
        for k, temp in enumerate(temps):
            info = ShardInfo(index=k, count=shards, split=split)
            parts.append(AFVIndex.create_like(source, temp, {SHARD_KEY: asdict(info)}))
        counts = [0] * shards
        for rows, vectors in source.iter_items(batch):
            which = shard_of([r.id for r in rows], shards)
            for k in np.unique(which):
                picked = np.flatnonzero(which == k)
                parts[k].add_items([rows[i] for i in picked], vectors[picked])
                counts[k] += len(picked)
        for part in parts:
            part.checkpoint()
    except BaseException:
        for part in parts:  # the folders are deleted next: their close must not hide what went wrong
            with contextlib.suppress(Exception):
                part.close()
        raise
    for part in parts:
        part.close()
    return counts
