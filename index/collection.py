"""AFVIndex: a persistent store of vectors and their metadata (FAISS + SQLite + write-ahead log).

It knows nothing of images or models: callers hand it finished vectors (AFV sketches) with records,
and "pins" (model hash, statistics hash, projection spec, image decoding) that name what made the vectors. Opening an
index with a model and sketching images is `service.model_index`; the ingest pipeline is `service.ingest`.

Layout of an index folder: `meta.sqlite` (items, float32 sketches, op log, settings), `manifest.json`
(which FAISS checkpoint is current, the op sequence it contains, its plan), `vectors-<seq>.faiss`
and `LOCK` (one writer process at a time). The SQLite log is the truth; FAISS is rebuilt from it.
A shard (`index.sharding`) is such a folder too, with a `shard` setting saying which one it is.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from durable import no_space
from index import wal
from index.faiss_index import FaissIndexError, IndexPlan, VectorIndex, exact_rerank, plan_index
from index.store import ItemRow, MetadataStore, StoreError, validate_metadata

log = logging.getLogger(__name__)

FORMAT = "afv-index/1"
DB_FILE, MANIFEST_FILE, LOCK_FILE = "meta.sqlite", "manifest.json", "LOCK"
PIN_KEYS = ("model_hash", "stats_hash", "model_name", "projection", "decode")  # what made the vectors
SHARD_KEY = "shard"  # setting of an index made by index.sharding: which shard of which split it is
SAVE_EVERY = 10_000  # logged ops between FAISS checkpoints (replay on open covers the rest)
RERANK_FACTOR = 10  # candidates fetched per wanted neighbour when re-ranking exactly
BRUTE_FORCE_MAX = 2_000  # filters matching at most this many items are searched exactly
DEFAULT_MEMORY_BUDGET = 256 * 2**20


class AFVIndexError(Exception):
    """Base class of index errors."""


class IndexNotFoundError(AFVIndexError, FileNotFoundError):
    """No index in the given folder."""


class IndexExistsError(AFVIndexError, FileExistsError):
    """An index already exists where a new one was to be created."""


class IndexMismatchError(AFVIndexError):
    """The index was built with another model, Fisher statistics or projection."""


class IndexCorruptError(AFVIndexError):
    """Index files are missing or unreadable."""


class IndexReadOnlyError(AFVIndexError):
    """A write was attempted on an index opened read-only."""


class IndexLockedError(AFVIndexError):
    """Another process holds the index open for writing."""


class IndexWriteError(AFVIndexError):
    """Storage refused a write (disk full, I/O error, read-only file system); nothing was half-written.

    `no_space` tells a full disk or quota (ENOSPC, EDQUOT, SQLITE_FULL) from other storage failures.
    """

    def __init__(self, message: str, *, no_space: bool = False):
        super().__init__(message)
        self.no_space = no_space


class IndexFullError(IndexWriteError):
    """A write found no space left (a full disk or quota): the IndexWriteError with `no_space` set."""

    def __init__(self, message: str):
        super().__init__(message, no_space=True)


class ItemNotFoundError(AFVIndexError, KeyError):
    """No item with the given id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "item not found"


class InvalidInputError(AFVIndexError, ValueError):
    """Bad vectors, records or filters passed to the index (or images to the ingest pipeline)."""


@dataclass
class Hit:
    """One search result: external id, Euclidean distance in sketch space and the item's metadata."""

    id: int
    distance: float
    metadata: dict = field(default_factory=dict)


@dataclass
class AddResult:
    """The id an added item got, and whether it was already present (same content hash)."""

    id: int
    duplicate: bool


def _lock(index_dir: Path):
    fd = os.open(index_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexLockedError(f"{index_dir} is open for writing in another process") from None
    return fd


class AFVIndex:
    """A persistent, compressed nearest-neighbour index of vectors with metadata."""

    def __init__(
        self,
        index_dir: Path,
        store: MetadataStore,
        vindex: VectorIndex,
        base_seq: int,
        read_only: bool,
        lock_fd: int | None,
    ):
        self.index_dir, self.store, self.vindex, self.base_seq = index_dir, store, vindex, base_seq
        self.read_only, self._lock_fd = read_only, lock_fd
        self.dim: int = store.get_meta("dim")
        self.kind_request: str = store.get_meta("kind", "auto")
        self.memory_budget: int = store.get_meta("memory_budget")
        self._lock = threading.RLock()
        self._closed = False
        self._deferring = False  # inside `bulk()`: adds go to SQLite only
        self._stale = False  # FAISS lacks stored vectors (added by `bulk`): rebuild before any checkpoint

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        index_dir: str | Path,
        *,
        dim: int,
        pins: dict | None = None,
        kind: str = "auto",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> AFVIndex:
        """Create an empty index of `dim`-d vectors in `index_dir`, recording `pins` (see PIN_KEYS)."""
        index_dir = Path(index_dir)
        if (index_dir / DB_FILE).exists():
            raise IndexExistsError(f"an index already exists in {index_dir}")
        if dim < 1:
            raise InvalidInputError(f"the vector dimension must be positive, got {dim}")
        try:
            plan_index(0, dim, memory_budget, kind)
        except FaissIndexError as e:
            raise InvalidInputError(str(e)) from e
        index_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(index_dir)
        store = MetadataStore(index_dir / DB_FILE)
        pinned = {k: (pins or {}).get(k) for k in PIN_KEYS}
        store.set_meta(
            {"format": FORMAT, "dim": dim, "kind": kind, "memory_budget": memory_budget, **pinned}
            | {"created_at": time.time()}
        )
        self = cls(index_dir, store, VectorIndex.build(IndexPlan("flat", dim)), 0, False, lock_fd)
        self._checkpoint()
        return self

    @classmethod
    def create_like(cls, source: AFVIndex, index_dir: str | Path, settings: dict | None = None) -> AFVIndex:
        """An empty index with the pins, settings and trained FAISS structure (not the vectors) of `source`,
        plus the extra `settings` (e.g. SHARD_KEY): vectors added to it get the distances they get in `source`."""
        self = cls.create(
            index_dir, dim=source.dim, pins=source.pins, kind=source.kind_request, memory_budget=source.memory_budget
        )
        try:
            with source._lock:
                self.vindex = source.vindex.empty_copy()
            if settings:
                self.store.set_meta(settings)
            self._checkpoint()
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def open(cls, index_dir: str | Path, *, read_only: bool = False) -> AFVIndex:
        """Open an index and replay the log; read-only opens take no lock and never write."""
        index_dir = Path(index_dir)
        if not (index_dir / DB_FILE).is_file():
            raise IndexNotFoundError(f"no AFV index in {index_dir} (missing {DB_FILE})")
        lock_fd = None if read_only else _lock(index_dir)
        if not read_only:  # leftovers of a save interrupted by a crash
            for tmp in index_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        try:
            store = _open_store(index_dir, read_only)
            vindex, base_seq = _load_vectors(index_dir, store, read_only)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        self = cls(index_dir, store, vindex, base_seq, read_only, lock_fd)
        if not read_only and store.last_seq() != base_seq:
            self._checkpoint_replayed()
        return self

    @classmethod
    def repair(cls, index_dir: str | Path) -> AFVIndex:
        """Rebuild the FAISS file from the vectors in SQLite (after IndexCorruptError on the FAISS file)."""
        index_dir = Path(index_dir)
        lock_fd = _lock(index_dir)
        try:
            store = _open_store(index_dir, False)
        except BaseException:
            os.close(lock_fd)
            raise
        self = cls(index_dir, store, VectorIndex.build(IndexPlan("flat", store.get_meta("dim"))), 0, False, lock_fd)
        with self._lock:
            self._rebuild(self._wanted_plan())
        return self

    @staticmethod
    def read_pins(index_dir: str | Path) -> dict:
        """The pins of the index in `index_dir`, read without opening its vectors (e.g. before a repair)."""
        index_dir = Path(index_dir)
        if not (index_dir / DB_FILE).is_file():
            raise IndexNotFoundError(f"no AFV index in {index_dir} (missing {DB_FILE})")
        store = _open_store(index_dir, read_only=True)
        try:
            return {k: store.get_meta(k) for k in PIN_KEYS}
        finally:
            store.close()

    @property
    def pins(self) -> dict:
        """What made the stored vectors: {model_hash, stats_hash, model_name, projection, decode}.

        `decode` is None for an index made before image decoding was pinned."""
        with self._lock:
            return {k: self.store.get_meta(k) for k in PIN_KEYS}

    @property
    def shard(self) -> dict | None:
        """Which shard of which split this index is (`index.sharding`), or None for a whole index."""
        with self._lock:
            return self.store.get_meta(SHARD_KEY)

    # -- writes --------------------------------------------------------------------------------

    def add_embedded(self, vectors: np.ndarray, records: list[dict]) -> list[AddResult]:
        """Add vectors with records {name, sha256, size, metadata}; a known sha256 returns its id."""
        vectors = self._as_queries(vectors)
        records = [_check_record(r) for r in records]
        if len(records) != len(vectors):
            raise InvalidInputError(f"{len(vectors)} vectors but {len(records)} records")
        with self._lock:
            self._check_writable()
            self._check_not_shard()
            with self._writing("add to the index"):  # a failed transaction rolls back whole; FAISS is untouched
                results = self.store.add(vectors, records)  # durable (committed) from here on
            new = [(i, rid) for i, (rid, dup) in enumerate(results) if not dup]
            if self._deferring:
                self._stale = self._stale or bool(new)
            else:
                if new:
                    self.vindex.add(vectors[[i for i, _ in new]], np.array([r for _, r in new]))
                self._maybe_checkpoint()
        return [AddResult(int(rid), bool(dup)) for rid, dup in results]

    @contextmanager
    def bulk(self) -> Iterator[AFVIndex]:
        """Add many items with the FAISS structure trained once, at the end, for the final size.

        Inside, `add_embedded` stores rows and vectors durably (SQLite and its log) but leaves FAISS as it is:
        no retraining as the collection grows, no checkpoints, and searches see only what was there before.
        On leaving (also on an error), the structure the final count calls for is trained on a sample of the
        stored vectors and every vector is added (`optimize`). A crash inside loses nothing: the next open
        replays the log, as after any crash."""
        with self._lock:
            self._check_writable()
            self._deferring = True
        try:
            yield self
        finally:
            with self._lock:
                self._deferring = False
                if self._stale:
                    self.optimize()

    def add_items(self, rows: list[ItemRow], vectors: np.ndarray) -> None:
        """Add items as another index stored them (`iter_items`), under their own ids. Logged, not checkpointed:
        `checkpoint()` writes the FAISS file as it is (no retraining, unlike `save`)."""
        vectors = self._as_queries(vectors)
        if len(rows) != len(vectors):
            raise InvalidInputError(f"{len(vectors)} vectors but {len(rows)} items")
        with self._lock:
            self._check_writable()
            with self._writing("add to the index"):
                try:
                    self.store.insert_items(rows, vectors)
                except StoreError as e:
                    raise InvalidInputError(str(e)) from e
            self.vindex.add(vectors, np.array([r.id for r in rows], dtype=np.int64))

    def iter_items(self, batch: int = 10_000) -> Iterator[tuple[list[ItemRow], np.ndarray]]:
        """Every item as stored, with its vector, in id order and batches of at most `batch`."""
        last = -1
        while True:
            with self._lock:
                rows, vectors = self.store.items_after(last, batch)
            if not rows:
                return
            last = rows[-1].id
            yield rows, vectors

    def find_sha256(self, shas: list[str]) -> dict[str, int]:
        """{content hash: id} of the given hashes that are indexed."""
        with self._lock:
            return self.store.ids_by_sha256(list(set(shas)))

    def vectors(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The stored vectors of these ids (unknown ids are left out)."""
        with self._lock:
            return self.store.vectors([int(i) for i in ids])

    def delete(self, id: int) -> bool:
        """Delete an item by id; False if there is no such item."""
        with self._lock:
            self._check_writable()
            with self._writing("delete from the index"):
                if not self.store.delete(int(id)):
                    return False
            self.vindex.remove(np.array([int(id)]))
            self._maybe_checkpoint()
            return True

    # -- reads ---------------------------------------------------------------------------------

    def search(
        self, vectors: np.ndarray, k: int = 10, where: dict | None = None, rerank: bool = False
    ) -> list[list[Hit]]:
        """k nearest items of each query sketch, nearest first (Euclidean distance in sketch space)."""
        xq = self._as_queries(vectors)
        if k < 1:
            raise InvalidInputError(f"k must be ≥ 1, got {k}")
        with self._lock:
            subset = self._filter(where)
            if subset is not None and len(subset) <= BRUTE_FORCE_MAX:
                D, I = exact_rerank(xq, np.tile(subset, (len(xq), 1)), self.store.vectors(subset), k)
            else:
                D, I = self._ann(xq, k, subset, rerank)
            metas = self.store.get_many({int(i) for i in I.ravel() if i >= 0})
        return [
            [Hit(int(i), float(dist), metas[int(i)]) for dist, i in zip(drow, irow) if i >= 0 and int(i) in metas]
            for drow, irow in zip(D, I)
        ]

    def search_any(
        self, vectors: np.ndarray, k: int = 10, where: dict | None = None, rerank: bool = False
    ) -> list[Hit]:
        """k nearest items to any of several sketches of one query (e.g. an image and its mirror image)."""
        return merge_hits(self.search(vectors, k, where, rerank), k)

    def _filter(self, where: dict | None) -> np.ndarray | None:
        if not where:
            return None
        if not isinstance(where, dict):
            raise InvalidInputError("where must be a dict of field → value")
        try:
            return self.store.filter_ids(where)
        except StoreError as e:
            raise InvalidInputError(str(e)) from e

    def _ann(self, xq: np.ndarray, k: int, subset, rerank: bool) -> tuple[np.ndarray, np.ndarray]:
        exact = self.vindex.plan.kind == "flat"
        kk = k if exact or not rerank else k * RERANK_FACTOR
        D, I = self.vindex.search(xq, kk, subset)
        if exact or not rerank:
            return D, I
        return exact_rerank(xq, I, self.store.vectors({int(i) for i in I.ravel() if i >= 0}), k)

    def get(self, id: int) -> dict | None:
        """Metadata of one item (id, name, sha256, size, added_at and user fields), or None."""
        with self._lock:
            return self.store.get(int(id))

    @property
    def count(self) -> int:
        with self._lock:
            return self.store.count()

    def stats(self) -> dict:
        """Size, structure and provenance of the index."""
        with self._lock:
            plan, spec = self.vindex.plan, self.store.get_meta("projection") or {}
            files = list(self.index_dir.glob("vectors-*.faiss"))
            return {
                "count": self.store.count(),
                "ntotal": self.vindex.ntotal,
                "dim": self.dim,
                "kind": plan.kind,
                "kind_requested": self.kind_request,
                "bytes_per_vector": plan.bytes_per_vector,
                "nlist": plan.nlist,
                "pq_bytes": plan.m,
                "nprobe": self.vindex.nprobe,
                "memory_budget": self.memory_budget,
                "model_hash": self.store.get_meta("model_hash"),
                "stats_hash": self.store.get_meta("stats_hash"),
                "model_name": self.store.get_meta("model_name"),
                "mode": spec.get("mode"),
                "seed": spec.get("seed"),
                "normalization": spec.get("normalization"),
                "param_dim": spec.get("param_dim"),
                "index_file_bytes": sum(f.stat().st_size for f in files),
                "pending_ops": self.store.last_seq() - self.base_seq,
                "read_only": self.read_only,
                "mmapped": self.vindex.mmapped,
                "shard": self.store.get_meta(SHARD_KEY),
                "path": str(self.index_dir),
            }

    # -- persistence ---------------------------------------------------------------------------

    def save(self) -> None:
        """Checkpoint the FAISS index (retraining it first if the collection outgrew its structure)."""
        with self._lock:
            self._check_writable()
            with self._writing("checkpoint the index"):  # a failed checkpoint leaves its ops in the log
                wanted = self._wanted_plan()
                if self._stale or _needs_rebuild(self.vindex.plan, wanted, self.store.count()):
                    self._rebuild(wanted)
                else:
                    self._checkpoint()

    def checkpoint(self) -> None:
        """Write the FAISS index as it is (never retrained, unlike `save`) and compact the log it holds."""
        with self._lock:
            self._check_writable()
            with self._writing("checkpoint the index"):
                if self._stale:  # it lacks vectors the log holds: a checkpoint would drop them
                    self._rebuild(self._wanted_plan())
                else:
                    self._checkpoint()

    def optimize(self, kind: str | None = None) -> None:
        """Rebuild the FAISS structure for the current size (or as `kind`) and checkpoint it."""
        with self._lock:
            self._check_writable()
            with self._writing("optimize the index"):
                if kind is not None:
                    self.store.set_meta({"kind": kind})
                    self.kind_request = kind
                self._rebuild(self._wanted_plan())

    def close(self) -> None:
        """Checkpoint (if writable) and release files; idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if not self.read_only and self.store.last_seq() != self.base_seq:
                    self.save()
            finally:
                self._closed = True
                self.store.close()
                if self._lock_fd is not None:
                    os.close(self._lock_fd)

    def __enter__(self) -> AFVIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise AFVIndexError("the index is closed")
        if self.read_only:
            raise IndexReadOnlyError(f"{self.index_dir} was opened read-only")

    def _check_not_shard(self) -> None:
        """A new item's id would be the next of this shard's ids, not of the whole split, and could hash to
        another shard: the split's shards only take the items they were made with."""
        shard = self.store.get_meta(SHARD_KEY)
        if shard is not None:
            raise IndexReadOnlyError(
                f"this index ({self.index_dir.name}) is shard {shard['index']} of {shard['count']} made by "
                "`afv index shard`: add images to the index it was split from, then split that again"
            )

    def _as_queries(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        x = x[None, :] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.dim or not np.isfinite(x).all():
            raise InvalidInputError(f"expected finite n×{self.dim} vectors, got shape {x.shape}")
        return np.ascontiguousarray(x)

    def _wanted_plan(self) -> IndexPlan:
        return plan_index(self.store.count(), self.dim, self.memory_budget, self.kind_request)

    def _maybe_checkpoint(self) -> None:
        if self.store.last_seq() - self.base_seq >= SAVE_EVERY:
            try:
                self.save()
            except IndexWriteError as e:  # the write itself is committed; its op stays in the log (replayed)
                log.warning("checkpoint postponed: %s", e)

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a storage failure inside the block into IndexWriteError (after rolling back SQLite)."""
        try:
            yield
        except (sqlite3.Error, OSError) as e:
            failure = None if isinstance(e, AFVIndexError) else _storage_failure(e)
            if failure is None:
                raise
            if self.store.db.in_transaction:  # SQLite rolls back itself on a full disk, not on every error
                try:
                    self.store.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            cause, no_space = failure
            error = IndexFullError if no_space else IndexWriteError
            raise error(f"cannot {what}: {cause}") from e

    def _rebuild(self, plan: IndexPlan) -> None:
        """Train `plan` on stored vectors, add them all, checkpoint."""
        n = self.store.count()
        if plan.kind != "flat" and n < plan.min_train // 4:
            log.warning("only %d vectors: too few to train %s; keeping a flat index", n, plan.factory)
            plan = IndexPlan("flat", self.dim)
        log.info("building %s index of %d vectors", plan.factory, n)
        seq = self.store.last_seq()
        train = None if plan.kind == "flat" else self.store.sample_vectors(max(plan.min_train, 20_000))
        vindex = VectorIndex.build(plan, train)
        for ids, xb in self.store.iter_vectors():
            vindex.add(xb, ids)
        self.vindex, self._stale = vindex, False
        self._checkpoint(seq)

    def _checkpoint(self, seq: int | None = None) -> None:
        """Write vectors-<seq>.faiss atomically, point the manifest at it, drop older files."""
        seq = self.store.last_seq() if seq is None else seq
        name = f"vectors-{seq}.faiss"
        self.vindex.save(self.index_dir / name)
        wal.write_manifest(
            self.index_dir / MANIFEST_FILE,
            {"format": FORMAT, "faiss_file": name, "seq": seq, "plan": self.vindex.plan.to_dict()},
        )
        for f in self.index_dir.glob("vectors-*.faiss"):
            if f.name != name:
                f.unlink(missing_ok=True)
        self.base_seq = seq
        try:  # the checkpoint is durable: the log rows it holds are never replayed again
            self.store.compact_ops(seq)
        except StoreError as e:  # harmless: they stay skipped, and the next checkpoint deletes them
            log.warning("%s", e)

    def _checkpoint_replayed(self) -> None:
        """Checkpoint right after a writable open replayed a crash's ops, so the next open replays none."""
        try:
            with self._writing("checkpoint the replayed log"):
                self._checkpoint()
        except IndexWriteError as e:  # e.g. a full disk: the log still holds the ops, open anyway
            log.warning("%s: %s", self.index_dir, e)


def merge_hits(lists: list[list[Hit]], k: int) -> list[Hit]:
    """Union of hit lists, each item at its smallest distance, nearest first, at most k."""
    best: dict[int, Hit] = {}
    for hits in lists:
        for h in hits:
            if h.id not in best or h.distance < best[h.id].distance:
                best[h.id] = h
    return sorted(best.values(), key=lambda h: (h.distance, h.id))[:k]


def _storage_failure(e: BaseException) -> tuple[str, bool] | None:
    """(cause, no space?) if `e` or an error it masks is a storage failure; root cause first."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for err in reversed(chain):  # a failed ROLLBACK ("no transaction is active") masks "disk is full"
        if isinstance(err, sqlite3.OperationalError) and "no transaction is active" not in str(err):
            full = getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(err)
            return (f"{err} (no space left on the device)" if full else str(err)), full
        if isinstance(err, OSError) and not isinstance(err, AFVIndexError):
            full = no_space(err)
            return (err.strerror or str(err)) + (" (no space left on the device)" if full else ""), full
    return None


def _needs_rebuild(have: IndexPlan, want: IndexPlan, n: int) -> bool:
    if have.kind == "flat":
        return want.kind != "flat"
    return want.kind == "flat" and n == 0 or want.nlist >= 4 * have.nlist


def _check_record(rec: dict) -> dict:
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or len(rec["sha256"]) < 8:
        raise InvalidInputError("every record needs a 'sha256' content hash string")
    try:
        meta = validate_metadata(rec.get("metadata"))
    except StoreError as e:
        raise InvalidInputError(str(e)) from e
    return {"name": rec.get("name"), "sha256": rec["sha256"], "size": rec.get("size"), "metadata": meta}


def _open_store(index_dir: Path, read_only: bool) -> MetadataStore:
    try:
        store = MetadataStore(index_dir / DB_FILE, read_only=read_only)
        fmt = store.get_meta("format")
    except (StoreError, ValueError) as e:
        raise IndexCorruptError(f"index metadata in {index_dir} is unreadable: {e}") from e
    if fmt != FORMAT:
        store.close()
        raise IndexCorruptError(f"{index_dir / DB_FILE} is not an AFV index (format {fmt!r}, expected {FORMAT!r})")
    return store


def _load_vectors(index_dir: Path, store: MetadataStore, read_only: bool) -> tuple[VectorIndex, int]:
    """Read the FAISS checkpoint named by the manifest and replay the log after it."""
    for attempt in range(3):  # a read-only open may race a writer's checkpoint: then read the manifest again
        try:
            vindex, seq = _load_checkpoint(index_dir, store, read_only)
        except IndexCorruptError:
            if not read_only or attempt == 2:
                raise
            continue
        if store.compacted_seq() <= seq:  # read after the ops: a compaction past `seq` cannot go unseen
            return vindex, seq
        if not read_only:
            raise IndexCorruptError(
                f"the op log of {index_dir} was compacted past its checkpoint (seq {seq}); "
                "AFVIndex.repair(dir) rebuilds it"
            )
    raise IndexCorruptError(f"{index_dir} kept changing while it was opened read-only; try again")


def _load_checkpoint(index_dir: Path, store: MetadataStore, read_only: bool) -> tuple[VectorIndex, int]:
    """One attempt of `_load_vectors`."""
    try:
        manifest = wal.read_manifest(index_dir / MANIFEST_FILE)
        plan, seq, path = IndexPlan(**manifest["plan"]), int(manifest["seq"]), index_dir / manifest["faiss_file"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexCorruptError(f"index manifest {index_dir / MANIFEST_FILE} is unreadable: {e}") from e
    pending = store.last_seq() > seq
    try:
        vindex = VectorIndex.load(path, plan, mmap=read_only and not pending)
    except (FaissIndexError, OSError) as e:
        raise IndexCorruptError(
            f"{e}; AFVIndex.repair(dir) (or `afv index build`) rebuilds it from the stored vectors"
        ) from e
    if pending:
        applied = wal.replay(store, vindex, seq)
        log.info("replayed %d logged operations into %s", applied, path.name)
    if vindex.ntotal != store.count():
        raise IndexCorruptError(
            f"{path.name} holds {vindex.ntotal} vectors but the metadata has "
            f"{store.count()} items; AFVIndex.repair(dir) rebuilds it"
        )
    return vindex, seq
