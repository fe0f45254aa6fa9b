"""Kill a writer process in the middle of adding; the index must reopen consistent with every ack."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import index.collection as collection
from index import AFVIndex, wal
from index.collection import IndexCorruptError
from index.faiss_index import VectorIndex
from index.store import MetadataStore, StoreError

DIM, BATCH = 16, 40

WRITER = r"""
import sys
import numpy as np
import index.collection as collection
from index import AFVIndex

collection.SAVE_EVERY = 90  # checkpoint often, so kills also land during FAISS saves and log compactions
idx = AFVIndex.open(sys.argv[1])
rng = np.random.default_rng(1)
for b in range(10_000):
    xb = rng.normal(size=(%(batch)d, %(dim)d)).astype(np.float32)
    recs = [{"sha256": f"{b:032x}{i:032x}", "metadata": {"batch": b}} for i in range(%(batch)d)]
    ids = [r.id for r in idx.add_embedded(xb, recs)]
    np.save(f"{sys.argv[1]}/ack-{b}.npy", xb)
    print("ACK", b, *ids, flush=True)
""" % {"batch": BATCH, "dim": DIM}  # noqa: UP031 (the script's own f-strings use braces)


def _run_writer_and_kill(index_dir: Path, min_batches: int) -> dict[int, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(index_dir)], stdout=subprocess.PIPE, text=True, env=env)
    acked: dict[int, list[int]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(acked) < min_batches and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            _, b, *ids = line.split()
            acked[int(b)] = [int(i) for i in ids]
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-batch: the writer never pauses between batches
        proc.wait()
    return acked


def test_killed_writer_loses_no_acknowledged_add(tmp_path):
    AFVIndex.create(tmp_path / "idx", dim=DIM).close()
    acked = _run_writer_and_kill(tmp_path / "idx", min_batches=8)
    assert len(acked) >= 8
    with AFVIndex.open(tmp_path / "idx") as idx:
        assert idx.stats()["pending_ops"] == 0 and _ops_rows(tmp_path / "idx") == 0  # replayed, checkpointed
        assert idx.count % BATCH == 0  # a batch is one transaction: all or nothing
        assert idx.vindex.ntotal == idx.count >= BATCH * len(acked)
        for b, ids in acked.items():
            xb = np.load(tmp_path / "idx" / f"ack-{b}.npy") if (tmp_path / "idx" / f"ack-{b}.npy").exists() else None
            assert all(idx.get(i) is not None and idx.get(i)["batch"] == b for i in ids)
            if xb is not None:
                hits = idx.search(xb[:3], k=1)
                assert [h[0].id for h in hits] == ids[:3]
        more = idx.add_embedded(np.ones((1, DIM), np.float32), [{"sha256": "e" * 64}])
        assert not more[0].duplicate
    with AFVIndex.open(tmp_path / "idx") as idx:
        assert idx.get(more[0].id) is not None and idx.vindex.ntotal == idx.count


# ---- checkpoint + compaction of the op log ------------------------------------------------------


def _abandon(idx: AFVIndex) -> None:
    """What kill -9 leaves: no close(), so no checkpoint; only the file handles go."""
    idx.store.close()
    assert idx._lock_fd is not None
    os.close(idx._lock_fd)
    idx._closed = True


def _ops_rows(index_dir: Path) -> int:
    with sqlite3.connect(index_dir / "meta.sqlite") as db:
        return db.execute("SELECT count(*) FROM ops").fetchone()[0]


def _adds(idx: AFVIndex, n: int, seed: int) -> list[int]:
    xb = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return [r.id for r in idx.add_embedded(xb, [{"sha256": f"{seed:032x}{i:032x}"} for i in range(n)])]


def test_every_checkpoint_deletes_the_ops_it_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(collection, "SAVE_EVERY", 25)
    d = tmp_path / "idx"
    with AFVIndex.create(d, dim=DIM) as idx:
        _adds(idx, 20, seed=1)
        assert _ops_rows(d) == 20  # below SAVE_EVERY: still pending
        ids = _adds(idx, 10, seed=2)  # crosses SAVE_EVERY: checkpoint at seq 30
        assert idx.base_seq == 30 and _ops_rows(d) == 0
        idx.delete(ids[0])
        assert _ops_rows(d) == 1 and idx.stats()["pending_ops"] == 1
    assert _ops_rows(d) == 0  # close() checkpoints too
    with AFVIndex.open(d) as idx:
        assert idx.store.last_seq() == 31 and idx.stats()["pending_ops"] == 0 and idx.count == 29
        (new,) = _adds(idx, 1, seed=3)
        assert idx.store.last_seq() == 32 and idx.get(new) is not None


def test_open_after_a_crash_checkpoints_so_the_next_open_replays_nothing(tmp_path, monkeypatch):
    d = tmp_path / "idx"
    idx = AFVIndex.create(d, dim=DIM)
    ids = _adds(idx, 30, seed=1)
    idx.delete(ids[0])
    _abandon(idx)
    assert _ops_rows(d) == 31
    with AFVIndex.open(d, read_only=True) as ro:  # read-only: replays in memory, writes nothing
        assert ro.stats()["pending_ops"] == 31 and ro.count == 29
    assert _ops_rows(d) == 31 and (d / "vectors-0.faiss").exists()
    idx = AFVIndex.open(d)
    assert idx.stats()["pending_ops"] == 0 and idx.base_seq == 31 and _ops_rows(d) == 0
    assert sorted(p.name for p in d.glob("vectors-*.faiss")) == ["vectors-31.faiss"]
    _abandon(idx)
    monkeypatch.setattr(wal, "replay", lambda *a: pytest.fail("nothing should be replayed"))
    with AFVIndex.open(d) as idx:
        assert idx.stats()["pending_ops"] == 0 and idx.vindex.ntotal == idx.count == 29
        assert [h[0].id for h in idx.search(idx.vectors([ids[5]])[ids[5]], k=1)] == [ids[5]]


def test_checkpoint_on_open_that_fails_still_opens_with_the_replayed_ops(tmp_path, monkeypatch):
    d = tmp_path / "idx"
    idx = AFVIndex.create(d, dim=DIM)
    ids = _adds(idx, 10, seed=1)
    _abandon(idx)

    def full_disk(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(VectorIndex, "save", full_disk)
    idx = AFVIndex.open(d)
    assert idx.count == idx.vindex.ntotal == 10 and idx.stats()["pending_ops"] == 10
    assert idx.get(ids[3]) is not None and _ops_rows(d) == 10
    _abandon(idx)
    monkeypatch.undo()
    with AFVIndex.open(d) as idx:
        assert idx.stats()["pending_ops"] == 0 and idx.count == 10


@pytest.mark.parametrize("stage", ["faiss", "manifest", "truncate"])
def test_crash_at_any_stage_of_a_checkpoint_reopens_with_every_acknowledged_write(tmp_path, monkeypatch, stage):
    d = tmp_path / "idx"
    idx = AFVIndex.create(d, dim=DIM)
    ids = _adds(idx, 20, seed=1)
    idx.delete(ids[0])  # seq 21

    def killed(*a):
        raise RuntimeError("killed")

    target = {
        "faiss": (VectorIndex, "save"),
        "manifest": (wal, "write_manifest"),
        "truncate": (MetadataStore, "compact_ops"),
    }
    monkeypatch.setattr(*target[stage], killed)
    with pytest.raises(RuntimeError, match="killed"):
        idx.save()
    _abandon(idx)
    monkeypatch.undo()
    assert _ops_rows(d) == 21  # the log is only truncated after the manifest is durable
    manifest_seq = wal.read_manifest(d / "manifest.json")["seq"]
    assert manifest_seq == (21 if stage == "truncate" else 0)
    with AFVIndex.open(d) as idx:
        assert idx.count == idx.vindex.ntotal == 19 and idx.get(ids[0]) is None
        assert all(idx.get(i) is not None for i in ids[1:])
        assert idx.stats()["pending_ops"] == 0 and _ops_rows(d) == (21 if stage == "truncate" else 0)
        _adds(idx, 1, seed=2)
        idx.save()  # the next checkpoint deletes the rows the interrupted one left
        assert _ops_rows(d) == 0 and idx.store.last_seq() == 22


def test_failed_truncation_is_only_a_warning(tmp_path, monkeypatch, caplog):
    d = tmp_path / "idx"
    with AFVIndex.create(d, dim=DIM) as idx:
        _adds(idx, 5, seed=1)

        def locked(self, seq):
            raise StoreError("cannot compact the op log: database is locked")

        monkeypatch.setattr(MetadataStore, "compact_ops", locked)
        idx.save()
        assert idx.base_seq == 5 and _ops_rows(d) == 5 and "cannot compact" in caplog.text
        monkeypatch.undo()
        _adds(idx, 1, seed=2)
    assert _ops_rows(d) == 0


def test_log_compacted_past_the_manifest_is_reported_as_corrupt(tmp_path):
    d = tmp_path / "idx"
    with AFVIndex.create(d, dim=DIM) as idx:
        _adds(idx, 5, seed=1)
    wal.write_manifest(d / "manifest.json", {**wal.read_manifest(d / "manifest.json"), "seq": 2})
    with pytest.raises(IndexCorruptError, match="compacted past its checkpoint"):
        AFVIndex.open(d)


def test_read_only_open_racing_a_checkpoint_reads_the_manifest_again(tmp_path, monkeypatch):
    d = tmp_path / "idx"
    with AFVIndex.create(d, dim=DIM) as idx:
        _adds(idx, 5, seed=1)
        idx.save()
        stale = wal.read_manifest(d / "manifest.json")
        kept = (d / stale["faiss_file"]).read_bytes()
        _adds(idx, 5, seed=2)
    (d / stale["faiss_file"]).write_bytes(kept)  # the reader read it before the writer unlinked it
    real, calls = wal.read_manifest, []

    def first_stale(path):
        calls.append(path)
        return stale if len(calls) == 1 else real(path)

    monkeypatch.setattr(wal, "read_manifest", first_stale)
    with AFVIndex.open(d, read_only=True) as ro:
        assert len(calls) == 2 and ro.count == ro.vindex.ntotal == 10 and ro.base_seq == 10
