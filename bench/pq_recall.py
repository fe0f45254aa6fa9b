"""Recall@10 of the compressed index structure on an index's real sketches, against exact search.

Holds out Q of the index's stored vectors as queries, builds the FAISS structure `index.faiss_index`
builds (OPQ-IVF-PQ by default) over the rest at the given PQ code size, and reports the share of each
query's exact 10 nearest that it finds: plain, and with the exact re-rank of 10×k candidates that
`search(..., rerank=True)` does. A small collection trains coarse IVF lists and PQ codebooks on few
vectors, so this is an estimate of what a large index does, not a measurement of one.

    .venv/bin/python bench/pq_recall.py INDEX_DIR --pq-bytes 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` present in the same row of `found`."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", type=Path)
    ap.add_argument("--pq-bytes", type=int, default=64)
    ap.add_argument("--kind", default="opq-ivfpq", choices=["ivfpq", "opq-ivfpq"])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: the index's rule).")
    args = ap.parse_args()

    from index import AFVIndex
    from index.faiss_index import VectorIndex, exact_rerank, plan_index

    with AFVIndex.open(args.index, read_only=True) as idx:
        ids = np.arange(1, idx.count + 1)
        stored = idx.vectors(list(ids))
    ids = np.array([i for i in ids if i in stored])
    x = np.stack([stored[i] for i in ids])
    rng = np.random.default_rng(0)
    held = rng.choice(len(x), size=args.queries, replace=False)
    base = np.setdiff1d(np.arange(len(x)), held)
    xb, xq, bid = x[base], x[held], ids[base]
    d2 = (xq**2).sum(1)[:, None] - 2 * xq @ xb.T + (xb**2).sum(1)[None, :]
    truth = bid[np.argsort(d2, axis=1)[:, : args.k]]
    auto = plan_index(max(len(xb), 10_000), x.shape[1], 2**40, args.kind)  # the structure, not the size limit
    nlist = max(16, min(auto.nlist, 2 ** int(np.log2(len(xb) // 39))))
    nprobe = args.nprobe or max(8, min(nlist // 16, 64))
    plan = type(auto)(args.kind, x.shape[1], nlist=nlist, m=args.pq_bytes, nprobe=nprobe)
    vi = VectorIndex.build(plan, xb)
    vi.add(xb, bid)
    _, plain = vi.search(xq, args.k)
    _, cand = vi.search(xq, args.k * 10)
    _, reranked = exact_rerank(xq, cand, dict(zip(bid, xb)), args.k)
    print(
        f"{len(xb)} vectors of {x.shape[1]} floats, {args.queries} held-out queries, {plan.factory}, "
        f"nprobe {plan.nprobe}, {plan.bytes_per_vector} B/vector"
    )
    print(
        f"recall@{args.k}: {recall_at(plain, truth):.3f}; with exact re-rank of {args.k * 10}: "
        f"{recall_at(reranked, truth):.3f}"
    )


if __name__ == "__main__":
    main()
