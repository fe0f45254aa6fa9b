"""index.sharding: an index split by id hash answers as the whole index did (flat and IVF-PQ sources)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import index.collection as collection
from index import AFVIndex, IndexExistsError, IndexReadOnlyError, InvalidInputError
from index.collection import merge_hits
from index.faiss_index import IndexPlan, VectorIndex
from index.sharding import LAYOUT_FILE, shard_of, split_index
from tests.index.pins import PINS

DIM = 32


def _records(n: int) -> list[dict]:
    return [{"name": f"img{i}", "sha256": f"{i:064x}", "size": i, "metadata": {"label": f"c{i % 3}"}} for i in range(n)]


def _source(folder, n: int, kind: str = "auto", delete_every: int = 0):
    """An index of n random vectors (every `delete_every`-th deleted again, so ids have gaps), closed."""
    xb = np.random.default_rng(0).random((n, DIM), dtype=np.float32)
    with AFVIndex.create(folder, dim=DIM, pins=PINS, kind=kind) as idx:
        ids = [r.id for r in idx.add_embedded(xb, _records(n))]
        for i in ids[::delete_every] if delete_every else []:
            idx.delete(i)
        idx.save()  # trains IVF-PQ when asked for and the collection is large enough
    return xb


def _snapshot(folder) -> dict:
    """Size and time of each file, but SQLite's shared-memory file, which every reader of a WAL database maps."""
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if not f.name.endswith("-shm")}


def _merged(shards: list[AFVIndex], xq: np.ndarray, k: int, **kw) -> list[list[tuple[int, float]]]:
    """What a router answers: each shard's top k, merged by distance (ties by id)."""
    per_shard = [s.search(xq, k, **kw) for s in shards]
    return [[(h.id, h.distance) for h in merge_hits([hits[q] for hits in per_shard], k)] for q in range(len(xq))]


def _single(idx: AFVIndex, xq: np.ndarray, k: int, **kw) -> list[list[tuple[int, float]]]:
    return [[(h.id, h.distance) for h in merge_hits([hits], k)] for hits in idx.search(xq, k, **kw)]


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    xb = _source(root / "src", 300, delete_every=7)
    split = split_index(root / "src", root / "out", 3)
    return root, xb, split


@pytest.fixture(scope="module")
def ivfpq(tmp_path_factory):
    root = tmp_path_factory.mktemp("ivfpq")
    xb = _source(root / "src", 3000, kind="ivfpq")
    split = split_index(root / "src", root / "out", 3)
    return root, xb, split


def test_every_item_is_in_exactly_the_shard_its_id_hashes_to_with_its_record(flat):
    root, _, split = flat
    with AFVIndex.open(root / "src", read_only=True) as src:
        records = {rows.id: rows for batch, _ in src.iter_items() for rows in batch}
        vectors = src.vectors(list(records))
    seen: dict[int, int] = {}
    for k, folder in enumerate(split.folders):
        assert folder == root / "out" / f"shard-{k:03d}"
        with AFVIndex.open(folder, read_only=True) as shard:
            assert shard.pins == PINS and shard.shard == {
                "index": k,
                "count": 3,
                "split": split.split,
                "hash": "splitmix64",
            }
            for batch, vecs in shard.iter_items():
                for row, vec in zip(batch, vecs):
                    assert row.id not in seen and row == records[row.id]  # same id, name, hash, time, metadata
                    assert shard_of([row.id], 3)[0] == k and np.array_equal(vec, vectors[row.id])
                    seen[row.id] = k
            assert shard.count == split.counts[k] and shard.stats()["ntotal"] == split.counts[k]
    assert set(seen) == set(records) and len(records) == 300 - 300 // 7 - 1
    assert min(split.counts) > 60  # the hash spreads ids evenly enough


@pytest.mark.parametrize("k", [1, 5, 40, 150, 400])
def test_merged_shards_answer_as_the_flat_index(flat, k):
    root, xb, split = flat
    xq = np.concatenate([xb[:10], np.random.default_rng(1).random((10, DIM), dtype=np.float32)])
    shards = [AFVIndex.open(f, read_only=True) for f in split.folders]
    with AFVIndex.open(root / "src", read_only=True) as src:
        assert _merged(shards, xq, k) == _single(src, xq, k)
        where = {"label": "c1"}
        assert _merged(shards, xq, k, where=where) == _single(src, xq, k, where=where)
    assert max(split.counts) < 150 < 400  # k above one shard's count, and above the total
    for s in shards:
        s.close()


def test_ivfpq_shards_keep_the_trained_structure_and_the_distances(ivfpq):
    root, xb, split = ivfpq
    shards = [AFVIndex.open(f, read_only=True) for f in split.folders]
    with AFVIndex.open(root / "src", read_only=True) as src:
        plan = src.vindex.plan
        assert plan.kind == "ivfpq" and plan.nlist > 1
        src_ivf = faiss.downcast_index(faiss.extract_index_ivf(src.vindex.index))
        for s in shards:
            assert s.vindex.plan == plan and s.stats()["kind"] == "ivfpq"
            ivf = faiss.downcast_index(faiss.extract_index_ivf(s.vindex.index))
            assert np.array_equal(
                ivf.quantizer.reconstruct_n(0, plan.nlist), src_ivf.quantizer.reconstruct_n(0, plan.nlist)
            )
            assert np.array_equal(faiss.vector_to_array(ivf.pq.centroids), faiss.vector_to_array(src_ivf.pq.centroids))
        xq = np.concatenate([xb[::150], np.random.default_rng(2).random((20, DIM), dtype=np.float32)])
        for k in (1, 10, 100, 1500):  # 1500: more than one shard holds
            single, merged = _single(src, xq, k), _merged(shards, xq, k)
            assert [[i for i, _ in q] for q in merged] == [[i for i, _ in q] for q in single]
            np.testing.assert_array_equal([d for q in merged for _, d in q], [d for q in single for _, d in q])
    assert max(split.counts) < 1500
    for s in shards:
        s.close()


def test_opq_structure_is_copied_too():
    xb = np.random.default_rng(0).random((1000, DIM), dtype=np.float32)
    plan = IndexPlan("opq-ivfpq", DIM, nlist=16, m=4, nprobe=16)  # every list probed: exact over the codes
    source = VectorIndex.build(plan, xb)
    source.add(xb, np.arange(1000))
    copy = source.empty_copy()
    assert copy.ntotal == 0 and source.ntotal == 1000  # the source keeps its vectors
    ids = np.arange(1, 1000, 2)
    copy.add(xb[ids], ids)
    D, I = copy.search(xb[:5], 5)
    D_src, I_src = source.search(xb[:5], 1000)
    for q in range(5):  # the copy's hits are the source's odd ids, at the same distances
        odd = [(i, d) for i, d in zip(I_src[q], D_src[q]) if i % 2]
        assert sorted(zip(I[q], D[q]), key=lambda h: (h[1], h[0])) == sorted(odd, key=lambda h: (h[1], h[0]))[:5]


def test_source_is_never_written_and_shards_open_read_only(flat):
    root, _, split = flat
    before = _snapshot(root / "src")
    again = split_index(root / "src", root / "again", 2)
    assert _snapshot(root / "src") == before
    for folder in again.folders:  # everything is in the database file: servable from a read-only mount
        wal = folder / "meta.sqlite-wal"
        assert not wal.exists() or wal.stat().st_size == 0
    for folder in split.folders + again.folders:
        with AFVIndex.open(folder, read_only=True) as shard:
            assert shard.read_only and shard.stats()["mmapped"]  # a clean checkpoint: nothing left to replay
    assert sorted(p.name for p in (root / "out").iterdir()) == ["shard-000", "shard-001", "shard-002", LAYOUT_FILE]


def test_refuses_a_non_empty_output_a_folder_inside_the_source_and_no_shards(flat, tmp_path):
    root, _, _ = flat
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(IndexExistsError, match="not empty"):
        split_index(root / "src", tmp_path / "full", 2)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    with pytest.raises(InvalidInputError, match="inside the index"):
        split_index(root / "src", root / "src" / "shards", 2)
    with pytest.raises(InvalidInputError, match="at least 1"):
        split_index(root / "src", tmp_path / "none", 0)
    (tmp_path / "empty").mkdir()
    assert sum(split_index(root / "src", tmp_path / "empty", 1).counts) == 300 - 300 // 7 - 1


def test_a_failed_split_leaves_no_shard_folder(flat, tmp_path, monkeypatch):
    root, _, _ = flat
    calls = []

    def fail_on_third(self, rows, vectors):
        calls.append(len(rows))
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return add_items(self, rows, vectors)

    add_items = collection.AFVIndex.add_items
    monkeypatch.setattr(collection.AFVIndex, "add_items", fail_on_third)
    with pytest.raises(OSError):
        split_index(root / "src", tmp_path / "out", 3, batch=50)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_shard_refuses_new_items_but_allows_deletes(flat, tmp_path):
    root, _, split = flat
    import shutil

    shutil.copytree(split.folders[0], tmp_path / "shard")
    with AFVIndex.open(tmp_path / "shard") as shard:
        with pytest.raises(IndexReadOnlyError, match="shard 0 of 3"):
            shard.add_embedded(np.zeros((1, DIM), np.float32), [{"sha256": "f" * 64}])
        first = next(shard.iter_items(1))[0][0].id
        assert shard.delete(first) and shard.get(first) is None


def test_shard_of_is_splitmix64_of_the_id():
    def reference(i: int, n: int) -> int:  # the published splitmix64 finaliser, on Python integers
        mask = (1 << 64) - 1
        z = (i + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return (z ^ (z >> 31)) % n

    ids = [0, 1, 2, 3, 1000, 2**31, 2**40 + 7, 2**63 - 1]
    for n in (1, 2, 3, 7, 64):
        assert shard_of(ids, n).tolist() == [reference(i, n) for i in ids]
    counts = np.bincount(shard_of(np.arange(1, 30_001), 3), minlength=3)
    assert counts.min() > 9_700  # consecutive ids spread evenly
