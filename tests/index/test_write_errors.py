"""Storage failures on index writes: a full disk (SQLite's own SQLITE_FULL via max_page_count), injected
SQLite and OS errors (ENOSPC, EROFS) on the store, the FAISS checkpoint and the manifest.

Each becomes `IndexWriteError` (`no_space` set for a full disk), leaves nothing half-written, keeps the
in-memory FAISS index equal to the store, and every acknowledged write survives a reopen.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import durable
import index.collection as collection
import index.faiss_index as faiss_index
import index.wal as wal
from index import AFVIndex, IndexWriteError

DIM = 16


def _records(n: int, start: int = 0) -> list[dict]:
    return [{"name": f"img{i}", "sha256": f"{i:064x}", "size": i} for i in range(start, start + n)]


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def idx(tmp_path):
    index = AFVIndex.create(tmp_path / "idx", dim=DIM)
    index.add_embedded(_vectors(5), _records(5))
    yield index
    if not index._closed:
        index.close()


def _fill_disk(index: AFVIndex) -> None:
    """Make SQLite's database 'full' at its current size (a real SQLITE_FULL on the next growth)."""
    pages = index.store.db.execute("PRAGMA page_count").fetchone()[0]
    index.store.db.execute(f"PRAGMA max_page_count = {pages}")


def _free_disk(index: AFVIndex) -> None:
    index.store.db.execute("PRAGMA max_page_count = 1073741823")


class _FailingDB:
    """A connection whose statements matching `fail_on` raise `error` (the rest pass through)."""

    def __init__(self, db: sqlite3.Connection, fail_on: str, error: Exception):
        self._db, self._fail_on, self._error = db, fail_on, error

    def execute(self, sql: str, *args):
        if self._fail_on in sql:
            raise self._error
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


def test_full_disk_on_add_is_a_no_space_write_error_and_nothing_is_half_written(idx, tmp_path):
    _fill_disk(idx)
    with pytest.raises(IndexWriteError, match="database or disk is full") as e:
        idx.add_embedded(_vectors(300, seed=1), _records(300, start=5))
    assert e.value.no_space
    assert idx.count == 5 and idx.vindex.ntotal == 5  # the store rolled back; FAISS was never touched
    assert idx.find_sha256([f"{5:064x}"]) == {}
    _free_disk(idx)
    added = idx.add_embedded(_vectors(300, seed=1), _records(300, start=5))  # writes recover
    assert idx.count == 305 and idx.vindex.ntotal == 305
    idx.close()
    with AFVIndex.open(tmp_path / "idx") as again:
        assert again.count == 305 and again.vindex.ntotal == 305
        assert again.get(added[-1].id)["name"] == "img304"


def test_failure_inside_the_transaction_rolls_it_back(idx):
    idx.store.db = _FailingDB(idx.store.db, "INSERT INTO vectors", sqlite3.OperationalError("disk I/O error"))
    with pytest.raises(IndexWriteError, match="disk I/O error") as e:
        idx.add_embedded(_vectors(3, seed=2), _records(3, start=5))
    assert not e.value.no_space
    idx.store.db = idx.store.db._db
    assert not idx.store.db.in_transaction
    assert idx.count == 5 and idx.vindex.ntotal == 5
    assert idx.store.db.execute("SELECT count(*) FROM items").fetchone()[0] == 5  # the item row went too


def test_failed_delete_keeps_the_item_in_store_and_faiss(idx):
    target = idx.find_sha256([f"{0:064x}"])[f"{0:064x}"]
    error = sqlite3.OperationalError("attempt to write a readonly database")
    idx.store.db = _FailingDB(idx.store.db, "DELETE FROM items", error)
    with pytest.raises(IndexWriteError, match="readonly database"):
        idx.delete(target)
    idx.store.db = idx.store.db._db
    assert idx.get(target) is not None and idx.vindex.ntotal == 5
    assert idx.search(_vectors(5)[0], k=1)[0][0].id == target


def _failing_faiss_write(monkeypatch, err: int, message: str) -> None:
    """The FAISS checkpoint's file write fails half-way (the temp file got some bytes)."""

    def half_write(path, data: bytes) -> None:
        def write(tmp: str) -> None:
            Path(tmp).write_bytes(data[:11])
            raise OSError(err, message, tmp)

        durable.atomic_write(path, write)

    monkeypatch.setattr(faiss_index, "atomic_write_bytes", half_write)


def _enospc_faiss_write(monkeypatch) -> None:
    _failing_faiss_write(monkeypatch, errno.ENOSPC, "No space left on device")


def test_enospc_on_the_faiss_checkpoint_keeps_the_ops_in_the_log(idx, tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    manifest, pending = (folder / collection.MANIFEST_FILE).read_bytes(), idx.stats()["pending_ops"]
    idx.add_embedded(_vectors(4, seed=3), _records(4, start=5))
    _enospc_faiss_write(monkeypatch)
    with pytest.raises(IndexWriteError, match="No space left on device") as e:
        idx.save()
    assert e.value.no_space
    assert (folder / collection.MANIFEST_FILE).read_bytes() == manifest  # still the old checkpoint
    assert not list(folder.glob(".*.tmp"))  # the half-written temp file is gone
    assert idx.stats()["pending_ops"] == pending + 4 and idx.vindex.ntotal == 9
    with pytest.raises(IndexWriteError):
        idx.close()  # close checkpoints too: it fails the same way, but still releases the files
    monkeypatch.undo()
    with AFVIndex.open(folder) as again:  # the log replays what the checkpoint missed
        assert again.count == 9 and again.vindex.ntotal == 9
        assert again.search(_vectors(4, seed=3)[3], k=1)[0][0].distance < 1e-5


def test_enospc_on_the_manifest_leaves_the_old_checkpoint_current(idx, tmp_path, monkeypatch):
    idx.add_embedded(_vectors(2, seed=4), _records(2, start=5))

    def no_space(path, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(wal, "atomic_write_bytes", no_space)
    with pytest.raises(IndexWriteError) as e:
        idx.save()
    assert e.value.no_space
    monkeypatch.undo()
    idx.close()
    with AFVIndex.open(tmp_path / "idx") as again:
        assert again.count == 7 and again.vindex.ntotal == 7


def test_erofs_on_optimize_is_a_write_error_without_no_space(idx, monkeypatch):
    _failing_faiss_write(monkeypatch, errno.EROFS, "Read-only file system")
    with pytest.raises(IndexWriteError, match="Read-only file system") as e:
        idx.optimize()
    assert not e.value.no_space
    assert idx.count == 5 and idx.vindex.ntotal == 5


def test_a_failed_automatic_checkpoint_does_not_fail_the_committed_add(idx, monkeypatch, caplog):
    monkeypatch.setattr(collection, "SAVE_EVERY", 1)
    _enospc_faiss_write(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="index.collection"):
        result = idx.add_embedded(_vectors(1, seed=5), _records(1, start=5))
    assert "checkpoint postponed" in caplog.text
    assert idx.get(result[0].id) is not None and idx.vindex.ntotal == 6
    assert idx.stats()["pending_ops"] >= 1
