"""AFVIndex on plain vectors: persistence, add/delete/re-add, duplicates, filters, pins, corruption, read-only."""

from __future__ import annotations

import numpy as np
import pytest

from index import (
    AFVIndex,
    IndexCorruptError,
    IndexExistsError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadOnlyError,
    InvalidInputError,
)
from tests.index.pins import PINS

DIM = 32


def _records(n: int, start: int = 0) -> list[dict]:
    return [
        {"name": f"img{i}", "sha256": f"{i:064x}", "size": i, "metadata": {"label": f"c{i % 3}"}}
        for i in range(start, start + n)
    ]


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def built(tmp_path):
    idx = AFVIndex.create(tmp_path / "idx", dim=DIM, pins=PINS)
    xb = _vectors(20)
    results = idx.add_embedded(xb, _records(20))
    yield idx, results, xb
    idx.close()


def test_round_trip_persistence(tmp_path, built):
    idx, results, xb = built
    before = idx.search(xb[:3], k=5)
    idx.close()
    with AFVIndex.open(tmp_path / "idx") as again:
        assert again.count == 20 and again.dim == DIM and again.pins == PINS
        after = again.search(xb[:3], k=5)
        assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]
        assert after[0][0].id == results[0].id and after[0][0].distance < 1e-5
        meta = again.get(results[0].id)
        assert meta["name"] == "img0" and meta["label"] == "c0" and meta["sha256"] == f"{0:064x}"
        assert {"id", "name", "size", "added_at"} <= meta.keys()


def test_pins_are_readable_without_opening_the_vectors(tmp_path, built):
    built[0].close()
    assert AFVIndex.read_pins(tmp_path / "idx") == PINS
    with pytest.raises(IndexNotFoundError):
        AFVIndex.read_pins(tmp_path / "nothing")


def test_add_delete_re_add(built):
    idx, results, xb = built
    victim = results[4].id
    assert idx.delete(victim) and not idx.delete(victim)
    assert idx.get(victim) is None and idx.count == 19
    assert victim not in [h.id for h in idx.search(xb[4], k=20)[0]]
    assert idx.find_sha256([f"{4:064x}"]) == {}
    again = idx.add_embedded(xb[4:5], _records(1, start=4))[0]
    assert not again.duplicate and again.id != victim
    assert idx.search(xb[4], k=1)[0][0].id == again.id


def test_duplicates_return_the_existing_id(built):
    idx, results, xb = built
    dup = idx.add_embedded(_vectors(3, seed=1), [*_records(1, start=2), *_records(1, start=30), *_records(1, start=30)])
    assert dup[0].duplicate and dup[0].id == results[2].id
    assert not dup[1].duplicate and dup[2].duplicate and dup[2].id == dup[1].id
    assert idx.count == 21
    assert idx.find_sha256([f"{2:064x}", f"{30:064x}", "f" * 64]) == {
        f"{2:064x}": results[2].id,
        f"{30:064x}": dup[1].id,
    }


def test_search_filters_on_metadata(built):
    idx, _, xb = built
    hits = idx.search(xb[:1], k=10, where={"label": "c1"})[0]
    assert len(hits) == 7 and all(h.metadata["label"] == "c1" for h in hits)
    assert idx.search(np.zeros(DIM), k=3, where={"label": "no-such"}) == [[]]
    with pytest.raises(InvalidInputError):
        idx.search(np.zeros(DIM), where={"bad field": 1})


def test_bad_inputs_raise_clear_errors(built):
    idx, _, _ = built
    with pytest.raises(InvalidInputError):
        idx.search(np.zeros((1, 7)))
    with pytest.raises(InvalidInputError):
        idx.search(np.zeros(DIM), k=0)
    with pytest.raises(InvalidInputError):
        idx.add_embedded(np.full((1, DIM), np.nan), _records(1, start=50))
    with pytest.raises(InvalidInputError):
        idx.add_embedded(np.zeros((1, DIM)), [{"name": "x"}])
    with pytest.raises(InvalidInputError, match="reserved"):
        idx.add_embedded(np.zeros((1, DIM)), [{"sha256": "0" * 64, "metadata": {"id": 3}}])
    with pytest.raises(InvalidInputError):
        idx.add_embedded(np.zeros((2, DIM)), _records(1, start=60))


def test_create_twice_open_missing_and_second_writer(tmp_path, built):
    with pytest.raises(IndexExistsError):
        AFVIndex.create(tmp_path / "idx", dim=DIM)
    with pytest.raises(IndexNotFoundError):
        AFVIndex.open(tmp_path / "nothing")
    with pytest.raises(IndexLockedError):
        AFVIndex.open(tmp_path / "idx")
    with pytest.raises(InvalidInputError):
        AFVIndex.create(tmp_path / "bad-kind", dim=DIM, kind="hnsw")
    assert not (tmp_path / "bad-kind" / "meta.sqlite").exists()


def test_corrupt_files_give_clear_errors_and_repair(tmp_path, built):
    idx, _, _ = built
    idx.close()
    faiss_file = next((tmp_path / "idx").glob("vectors-*.faiss"))
    faiss_file.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(IndexCorruptError, match="repair"):
        AFVIndex.open(tmp_path / "idx")
    with AFVIndex.repair(tmp_path / "idx") as fixed:
        assert fixed.count == 20 and fixed.vindex.ntotal == 20
    (tmp_path / "idx" / "meta.sqlite").write_bytes(b"not a database" * 1000)
    for f in (tmp_path / "idx").glob("meta.sqlite-*"):
        f.unlink()
    with pytest.raises(IndexCorruptError):
        AFVIndex.open(tmp_path / "idx")


def test_read_only_open_is_memory_mapped_and_refuses_writes(tmp_path, built):
    idx, results, xb = built
    idx.close()
    with AFVIndex.open(tmp_path / "idx", read_only=True) as ro:
        assert ro.stats()["mmapped"] and ro.count == 20
        assert ro.search(xb[1], k=1)[0][0].id == results[1].id
        with pytest.raises(IndexReadOnlyError):
            ro.delete(results[1].id)
        with pytest.raises(IndexReadOnlyError):
            ro.add_embedded(xb[:1], _records(1, start=99))


@pytest.mark.slow  # PQ training: < 1 s on an idle core, ~30 s on this loaded 2-core machine
def test_auto_kind_switches_to_ivfpq_and_back_through_save(tmp_path, monkeypatch):
    import index.faiss_index as fi

    monkeypatch.setattr(fi, "MIN_TRAIN", 1_000)  # keep training small for the test
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32)).astype(np.float32)
    xb = (centers[rng.integers(0, 50, 4_000)] + 0.1 * rng.normal(size=(4_000, 32))).astype(np.float32)
    recs = [{"sha256": f"{i:064x}", "metadata": {}} for i in range(len(xb))]
    with AFVIndex.create(tmp_path / "big", dim=32, memory_budget=2**17) as idx:
        ids = [r.id for r in idx.add_embedded(xb, recs)]
        idx.save()
        s = idx.stats()
        assert s["kind"] in ("ivfpq", "opq-ivfpq") and s["bytes_per_vector"] < 4 * 32
        hits = idx.search(xb[:50], k=1, rerank=True)
        assert np.mean([h[0].id == i for h, i in zip(hits, ids[:50])]) >= 0.9
    with AFVIndex.open(tmp_path / "big") as again:
        assert again.stats()["kind"] == s["kind"] and again.count == 4_000


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, DIM)).astype(np.float32)
    return (centers[rng.integers(0, 50, n)] + 0.1 * rng.normal(size=(n, DIM))).astype(np.float32)


def test_a_bulk_load_trains_once_for_the_final_size_and_holds_every_vector(tmp_path, monkeypatch):
    import index.collection as coll
    import index.faiss_index as fi

    monkeypatch.setattr(fi, "MIN_TRAIN", 1_000)
    monkeypatch.setattr(coll, "SAVE_EVERY", 500)  # outside `bulk`, these adds would retrain as they grow
    builds: list[str] = []
    build = fi.VectorIndex.build
    monkeypatch.setattr(
        fi.VectorIndex,
        "build",
        staticmethod(lambda plan, train=None: builds.append(plan.factory) or build(plan, train)),
    )
    xb = _clustered(4_000)
    with AFVIndex.create(tmp_path / "big", dim=DIM, pins=PINS, memory_budget=2**17) as idx:
        builds.clear()  # the empty flat index of `create`
        with idx.bulk():
            ids = [
                r.id
                for start in range(0, 4_000, 500)
                for r in idx.add_embedded(xb[start : start + 500], _records(500, start))
            ]
            assert builds == [] and idx.search(xb[:1], k=1) == [[]]  # FAISS untouched inside
        assert builds == [fi.plan_index(4_000, DIM, 2**17).factory]  # one structure, for the final size
        hits = idx.search(xb[:50], k=1, rerank=True)
        assert np.mean([h[0].id == i for h, i in zip(hits, ids[:50])]) >= 0.9
    with AFVIndex.open(tmp_path / "big") as again:
        assert again.count == 4_000 and again.stats()["kind"] == "opq-ivfpq"


def test_a_bulk_load_left_by_an_error_still_indexes_what_it_stored(built):
    idx, _, _ = built
    xb = _vectors(10, seed=3)
    with pytest.raises(RuntimeError, match="source failed"):
        with idx.bulk():
            new = idx.add_embedded(xb, _records(10, start=100))
            raise RuntimeError("source failed")
    assert [h[0].id for h in idx.search(xb, k=1)] == [r.id for r in new]


def test_a_crash_inside_a_bulk_load_loses_nothing_it_stored(tmp_path, built):
    import shutil

    idx, _, _ = built
    idx.save()
    xb = _vectors(15, seed=4)
    with idx.bulk():
        new = idx.add_embedded(xb, _records(15, start=200))
        shutil.copytree(idx.index_dir, tmp_path / "crashed")  # the files as a crash here would leave them
    with AFVIndex.open(tmp_path / "crashed") as after:
        assert after.count == 35
        assert [h[0].id for h in after.search(xb, k=1)] == [r.id for r in new]
