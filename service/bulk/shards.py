"""Embedding shards: a bulk build's sketches on disk, one Parquet file per fixed chunk of the listing.

Shard k holds images [k·S, (k+1)·S) of the source listing (`sources.list_source`), one row each in
listing order: the record the local build stores (name, sha256, size, metadata as JSON), the sketch
(zeros for an image that could not be read) and the error of an unreadable one. A shard is written
atomically (`durable.atomic_write`), and its Parquet metadata names what it holds: its entries (a
digest), its row count and the sketch (model, statistics and projection). A re-run skips every shard
that is complete for the same entries and sketch and redoes the rest, so a killed build resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from durable import atomic_write
from service.bulk.sources import Entry

FORMAT = "afv-shard/1"
META_KEY = b"afv"
COLUMNS = ("pos", "name", "sha256", "size", "metadata", "error")  # besides "vector"


@dataclass(frozen=True)
class ShardPlan:
    """A listing cut into shards of `size` entries (the last one shorter): each shard's entry count and
    digest, and its entries on demand (from memory, or from a spooled listing: `listing.spool`)."""

    size: int
    counts: tuple[int, ...]
    digests: tuple[str, ...]  # what each shard is made of: a changed listing (files added, removed, renamed) changes it
    load: Callable[[int], list[Entry]]  # shard k's entries

    @classmethod
    def of(cls, entries: Sequence[Entry], size: int) -> ShardPlan:
        """The plan of a listing held in memory."""
        if size < 1:
            raise ValueError(f"the shard size must be positive, got {size}")
        parts = [list(entries[i : i + size]) for i in range(0, len(entries), size)]
        return cls(size, tuple(map(len, parts)), tuple(map(entries_digest, parts)), parts.__getitem__)

    @property
    def count(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        """The number of entries in all."""
        return sum(self.counts)

    def entries_of(self, k: int) -> list[Entry]:
        return self.load(k)

    def digest(self, k: int) -> str:
        return self.digests[k]


def entries_digest(entries: Sequence[Entry]) -> str:
    """A digest of a shard's entries: their files, names, metadata and byte ranges."""
    return dicts_digest([e.to_dict() for e in entries])


def dicts_digest(entries: list[dict]) -> str:
    """`entries_digest` of entries already made dicts (`Entry.to_dict`)."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


@dataclass
class Shard:
    """The rows of one shard, in listing order."""

    vectors: np.ndarray  # n×d float32
    records: list[dict]  # {name, sha256, size, metadata}, as `AFVIndex.add_embedded` takes them
    errors: list[str | None]  # why an image could not be read, None for one that was

    @classmethod
    def from_rows(cls, columns: dict[str, np.ndarray]) -> Shard:
        """A shard from the sketch stage's rows (any order; `pos` orders them)."""
        order = np.argsort(columns["pos"], kind="stable")
        records = [
            {"name": str(n), "sha256": str(s), "size": int(z), "metadata": json.loads(m)}
            for n, s, z, m in zip(*(columns[c][order] for c in ("name", "sha256", "size", "metadata")))
        ]
        errors = [str(e) or None for e in columns["error"][order]]
        return cls(np.asarray(columns["vector"], dtype=np.float32)[order], records, errors)


def sketch_id(pins: dict) -> str:
    """A digest of what makes the sketches (model, Fisher statistics, projection): an index's pins."""
    return hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()


def shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:06d}.parquet"


def write_shard(folder: Path, k: int, plan: ShardPlan, sketch: str, shard: Shard) -> None:
    """Write shard k atomically: a crash leaves no file, or the whole shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, d = shard.vectors.shape
    if n != plan.counts[k]:
        raise ValueError(f"shard {k} has {n} rows, its entries are {plan.counts[k]}")
    meta = {"format": FORMAT, "shard": k, "count": n, "entries": plan.digest(k), "sketch": sketch}
    flat = pa.array(np.ascontiguousarray(shard.vectors, dtype=np.float32).ravel())
    table = pa.table(
        {
            "pos": pa.array(range(k * plan.size, k * plan.size + n), pa.int64()),
            "name": [r["name"] for r in shard.records],
            "sha256": [r["sha256"] for r in shard.records],
            "size": pa.array([r["size"] for r in shard.records], pa.int64()),
            "metadata": [json.dumps(r["metadata"]) for r in shard.records],
            "error": pa.array(shard.errors, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, d),
        }
    ).replace_schema_metadata({META_KEY: json.dumps(meta)})
    # no dictionary pages: sketches never repeat (they would cost 15 % more space)
    atomic_write(shard_path(folder, k), lambda tmp: pq.write_table(table, tmp, use_dictionary=False))


def read_shard(path: Path) -> Shard:
    """The rows of a shard file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column("vector").combine_chunks()
    d = column.type.list_size
    vectors = column.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
    cols = {c: table.column(c).to_pylist() for c in COLUMNS}
    records = [
        {"name": n, "sha256": s, "size": z, "metadata": json.loads(m)}
        for n, s, z, m in zip(cols["name"], cols["sha256"], cols["size"], cols["metadata"])
    ]
    return Shard(vectors, records, cols["error"])


def is_complete(folder: Path, k: int, plan: ShardPlan, sketch: str) -> bool:
    """Whether shard k's file holds all its rows for the current listing and sketch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(shard_path(folder, k)).metadata or {}).get(META_KEY)
        meta = json.loads(raw) if raw else {}
    except (OSError, ValueError, pa.ArrowException):  # missing, truncated, not Parquet
        return False
    want = {"format": FORMAT, "shard": k, "count": plan.counts[k], "entries": plan.digest(k), "sketch": sketch}
    return all(meta.get(key) == value for key, value in want.items())


def pending_shards(folder: Path, plan: ShardPlan, sketch: str) -> list[int]:
    """The shards still to make; removes what a killed run left half-written (temp files)."""
    for tmp in folder.glob(".shard-*.tmp"):
        tmp.unlink(missing_ok=True)
    return [k for k in range(plan.count) if not is_complete(folder, k, plan, sketch)]


class ShardCollector:
    """Gathers the sketch stage's rows (in any order, in batches) into whole shards."""

    def __init__(self, plan: ShardPlan, shards: Iterable[int]):
        self.plan = plan
        self.missing = {k: plan.counts[k] for k in shards}
        self.parts: dict[int, list[dict[str, np.ndarray]]] = {k: [] for k in self.missing}

    def add(self, batch: dict[str, np.ndarray]) -> list[tuple[int, Shard]]:
        """Take a batch of rows; returns the shards it completed."""
        done = []
        for k in np.unique(batch["shard"]):
            k = int(k)
            rows = batch["shard"] == k
            self.parts[k].append({c: np.asarray(v)[rows] for c, v in batch.items()})
            self.missing[k] -= int(rows.sum())
            if self.missing[k] == 0:
                parts = self.parts.pop(k)
                done.append((k, Shard.from_rows({c: np.concatenate([p[c] for p in parts]) for c in parts[0]})))
        return done

    @property
    def unfinished(self) -> list[int]:
        return sorted(k for k, n in self.missing.items() if n > 0)
