"""Start-up time of an index whose write-ahead log holds 10⁵ operations after a crash (run by hand).

Builds one index with `--ops` logged operations (adds of random `--dim`-d vectors, one in twenty a
delete) and no checkpoint after the empty one `create` writes, then leaves it as `kill -9` would.
Each code tree opens its own copy twice, "crashing" (no close) after each open:

    .venv/bin/python bench/wal_startup.py --before /tmp/wal-before   # a worktree of the old commit

prints, per open, the seconds `AFVIndex.open` took, the ops it replayed, `pending_ops` afterwards,
the rows left in the `ops` table and the size of meta.sqlite (with its -wal file), then the ratios.
About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

OPEN_TWICE = r"""
import json, os, sqlite3, sys, time
from pathlib import Path
from index import AFVIndex, wal

d, rows = Path(sys.argv[1]), []
for _ in range(2):
    with sqlite3.connect(d / "meta.sqlite") as db:
        logged = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'ops'").fetchone()[0]
    to_replay = logged - wal.read_manifest(d / "manifest.json")["seq"]
    t = time.perf_counter()
    idx = AFVIndex.open(d)
    seconds = time.perf_counter() - t
    pending, count = idx.stats()["pending_ops"], idx.count
    idx.store.close(); os.close(idx._lock_fd)  # what kill -9 leaves: no close(), no checkpoint
    with sqlite3.connect(d / "meta.sqlite") as db:
        ops_rows = db.execute("SELECT count(*) FROM ops").fetchone()[0]
    size = sum(p.stat().st_size for p in d.glob("meta.sqlite*"))
    rows.append({"seconds": seconds, "replayed": to_replay, "pending_ops": pending, "ops_rows": ops_rows,
                 "sqlite_mb": size / 2**20, "count": count})
print(json.dumps(rows))
"""


def build(index_dir: Path, n_ops: int, dim: int) -> None:
    """An index with n_ops logged ops after its (empty) checkpoint, abandoned as a crash leaves it."""
    sys.path.insert(0, str(ROOT))
    import index.collection as collection
    from index import AFVIndex

    collection.SAVE_EVERY = 10**12  # no checkpoint while building: every op stays pending
    idx = AFVIndex.create(index_dir, dim=dim)
    idx.store.db.execute("PRAGMA synchronous=OFF")  # build speed only; the opens measured use FULL
    rng, n_del, batch = np.random.default_rng(0), n_ops // 20, 1000
    n_add = n_ops - n_del
    for start in range(0, n_add, batch):
        n = min(batch, n_add - start)
        recs = [{"sha256": f"{start + i:064x}", "name": f"img{start + i}.png"} for i in range(n)]
        idx.add_embedded(rng.normal(size=(n, dim)).astype(np.float32), recs)
    for id_ in rng.choice(np.arange(1, n_add + 1), size=n_del, replace=False):
        idx.store.delete(int(id_))  # logged like AFVIndex.delete; the in-memory FAISS index is dropped anyway
    assert idx.store.last_seq() == n_ops
    idx.store.close()
    assert idx._lock_fd is not None
    os.close(idx._lock_fd)


def open_twice(code: Path, index_dir: Path) -> list[dict]:
    """Open the index twice with the `index` package of `code`, each in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", OPEN_TWICE, str(index_dir)],
        cwd=code,  # `-c` puts the working folder first on sys.path
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Build once, open a copy with each code tree, print the table and the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--before", type=Path, help="a checkout of the code before the change (git worktree)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wal-startup-") as tmp:
        built = Path(tmp) / "built"
        t = time.perf_counter()
        build(built, args.ops, args.dim)
        print(f"built {args.ops} logged ops (dim {args.dim}) in {time.perf_counter() - t:.1f}s")
        trees = ([("before", args.before)] if args.before else []) + [("after", ROOT)]
        results = {}
        for name, code in trees:
            shutil.copytree(built, Path(tmp) / name)
            results[name] = open_twice(code, Path(tmp) / name)
    head = ("open", 5), ("seconds", 9), ("replayed", 10), ("pending", 9), ("ops rows", 10), ("sqlite MB", 11)
    print(f"{'code':7}" + "".join(f"{h:>{w}}" for h, w in head) + f"{'count':>8}")
    for name, rows in results.items():
        for i, r in enumerate(rows, 1):
            print(
                f"{name:7}{i:>5}{r['seconds']:>9.3f}{r['replayed']:>10}{r['pending_ops']:>9}{r['ops_rows']:>10}"
                f"{r['sqlite_mb']:>11.1f}{r['count']:>8}"
            )
    if "before" in results:
        b, a = results["before"], results["after"]
        print(f"first open after the crash: before/after = {b[0]['seconds'] / a[0]['seconds']:.2f}x")
        print(f"second open (the next restart): before/after = {b[1]['seconds'] / a[1]['seconds']:.1f}x")


if __name__ == "__main__":
    main()
