"""SQLite store beside the FAISS file: item metadata, full-precision sketches and the operation log.

Tables: `items` (id, name, sha256 unique, size, added_at, user JSON), `vectors` (id, float32 blob),
`ops` (seq, op 'add'|'del', item id: the write-ahead log the FAISS checkpoint is replayed from; the
rows a durable checkpoint holds are deleted by `compact_ops`) and `meta` (key → JSON: model hash,
projection, index plan, …). Each batch is one transaction, committed with synchronous=FULL before
the caller is answered, so an acknowledged add survives a crash.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import numpy as np

RESERVED = ("id", "name", "sha256", "size", "added_at")
COMPACTED_KEY = "ops_compacted_seq"  # meta: ops at or below it were deleted after a checkpoint
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, sha256 TEXT NOT NULL UNIQUE,
    size INTEGER, added_at REAL NOT NULL, metadata TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL,
    item_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(ValueError):
    """Invalid metadata, filter or an unreadable database."""


class ItemRow(NamedTuple):
    """One item exactly as stored (metadata as its JSON text): what copying an item to another index keeps."""

    id: int
    name: str | None
    sha256: str
    size: int | None
    added_at: float
    metadata: str


def _check_field(name: str) -> str:
    if not isinstance(name, str) or not _FIELD.match(name):
        raise StoreError(f"invalid metadata field name {name!r} (letters, digits, _; ≤ 64 chars)")
    return name


def _row_to_dict(row: tuple) -> dict:
    id_, name, sha, size, added, meta = row
    return {**json.loads(meta), "id": id_, "name": name, "sha256": sha, "size": size, "added_at": added}


def _read_only_uri(path: Path) -> str:
    """SQLite URI for reading. In a folder this process cannot write (a read-only mount, replicas sharing
    one index), a WAL database cannot create its `-shm` file, so it is opened `immutable`: that is only
    safe when every write has been checkpointed into the database file, which is checked here."""
    uri = f"file:{quote(str(path))}?mode=ro"
    if os.access(path.parent, os.W_OK):
        return uri
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreError(
            f"{path} has writes not yet checkpointed into it ({wal.name}) and its folder is read-only: "
            "open the index writable once (afv index add/build, or serve without --read-only), then again"
        )
    return uri + "&immutable=1"


class MetadataStore:
    """One SQLite database: items, their vectors, the op log and index-level settings."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path, self.read_only = Path(path), read_only
        try:
            if read_only:
                self.db = sqlite3.connect(_read_only_uri(self.path), uri=True, check_same_thread=False)
            else:
                self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(SCHEMA)
            self.db.execute("SELECT count(*) FROM items").fetchone()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot read metadata database {self.path}: {e}") from e

    def close(self) -> None:
        self.db.close()

    # -- settings --------------------------------------------------------------------------------

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, values: dict) -> None:
        with self._tx():
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
            )

    # -- writes ----------------------------------------------------------------------------------

    def _tx(self):
        return _Transaction(self.db)

    def add(self, vectors: np.ndarray, records: list[dict]) -> list[tuple[int, bool]]:
        """Insert records with their vectors in one transaction; (id, duplicate) per record.

        A record whose sha256 is already stored (or repeated in the batch) returns the existing id.
        """
        out: list[tuple[int, bool]] = []
        now = time.time()
        with self._tx():
            for vec, rec in zip(vectors, records):
                sha = rec["sha256"]
                row = self.db.execute("SELECT id FROM items WHERE sha256 = ?", (sha,)).fetchone()
                if row is not None:
                    out.append((row[0], True))
                    continue
                cur = self.db.execute(
                    "INSERT INTO items (name, sha256, size, added_at, metadata) VALUES (?, ?, ?, ?, ?)",
                    (rec.get("name"), sha, rec.get("size"), now, json.dumps(rec.get("metadata") or {})),
                )
                id_ = cur.lastrowid
                assert id_ is not None  # set by every successful INSERT
                self.db.execute("INSERT INTO vectors VALUES (?, ?)", (id_, np.asarray(vec, dtype=np.float32).tobytes()))
                self.db.execute("INSERT INTO ops (op, item_id) VALUES ('add', ?)", (id_,))
                out.append((id_, False))
        return out

    def insert_items(self, rows: list[ItemRow], vectors: np.ndarray) -> None:
        """Insert items under their own ids (logged as adds) in one transaction; StoreError if an id or
        content hash is already stored (nothing is inserted then)."""
        try:
            with self._tx():
                self.db.executemany(
                    "INSERT INTO items (id, name, sha256, size, added_at, metadata) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
                self.db.executemany(
                    "INSERT INTO vectors VALUES (?, ?)",
                    [(r.id, np.asarray(v, dtype=np.float32).tobytes()) for r, v in zip(rows, vectors)],
                )
                self.db.executemany("INSERT INTO ops (op, item_id) VALUES ('add', ?)", [(r.id,) for r in rows])
        except sqlite3.IntegrityError as e:
            raise StoreError(f"cannot insert items with their ids into {self.path}: {e}") from e

    def delete(self, id_: int) -> bool:
        """Delete an item and its vector (logged); False if it does not exist."""
        with self._tx():
            cur = self.db.execute("DELETE FROM items WHERE id = ?", (int(id_),))
            if cur.rowcount == 0:
                return False
            self.db.execute("DELETE FROM vectors WHERE id = ?", (int(id_),))
            self.db.execute("INSERT INTO ops (op, item_id) VALUES ('del', ?)", (int(id_),))
        return True

    # -- reads -----------------------------------------------------------------------------------

    def get(self, id_: int) -> dict | None:
        row = self.db.execute(
            "SELECT id, name, sha256, size, added_at, metadata FROM items WHERE id = ?", (int(id_),)
        ).fetchone()
        return None if row is None else _row_to_dict(row)

    def get_many(self, ids: Iterable[int]) -> dict[int, dict]:
        ids = [int(i) for i in ids]
        out: dict[int, dict] = {}
        for chunk in _chunks(ids, 900):
            q = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT id, name, sha256, size, added_at, metadata FROM items WHERE id IN ({q})", chunk
            ):
                out[row[0]] = _row_to_dict(row)
        return out

    def find_sha256(self, sha: str) -> int | None:
        row = self.db.execute("SELECT id FROM items WHERE sha256 = ?", (sha,)).fetchone()
        return None if row is None else row[0]

    def ids_by_sha256(self, shas: list[str]) -> dict[str, int]:
        """{content hash: id} of the given hashes that are stored (one query per 900 hashes)."""
        found: dict[str, int] = {}
        for chunk in _chunks(shas, 900):
            q = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT sha256, id FROM items WHERE sha256 IN ({q})", chunk))
        return found

    def has_sha256(self, shas: list[str]) -> set[str]:
        return set(self.ids_by_sha256(shas))

    def vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for chunk in _chunks([int(i) for i in ids], 900):
            q = ",".join("?" * len(chunk))
            for id_, blob in self.db.execute(f"SELECT id, vec FROM vectors WHERE id IN ({q})", chunk):
                out[id_] = np.frombuffer(blob, dtype=np.float32)
        return out

    def iter_vectors(self, batch: int = 10_000):
        """Yield (ids, n×d vectors) of all live items in id order."""
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT id, vec FROM vectors WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield (
                np.array([r[0] for r in rows], dtype=np.int64),
                np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]),
            )

    def items_after(self, last_id: int, limit: int) -> tuple[list[ItemRow], np.ndarray]:
        """Up to `limit` items with ids above `last_id`, in id order, as stored, with their n×d vectors."""
        rows = self.db.execute(
            "SELECT i.id, i.name, i.sha256, i.size, i.added_at, i.metadata, v.vec FROM items i "
            "JOIN vectors v ON v.id = i.id WHERE i.id > ? ORDER BY i.id LIMIT ?",
            (int(last_id), int(limit)),
        ).fetchall()
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [ItemRow(*r[:-1]) for r in rows], np.stack([np.frombuffer(r[-1], dtype=np.float32) for r in rows])

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        ids = [r[0] for r in self.db.execute("SELECT id FROM vectors")]
        pick = np.random.default_rng(seed).permutation(len(ids))[:n]
        got = self.vectors([ids[i] for i in pick])
        return np.stack(list(got.values())) if got else np.zeros((0, 0), np.float32)

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def last_seq(self) -> int:
        """The highest op sequence number ever logged (AUTOINCREMENT keeps it after compaction)."""
        return self.db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM ops), 0),"
            " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'ops'), 0))"
        ).fetchone()[0]

    def ops_since(self, seq: int) -> list[tuple[int, str, int]]:
        """Logged ops after `seq`, in order: a range search on the primary key, so only pending rows are read."""
        return self.db.execute("SELECT seq, op, item_id FROM ops WHERE seq > ? ORDER BY seq", (seq,)).fetchall()

    def compact_ops(self, seq: int) -> int:
        """Delete the logged ops at or below `seq` (held by a durable checkpoint); returns rows deleted."""
        seq = max(int(seq), self.compacted_seq())
        try:
            with self._tx():
                cur = self.db.execute("DELETE FROM ops WHERE seq <= ?", (seq,))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (COMPACTED_KEY, json.dumps(seq)))
        except sqlite3.Error as e:
            raise StoreError(f"cannot compact the op log of {self.path}: {e}") from e
        return cur.rowcount

    def compacted_seq(self) -> int:
        """The sequence number up to which the op log was deleted (0 if never compacted)."""
        return int(self.get_meta(COMPACTED_KEY, 0))

    def filter_ids(self, where: dict) -> np.ndarray:
        """Ids of items whose fields equal the given values (a list value means 'any of')."""
        clauses: list[str] = []
        params: list[str | int | float | bool] = []
        for field, value in where.items():
            col = field if field in RESERVED else f"json_extract(metadata, '$.{_check_field(field)}')"
            values = value if isinstance(value, (list, tuple)) else [value]
            if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
                raise StoreError(f"filter on {field!r}: values must be strings, numbers or booleans")
            clauses.append(f"{col} IN ({','.join('?' * len(values))})")
            params.extend(values)
        sql = "SELECT id FROM items" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return np.array([r[0] for r in self.db.execute(sql, params)], dtype=np.int64)


def validate_metadata(meta: dict | None) -> dict:
    """User metadata: a JSON object whose keys are simple names and not reserved."""
    meta = meta or {}
    if not isinstance(meta, dict):
        raise StoreError("metadata must be a JSON object")
    for key in meta:
        _check_field(key)
        if key in RESERVED:
            raise StoreError(f"metadata field {key!r} is reserved ({', '.join(RESERVED)})")
    try:
        json.dumps(meta, allow_nan=False)  # NaN/Infinity are not JSON: SQLite's json_extract would fail
    except (TypeError, ValueError) as e:
        raise StoreError(f"metadata is not JSON-serialisable: {e}") from e
    return meta


def _chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
