"""index.wal: the manifest, and replaying the store's op log into a VectorIndex (atomic writes: test_durable)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from index import wal
from index.faiss_index import IndexPlan, VectorIndex
from index.store import MetadataStore

D = 4


# ---- manifest ----------------------------------------------------------------------------------


def test_manifest_round_trip(tmp_path):
    m = {"seq": 12, "faiss_file": "vectors-12.faiss", "plan": {"kind": "flat", "d": 4}}
    wal.write_manifest(tmp_path / "manifest.json", m)
    assert wal.read_manifest(tmp_path / "manifest.json") == m


def test_crash_leaving_temp_manifest_leaves_old_manifest_readable(tmp_path):
    path = tmp_path / "manifest.json"
    wal.write_manifest(path, {"seq": 1})
    # A process killed between writing the temp file and renaming it leaves this behind:
    (tmp_path / ".manifest.json.abc123.tmp").write_text('{"seq": 2, "faiss_fi')
    assert wal.read_manifest(path) == {"seq": 1}
    wal.write_manifest(path, {"seq": 3})  # and the next write still works
    assert wal.read_manifest(path) == {"seq": 3}


@pytest.mark.parametrize("text", ["", '{"seq": 1', "\x00\x00\x00", "nul"], ids=["empty", "truncated", "zeros", "junk"])
def test_corrupt_manifest_raises_value_error(tmp_path, text):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        wal.read_manifest(path)


@pytest.mark.parametrize("doc", [[1, 2], "seq", 3, None])
def test_manifest_that_is_not_an_object_raises_value_error_naming_the_file(tmp_path, doc):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="manifest.json is not a JSON object"):
        wal.read_manifest(path)


def test_missing_manifest_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        wal.read_manifest(tmp_path / "manifest.json")


# ---- replay ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = MetadataStore(tmp_path / "meta.sqlite")
    yield s
    s.close()


def add(store: MetadataStore, shas: list[str], seed: int = 0) -> list[int]:
    x = np.random.default_rng(seed).normal(size=(len(shas), D)).astype(np.float32)
    return [i for i, _ in store.add(x, [{"sha256": s} for s in shas])]


def ids_in(v: VectorIndex) -> list[int]:
    return sorted(faiss.vector_to_array(v.index.id_map).tolist())


def checkpoint(store: MetadataStore) -> tuple[VectorIndex, int]:
    """A flat index holding every live item now, and the log position it corresponds to."""
    v = VectorIndex.build(IndexPlan("flat", D))
    for ids, x in store.iter_vectors():
        v.add(x, ids)
    return v, store.last_seq()


def test_replay_from_zero_rebuilds_live_items(store):
    ids = add(store, ["a", "b", "c"])
    store.delete(ids[1])
    v = VectorIndex.build(IndexPlan("flat", D))
    assert wal.replay(store, v, 0) == 4
    assert ids_in(v) == [ids[0], ids[2]]
    vec = store.vectors([ids[2]])[ids[2]]
    _, I = v.search(vec[None], 1)
    assert I[0, 0] == ids[2]


def test_replay_applies_adds_and_deletes_after_checkpoint(store):
    old = add(store, ["a", "b", "c"])
    v, seq = checkpoint(store)
    new = add(store, ["d", "e"], seed=1)
    store.delete(old[0])  # in the checkpoint: must be removed
    store.delete(new[1])  # added and deleted after it: must never appear
    assert wal.replay(store, v, seq) == 4
    assert ids_in(v) == sorted([old[1], old[2], new[0]])
    assert v.ntotal == store.count()


def test_replay_with_nothing_after_checkpoint_changes_nothing(store):
    add(store, ["a", "b"])
    v, seq = checkpoint(store)
    assert wal.replay(store, v, seq) == 0
    assert v.ntotal == 2


def test_replay_of_ops_before_checkpoint_seq_is_skipped(store):
    ids = add(store, ["a", "b"])
    v, seq = checkpoint(store)
    store.delete(ids[0])
    assert wal.replay(store, v, seq) == 1  # only the delete; the adds at seq ≤ checkpoint are not re-added
    assert ids_in(v) == [ids[1]]


def test_replay_restores_the_same_search_results_as_a_fresh_build(store):
    add(store, [f"h{i}" for i in range(30)])
    v, seq = checkpoint(store)
    more = add(store, [f"n{i}" for i in range(10)], seed=2)
    for i in more[::3]:
        store.delete(i)
    wal.replay(store, v, seq)
    fresh, _ = checkpoint(store)
    xq = np.random.default_rng(9).normal(size=(5, D)).astype(np.float32)
    np.testing.assert_array_equal(v.search(xq, 8)[1], fresh.search(xq, 8)[1])


def test_replay_after_compacting_the_checkpointed_ops_gives_the_same_index(store):
    old = add(store, ["a", "b", "c"])
    v, seq = checkpoint(store)
    new = add(store, ["d", "e"], seed=1)
    store.delete(old[0])
    store.compact_ops(seq)  # what every checkpoint now does
    assert wal.replay(store, v, seq) == 3  # only the pending ops are left and read
    assert ids_in(v) == sorted([old[1], old[2], *new])
