"""A source's listing spooled to disk shard by shard: the driver holds one shard's entries, not all of them.

As the listing streams past (`sources.iter_source`), each shard's entries are written to
`listing/part-k.jsonl.gz` (gzip JSON lines) beside the shards. The plan keeps only each shard's entry
count and digest, and reads a shard's entries back when its decode tasks are cut. Every run lists the
source again and rewrites these files; parts beyond the new listing's end are deleted. At 10⁸ images
the driver holds about 10⁴ counts and digests instead of about 48 GB of entries.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path

from service.bulk.shards import ShardPlan, dicts_digest
from service.bulk.sources import Entry

LISTING_DIR = "listing"
PART = re.compile(r"part-(\d+)\.jsonl\.gz")


def spool(
    entries: Iterable[Entry], folder: Path, size: int, on_entries: Callable[[int], None] = lambda n: None
) -> ShardPlan:
    """Cut `entries` into shards of `size` as they come, writing each shard's entries under `folder`;
    `on_entries(n)` after each shard, for a progress bar."""
    if size < 1:
        raise ValueError(f"the shard size must be positive, got {size}")
    out = folder / LISTING_DIR
    out.mkdir(parents=True, exist_ok=True)
    counts, digests = [], []
    for k, part in enumerate(_batched(entries, size)):
        dicts = [e.to_dict() for e in part]
        _write_part(part_path(out, k), dicts)
        counts.append(len(dicts))
        digests.append(dicts_digest(dicts))
        on_entries(len(dicts))
    _drop_parts_from(out, len(counts))
    return ShardPlan(size, tuple(counts), tuple(digests), partial(read_part, out))


def part_path(out: Path, k: int) -> Path:
    return out / f"part-{k:06d}.jsonl.gz"


def read_part(out: Path, k: int) -> list[Entry]:
    """Shard k's entries, as spooled."""
    with gzip.open(part_path(out, k), "rt", encoding="utf-8") as f:
        return [Entry(**json.loads(line)) for line in f]


def _write_part(path: Path, entries: list[dict]) -> None:
    # Not atomic, not fsynced: every run rewrites the listing before anything reads it.
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        f.writelines(json.dumps(e) + "\n" for e in entries)


def _drop_parts_from(out: Path, count: int) -> None:
    """Delete the parts of a longer earlier listing (k ≥ count)."""
    for path in out.iterdir():
        match = PART.fullmatch(path.name)
        if match and int(match.group(1)) >= count:
            path.unlink(missing_ok=True)


def _batched(items: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    it = iter(items)
    while part := list(islice(it, size)):
        yield part
