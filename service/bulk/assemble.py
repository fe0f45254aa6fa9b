"""An index from embedding shards: their sketches and records added in listing order, then trained once.

The records go through `AFVIndex.add_embedded` in listing order, as the local build adds them, so each
image gets the id the local build gives it and a repeated image (same sha256, in the collection or
already indexed) is a duplicate of the first. They are added inside `AFVIndex.bulk()`: rows go to SQLite
only, and at the end the FAISS structure for the final size ((OPQ-)IVF-PQ above the flat limit) is
trained once on a sample of the stored vectors, then every vector is added. The local build instead
retrains as the collection grows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from index import AFVIndex
from service.bulk.shards import ShardPlan, is_complete, read_shard, shard_path

ADD_BATCH = 4096  # rows per SQLite transaction


@dataclass
class Outcomes:
    """What became of the listed images: added, already indexed, or unreadable (name, why)."""

    added: int = 0
    present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def assemble(
    index: AFVIndex, folder: Path, plan: ShardPlan, sketch: str, on_rows: Callable[[int], None] = lambda n: None
) -> Outcomes:
    """Add every shard of `plan` in `folder` to `index` (checkpointed by `bulk`); `on_rows(n)` for a progress bar."""
    for k in range(plan.count):  # all there before anything is added
        if not is_complete(folder, k, plan, sketch):
            raise FileNotFoundError(f"{shard_path(folder, k)} is missing or incomplete; run the build again")
    out = Outcomes()
    with index.bulk():
        for k in range(plan.count):
            shard = read_shard(shard_path(folder, k))
            out.skipped += [(r["name"], e) for r, e in zip(shard.records, shard.errors) if e is not None]
            ok = [i for i, e in enumerate(shard.errors) if e is None]
            for start in range(0, len(ok), ADD_BATCH):
                rows = ok[start : start + ADD_BATCH]
                results = index.add_embedded(shard.vectors[rows], [shard.records[i] for i in rows])
                dup = sum(r.duplicate for r in results)
                out.added, out.present = out.added + len(results) - dup, out.present + dup
            on_rows(len(shard.records))
    return out  # `bulk` built and checkpointed the structure if anything was added
