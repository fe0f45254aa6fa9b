"""How fast embedding shards become an index (`service.bulk.assemble`): the single-process step of a
bulk build after the Ray workers are done. Random sketches stand in for real ones (the index does not
look at them), so this measures SQLite inserts, then the FAISS structure's one training and its adds.

    .venv/bin/python bench/shard_assembly.py --images 60000 --dim 1024 --shard-size 10000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--kind", default="auto", help="index kind (auto, flat, ivfpq, opq-ivfpq)")
    args = ap.parse_args()

    from index import AFVIndex
    from service.bulk.assemble import assemble
    from service.bulk.shards import Shard, ShardPlan, write_shard
    from service.bulk.sources import Entry

    rng = np.random.default_rng(0)
    plan = ShardPlan.of([Entry(f"/x/{i}.jpg", f"{i}.jpg") for i in range(args.images)], args.shard_size)
    with tempfile.TemporaryDirectory(prefix="afv-assembly-bench-") as tmp:
        folder = Path(tmp) / "shards"
        t0 = time.perf_counter()
        for k in range(plan.count):
            n = len(plan.entries_of(k))
            records = [
                {"name": e.name, "sha256": f"{k:08d}{i:056d}", "size": 1000, "metadata": {"path": e.name}}
                for i, e in enumerate(plan.entries_of(k))
            ]
            vectors = rng.normal(size=(n, args.dim)).astype(np.float32)
            write_shard(folder, k, plan, "bench", Shard(vectors, records, [None] * n))
        written = time.perf_counter() - t0
        with AFVIndex.create(Path(tmp) / "idx", dim=args.dim, kind=args.kind) as index:
            t0, last_add = time.perf_counter(), [0.0]
            out = assemble(index, folder, plan, "bench", on_rows=lambda n: last_add.__setitem__(0, time.perf_counter()))
            seconds, adding = time.perf_counter() - t0, last_add[0] - t0
            stats = index.stats()
    print(f"{args.images} sketches of {args.dim} floats in {plan.count} shards ({args.images / written:.0f}/s written)")
    print(
        f"assembled {out.added} in {seconds:.1f} s ({out.added / seconds:.0f} img/s): adding {adding:.1f} s "
        f"(into SQLite; FAISS untouched), final training and adding {seconds - adding:.1f} s; "
        f"final {stats['kind']} nlist {stats['nlist']} pq_bytes {stats['pq_bytes']}"
    )


if __name__ == "__main__":
    main()
