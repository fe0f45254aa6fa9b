"""The driver's memory for a bulk build's listing: held whole (`list_source`) against spooled to disk
shard by shard (`listing.spool`), on one run's Parquet list of N image paths (the files need not exist:
listing does not read them). Prints each one's peak Python allocation (tracemalloc), bytes per image,
wall time, and the ratio of the two peaks.

    .venv/bin/python bench/listing_memory.py --images 200000 --shard-size 10000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_list(path: Path, n: int) -> None:
    """A Parquet list of n paths like a crawl's (`shards/00123/000123456.jpg`) with a label column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [f"shards/{i // 10_000:05d}/{i:09d}.jpg" for i in range(n)]
    pq.write_table(pa.table({"path": paths, "label": [i % 1000 for i in range(n)]}), path)


def peak(work: Callable[[], object]) -> tuple[int, float, object]:
    """(peak bytes allocated while `work` ran and its result was alive, seconds, its result)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - t0
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top, seconds, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    args = ap.parse_args()

    from service.bulk.listing import spool
    from service.bulk.shards import ShardPlan
    from service.bulk.sources import iter_source, list_source

    with tempfile.TemporaryDirectory(prefix="afv-listing-bench-") as tmp:
        source = Path(tmp) / "list.parquet"
        write_list(source, args.images)
        held, held_s, plan = peak(lambda: ShardPlan.of(list_source(str(source)), args.shard_size))
        del plan
        spooled, spooled_s, plan = peak(lambda: spool(iter_source(str(source)), Path(tmp) / "out", args.shard_size))
        on_disk = sum(p.stat().st_size for p in (Path(tmp) / "out").rglob("*.gz"))
    n = args.images
    print(f"{n} images listed from a Parquet list, shards of {args.shard_size}")
    print(f"held in memory: peak {held / 2**20:.1f} MiB ({held / n:.0f} B/image), {held_s:.1f} s")
    print(
        f"spooled:        peak {spooled / 2**20:.1f} MiB ({spooled / n:.0f} B/image), {spooled_s:.1f} s, "
        f"{on_disk / 2**20:.1f} MiB on disk ({on_disk / n:.0f} B/image)"
    )
    print(f"peak ratio held/spooled: {held / spooled:.1f}x")


if __name__ == "__main__":
    main()
