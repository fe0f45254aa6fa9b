"""FAISS vector index of sketches: exact flat below a size threshold, OPQ + IVF-PQ above (plain IVF-PQ on request).

Shapes follow faiss: xb (n×d) database vectors, xq (nq×d) queries, D distances, I ids, k neighbours.
Distances returned here are Euclidean (not squared). Ids are the caller's int64 ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from durable import atomic_write_bytes

KINDS = ("auto", "flat", "ivfpq", "opq-ivfpq")
FLAT_MAX = 50_000  # above this many vectors flat search gets slow (≈ n·d flops per query)
MIN_TRAIN = 10_000  # fewer vectors than this cannot train an IVF-PQ well
ID_BYTES = 8


class FaissIndexError(ValueError):
    """Bad arguments for, or an unusable, FAISS index."""


@dataclass(frozen=True)
class IndexPlan:
    """The FAISS structure for a collection: kind, IVF lists, PQ bytes per vector, default nprobe."""

    kind: str
    d: int
    nlist: int = 0
    m: int = 0
    nprobe: int = 0

    @property
    def factory(self) -> str:
        if self.kind == "flat":
            return "Flat"
        opq = f"OPQ{self.m}," if self.kind == "opq-ivfpq" else ""
        return f"{opq}IVF{self.nlist},PQ{self.m}"

    @property
    def bytes_per_vector(self) -> int:
        return (4 * self.d if self.kind == "flat" else self.m) + ID_BYTES

    @property
    def min_train(self) -> int:
        return 0 if self.kind == "flat" else max(39 * self.nlist, 256 * 39)

    def to_dict(self) -> dict:
        return asdict(self)


def _pq_bytes(n: int, d: int, memory_budget: int) -> int:
    """Largest PQ code size m (a divisor of d, m ≤ d/8, i.e. ≥ 32× smaller than float32) that fits."""
    candidates = [m for m in range(max(1, d // 8), 0, -1) if d % m == 0 and m <= 256]
    for m in candidates:
        if n * (m + ID_BYTES) <= memory_budget:
            return m
    raise FaissIndexError(
        f"{n} vectors do not fit in a memory budget of {memory_budget} bytes even "
        f"at {candidates[-1]} bytes per vector; raise the budget"
    )


def plan_index(n: int, d: int, memory_budget: int = 256 * 2**20, kind: str = "auto") -> IndexPlan:
    """Pick flat vs (OPQ-)IVF-PQ from the collection size and memory budget (autofaiss-style)."""
    if kind not in KINDS:
        raise FaissIndexError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    flat_fits = n * (4 * d + ID_BYTES) <= memory_budget and n <= FLAT_MAX
    if kind == "flat" or (kind == "auto" and (flat_fits or n < MIN_TRAIN)):
        return IndexPlan("flat", d)
    nlist = 2 ** int(round(math.log2(max(4 * math.sqrt(max(n, 1)), 16))))
    nlist = max(16, min(nlist, 4096, 2 ** int(math.log2(max(n // 39, 16)))))
    m = _pq_bytes(n, d, memory_budget)
    if kind == "auto":  # OPQ: recall@10 0.764 → 0.927 at 32 B/vector (10^5 × 256 synthetic, 83 s more build)
        kind = "opq-ivfpq"
    return IndexPlan(kind, d, nlist=nlist, m=m, nprobe=max(8, min(nlist // 16, 64)))


class VectorIndex:
    """A FAISS index with external int64 ids, Euclidean distances and atomic save / mmap open."""

    def __init__(self, index: faiss.Index, plan: IndexPlan, mmapped: bool = False):
        self.index, self.plan, self.mmapped = index, plan, mmapped
        self.nprobe = plan.nprobe

    @classmethod
    def build(cls, plan: IndexPlan, train: np.ndarray | None = None) -> VectorIndex:
        """A new empty index of `plan`; IVF kinds are trained on `train` (≥ plan.min_train rows)."""
        if plan.kind == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatL2(plan.d)), plan)
        if train is None or len(train) < 256:
            raise FaissIndexError(f"{plan.kind} needs training vectors (got {0 if train is None else len(train)})")
        index = faiss.index_factory(plan.d, plan.factory)
        # The factory turns on polysemous training (~30 s per build), which only serves searches with
        # polysemous_ht set; ours never set it, so skip it (codes and distances are unchanged).
        ivfpq = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivfpq.do_polysemous_training = False  # type: ignore[attr-defined]  # faiss's stubs omit IndexIVFPQ's field
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        return cls(index, plan)

    def empty_copy(self) -> VectorIndex:
        """A new, writable index with this one's trained structure (IVF centroids, PQ codebooks, OPQ rotation)
        and no vectors: a vector added to it gets the same code, so searches find the same distances."""
        if self.plan.kind == "flat":
            return VectorIndex.build(self.plan)
        ivf = faiss.extract_index_ivf(self.index)
        lists, owned = ivf.invlists, ivf.own_invlists
        # Clone with empty lists in place of the full ones: faiss cannot clone memory-mapped lists, and
        # copying every code only to drop it costs the index's size in memory. The swap is undone at once.
        empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        ivf.own_invlists = False
        ivf.invlists = empty
        try:
            index = faiss.clone_index(self.index)
        finally:
            ivf.invlists, ivf.own_invlists = lists, owned
        index.reset()  # the clone's lists are its own empty copy; reset zeroes the copied ntotal
        return VectorIndex(index, self.plan)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _check_writable(self) -> None:
        if self.mmapped:  # faiss aborts the process (not an exception) on writes to mmapped data
            raise FaissIndexError("this index is memory-mapped read-only; open it writable to change it")

    def add(self, xb: np.ndarray, ids: np.ndarray) -> None:
        """Add n×d vectors under the given int64 ids."""
        self._check_writable()
        xb = _as_matrix(xb, self.plan.d)
        self.index.add_with_ids(xb, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""
        self._check_writable()
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))))

    def _params(self, subset: np.ndarray | None, nprobe: int | None) -> faiss.SearchParameters | None:
        sel = None if subset is None else faiss.IDSelectorBatch(np.asarray(subset, dtype=np.int64))
        if self.plan.kind == "flat":
            if sel is None:
                return None
            flat_params = faiss.SearchParameters()
            flat_params.sel = sel
            return flat_params
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe or self.nprobe
        if sel is not None:
            params.sel = sel
        return params

    def search(
        self, xq: np.ndarray, k: int, subset: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(D, I): nq×k Euclidean distances and ids, nearest first; missing slots have id -1."""
        xq = _as_matrix(xq, self.plan.d)
        if self.ntotal == 0 or k < 1:
            return np.full((len(xq), max(k, 0)), np.inf, np.float32), np.full((len(xq), max(k, 0)), -1)
        D, I = self.index.search(xq, k, params=self._params(subset, nprobe))
        return np.sqrt(np.maximum(D, 0)), I

    def save(self, path: Path) -> None:
        """Atomically write the index file (serialised here, so a full disk raises OSError ENOSPC rather than
        depending on FAISS's C file writer noticing)."""
        atomic_write_bytes(Path(path), faiss.serialize_index(self.index).tobytes())

    @classmethod
    def load(cls, path: Path, plan: IndexPlan, mmap: bool = False) -> VectorIndex:
        """Read an index file (memory-mapped read-only if asked); raise FaissIndexError if unreadable."""
        # Flat: map the codes (MMAP_IFC). IVF: map the inverted lists (MMAP); faiss refuses both flags
        # together on an IVF file ("mmap only supported for File objects").
        flags = 0
        if mmap:
            flags = (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC) if plan.kind == "flat" else faiss.IO_FLAG_MMAP
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise FaissIndexError(f"cannot read FAISS index {path}: {str(e).splitlines()[0]}") from e
        if index.d != plan.d:
            raise FaissIndexError(f"FAISS index {path} has dimension {index.d}, expected {plan.d}")
        return cls(index, plan, mmapped=mmap)


def _as_matrix(x: np.ndarray, d: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != d:
        raise FaissIndexError(f"expected an n×{d} array of vectors, got shape {x.shape}")
    return x


def exact_rerank(
    xq: np.ndarray, cand: np.ndarray, vectors: dict[int, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order candidate ids (nq×k') by exact Euclidean distance using full-precision vectors."""
    D = np.full((len(xq), k), np.inf, np.float32)
    I = np.full((len(xq), k), -1, np.int64)
    for q in range(len(xq)):
        ids = [int(i) for i in cand[q] if i >= 0 and int(i) in vectors]
        if not ids:
            continue
        dist = np.linalg.norm(np.stack([vectors[i] for i in ids]) - xq[q], axis=1)
        order = np.argsort(dist, kind="stable")[:k]
        D[q, : len(order)], I[q, : len(order)] = dist[order], np.asarray(ids)[order]
    return D, I
