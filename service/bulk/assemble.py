"""An index from embedding shards: their sketches and records added in listing order, then trained once.

The records go through `AFVIndex.add_embedded` in listing order, as the local build adds them, so each
image gets the id the local build gives it and a repeated image (same sha256, in the collection or
already indexed) is a duplicate of the first. They are added inside `AFVIndex.bulk()`: rows go to SQLite
only, and at the end the FAISS structure for the final size ((OPQ-)IVF-PQ above the flat limit) is
trained once on a sample of the stored vectors, then every vector is added. The local build instead
retrains as the collection grows.

`ShardAssembler` adds shards while the rest are still being embedded: each one as soon as it and every
shard before it are on disk, so assembly keeps pace with the workers instead of starting after them.
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


class ShardAssembler:
    """Adds a plan's shards to an index in listing order, whatever order they are ready in.

    Use it inside `index.bulk()`: `ready(k)` once shard k's file is whole; the shards up to the first
    one not ready yet are added then."""

    def __init__(self, index: AFVIndex, folder: Path, plan: ShardPlan, on_rows: Callable[[int], None] = lambda n: None):
        self.index, self.folder, self.plan, self.on_rows = index, folder, plan, on_rows
        self.outcomes = Outcomes()
        self.next = 0  # the first shard not added yet
        self._waiting: set[int] = set()

    @property
    def done(self) -> bool:
        return self.next == self.plan.count

    def ready(self, k: int) -> None:
        """Shard k is on disk: add it, and the shards after it that waited for it, if all before it are in."""
        self._waiting.add(k)
        while self.next in self._waiting:
            self._waiting.discard(self.next)
            self._add(self.next)
            self.next += 1

    def _add(self, k: int) -> None:
        shard, out = read_shard(shard_path(self.folder, k)), self.outcomes
        out.skipped += [(r["name"], e) for r, e in zip(shard.records, shard.errors) if e is not None]
        ok = [i for i, e in enumerate(shard.errors) if e is None]
        for start in range(0, len(ok), ADD_BATCH):
            rows = ok[start : start + ADD_BATCH]
            results = self.index.add_embedded(shard.vectors[rows], [shard.records[i] for i in rows])
            dup = sum(r.duplicate for r in results)
            out.added, out.present = out.added + len(results) - dup, out.present + dup
        self.on_rows(len(shard.records))


def assemble(
    index: AFVIndex, folder: Path, plan: ShardPlan, sketch: str, on_rows: Callable[[int], None] = lambda n: None
) -> Outcomes:
    """Add every shard of `plan` in `folder` to `index` (checkpointed by `bulk`), once all are on disk;
    `on_rows(n)` for a progress bar."""
    for k in range(plan.count):  # all there before anything is added
        if not is_complete(folder, k, plan, sketch):
            raise FileNotFoundError(f"{shard_path(folder, k)} is missing or incomplete; run the build again")
    with index.bulk():
        assembler = ShardAssembler(index, folder, plan, on_rows)
        for k in range(plan.count):
            assembler.ready(k)
    return assembler.outcomes  # `bulk` built and checkpointed the structure if anything was added
