"""MetadataStore directly: items, vectors, duplicates, filters, settings, the op log and metadata rules."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index.store import RESERVED, MetadataStore, StoreError, validate_metadata

D = 4


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def rec(sha: str, name: str | None = None, size: int | None = None, **metadata) -> dict:
    return {"sha256": sha, "name": name, "size": size, "metadata": metadata}


@pytest.fixture
def store(tmp_path: Path):
    s = MetadataStore(tmp_path / "meta.sqlite")
    yield s
    s.close()


@pytest.fixture
def animals(store: MetadataStore) -> tuple[MetadataStore, list[int], np.ndarray]:
    """Four items with kind, legs, pet and (some) weight in their metadata."""
    xb = vecs(4)
    ids = [
        i
        for i, _ in store.add(
            xb,
            [
                rec("s0", "tom.png", 100, kind="cat", legs=4, pet=True, weight=4.5),
                rec("s1", "rex.png", 200, kind="dog", legs=4, pet=True, weight=30.0),
                rec("s2", "tweety.png", 300, kind="bird", legs=2, pet=True),
                rec("s3", "wolf.png", 400, kind="dog", legs=4, pet=False),
            ],
        )
    ]
    return store, ids, xb


# ---- items -------------------------------------------------------------------------------------


def test_add_returns_new_ids_and_get_returns_record_with_metadata(store):
    out = store.add(vecs(2), [rec("a", "a.png", 10, colour="red"), rec("b", "b.png", 20)])
    assert [dup for _, dup in out] == [False, False]
    (ia, _), (ib, _) = out
    assert ia != ib
    got = store.get(ia)
    assert got["id"] == ia and got["name"] == "a.png" and got["sha256"] == "a" and got["size"] == 10
    assert got["colour"] == "red"
    assert isinstance(got["added_at"], float)
    assert "colour" not in store.get(ib)
    assert store.count() == 2


def test_get_unknown_id_is_none(store):
    assert store.get(12345) is None


def test_get_many_returns_known_ids_only(animals):
    store, ids, _ = animals
    got = store.get_many([ids[0], ids[2], 999])
    assert set(got) == {ids[0], ids[2]}
    assert got[ids[2]]["name"] == "tweety.png"


def test_get_many_handles_more_ids_than_one_sql_chunk(store):
    n = 2000  # the store queries in chunks of 900 parameters
    out = store.add(vecs(n), [rec(f"h{i}") for i in range(n)])
    ids = [i for i, _ in out]
    assert set(store.get_many(ids)) == set(ids)
    assert set(store.vectors(ids)) == set(ids)
    assert store.has_sha256([f"h{i}" for i in range(n)]) == {f"h{i}" for i in range(n)}


def test_duplicate_sha256_returns_existing_id_and_stores_nothing(store):
    ((first, dup0),) = store.add(vecs(1, seed=1), [rec("same", "first.png")])
    ((again, dup1),) = store.add(vecs(1, seed=2), [rec("same", "second.png")])
    assert (dup0, dup1) == (False, True)
    assert again == first
    assert store.count() == 1
    assert store.get(first)["name"] == "first.png"
    np.testing.assert_array_equal(store.vectors([first])[first], vecs(1, seed=1)[0])
    assert store.last_seq() == 1  # the duplicate is not logged


def test_duplicate_sha256_within_one_batch_returns_first_id(store):
    out = store.add(vecs(3), [rec("x"), rec("y"), rec("x")])
    assert out[2] == (out[0][0], True)
    assert store.count() == 2


def test_delete_removes_item_vector_and_sha256(animals):
    store, ids, _ = animals
    assert store.delete(ids[1]) is True
    assert store.get(ids[1]) is None
    assert store.vectors([ids[1]]) == {}
    assert store.has_sha256(["s1", "s0"]) == {"s0"}
    assert store.find_sha256("s1") is None
    assert store.count() == 3


def test_delete_unknown_id_is_false_and_not_logged(store):
    before = store.last_seq()
    assert store.delete(777) is False
    assert store.last_seq() == before


def test_deleted_sha256_can_be_added_again_under_a_new_id(store):
    ((first, _),) = store.add(vecs(1), [rec("h")])
    store.delete(first)
    ((second, dup),) = store.add(vecs(1), [rec("h")])
    assert dup is False
    assert second > first  # ids are never reused (AUTOINCREMENT): the log stays unambiguous


def test_has_sha256_and_find_sha256(animals):
    store, ids, _ = animals
    assert store.has_sha256(["s0", "s3", "nope"]) == {"s0", "s3"}
    assert store.has_sha256([]) == set()
    assert store.find_sha256("s2") == ids[2]
    assert store.find_sha256("nope") is None


# ---- filters -----------------------------------------------------------------------------------


def test_filter_ids_by_one_metadata_value(animals):
    store, ids, _ = animals
    assert sorted(store.filter_ids({"kind": "dog"})) == [ids[1], ids[3]]


def test_filter_ids_list_value_means_any_of(animals):
    store, ids, _ = animals
    assert sorted(store.filter_ids({"kind": ["cat", "bird"]})) == [ids[0], ids[2]]


def test_filter_ids_combines_fields_with_and(animals):
    store, ids, _ = animals
    assert list(store.filter_ids({"kind": "dog", "pet": True})) == [ids[1]]
    assert list(store.filter_ids({"kind": "dog", "pet": False})) == [ids[3]]


def test_filter_ids_numbers_and_reserved_columns(animals):
    store, ids, _ = animals
    assert sorted(store.filter_ids({"legs": 2})) == [ids[2]]
    assert sorted(store.filter_ids({"weight": 4.5})) == [ids[0]]
    assert list(store.filter_ids({"name": "rex.png"})) == [ids[1]]
    assert list(store.filter_ids({"sha256": ["s3"]})) == [ids[3]]
    assert list(store.filter_ids({"size": 300})) == [ids[2]]


def test_filter_ids_empty_where_is_every_item_and_no_match_is_empty(animals):
    store, ids, _ = animals
    assert sorted(store.filter_ids({})) == sorted(ids)
    got = store.filter_ids({"kind": "fish"})
    assert got.dtype == np.int64 and got.size == 0


def test_delete_removes_item_from_filters(animals):
    store, ids, _ = animals
    store.delete(ids[1])
    assert list(store.filter_ids({"kind": "dog"})) == [ids[3]]


@pytest.mark.parametrize(
    "where",
    [
        {"bad-name": 1},
        {"x') OR 1=1 --": 1},  # no SQL injection through the JSON path
        {"a" * 65: 1},
        {"kind": {"nested": 1}},
        {"kind": None},
        {"kind": []},
        {"kind": ["dog", None]},
    ],
    ids=["dash", "injection", "too_long", "object", "null", "empty_list", "null_in_list"],
)
def test_filter_ids_bad_filter_raises_store_error(animals, where):
    store, _, _ = animals
    with pytest.raises(StoreError):
        store.filter_ids(where)


# ---- vectors -----------------------------------------------------------------------------------


def test_vectors_round_trip_float32_exactly(animals):
    store, ids, xb = animals
    got = store.vectors(ids + [999])
    assert set(got) == set(ids)
    for i, id_ in enumerate(ids):
        assert got[id_].dtype == np.float32
        np.testing.assert_array_equal(got[id_], xb[i])


def test_iter_vectors_yields_live_items_in_id_order_in_batches(store):
    xb = vecs(7)
    ids = [i for i, _ in store.add(xb, [rec(f"h{i}") for i in range(7)])]
    store.delete(ids[3])
    batches = list(store.iter_vectors(batch=2))
    assert [len(b_ids) for b_ids, _ in batches] == [2, 2, 2]
    all_ids = np.concatenate([b for b, _ in batches])
    all_x = np.concatenate([x for _, x in batches])
    keep = [0, 1, 2, 4, 5, 6]
    assert list(all_ids) == [ids[i] for i in keep]
    np.testing.assert_array_equal(all_x, xb[keep])


def test_iter_vectors_of_empty_store_yields_nothing(store):
    assert list(store.iter_vectors()) == []


def test_sample_vectors_is_a_seeded_subset_of_stored_vectors(store):
    xb = vecs(20)
    store.add(xb, [rec(f"h{i}") for i in range(20)])
    a, b = store.sample_vectors(5, seed=3), store.sample_vectors(5, seed=3)
    assert a.shape == (5, D)
    np.testing.assert_array_equal(a, b)
    stored = {row.tobytes() for row in xb}
    assert all(row.tobytes() in stored for row in a)
    assert len({row.tobytes() for row in a}) == 5
    assert store.sample_vectors(100).shape == (20, D)  # more than there are: all of them


def test_sample_vectors_of_empty_store_is_empty(store):
    assert store.sample_vectors(5).size == 0


# ---- settings and the op log -------------------------------------------------------------------


def test_meta_set_get_round_trips_json_and_defaults(store):
    assert store.get_meta("plan") is None
    assert store.get_meta("plan", "fallback") == "fallback"
    store.set_meta({"plan": {"kind": "flat", "d": 4}, "dim": 4, "names": ["a", "b"]})
    assert store.get_meta("plan") == {"kind": "flat", "d": 4}
    assert store.get_meta("names") == ["a", "b"]
    store.set_meta({"dim": 8})
    assert store.get_meta("dim") == 8


def test_op_log_records_adds_and_deletes_in_sequence(store):
    assert store.last_seq() == 0
    ids = [i for i, _ in store.add(vecs(2), [rec("a"), rec("b")])]
    store.delete(ids[0])
    assert store.last_seq() == 3
    assert store.ops_since(0) == [(1, "add", ids[0]), (2, "add", ids[1]), (3, "del", ids[0])]
    assert store.ops_since(2) == [(3, "del", ids[0])]
    assert store.ops_since(3) == []


def test_compact_ops_deletes_rows_at_or_below_seq_and_keeps_last_seq(store):
    ids = [i for i, _ in store.add(vecs(3), [rec("a"), rec("b"), rec("c")])]
    store.delete(ids[0])
    assert store.compact_ops(3) == 3
    assert store.ops_since(0) == [(4, "del", ids[0])]
    assert store.last_seq() == 4 and store.compacted_seq() == 3
    assert store.compact_ops(4) == 1
    assert store.ops_since(0) == [] and store.last_seq() == 4  # an empty log still knows its position
    store.add(vecs(1, seed=1), [rec("d")])
    assert store.ops_since(4) == [(5, "add", ids[2] + 1)]  # sequence numbers are never reused


def test_compaction_mark_never_goes_back(store):
    store.add(vecs(2), [rec("a"), rec("b")])
    store.compact_ops(2)
    assert store.compact_ops(1) == 0
    assert store.compacted_seq() == 2


def test_last_seq_stays_monotonic_across_compaction_and_reopen(tmp_path):
    path = tmp_path / "meta.sqlite"
    s = MetadataStore(path)
    s.add(vecs(3), [rec("a"), rec("b"), rec("c")])
    s.compact_ops(3)
    s.close()
    s = MetadataStore(path)
    try:
        assert s.last_seq() == 3 and s.ops_since(0) == []
        s.add(vecs(1, seed=1), [rec("d")])
        assert s.last_seq() == 4 and [seq for seq, *_ in s.ops_since(0)] == [4]
    finally:
        s.close()
    ro = MetadataStore(path, read_only=True)
    try:
        assert ro.last_seq() == 4 and ro.compacted_seq() == 3
    finally:
        ro.close()


def test_compact_ops_on_a_read_only_store_raises_store_error(tmp_path):
    path = tmp_path / "meta.sqlite"
    s = MetadataStore(path)
    s.add(vecs(1), [rec("a")])
    s.close()
    ro = MetadataStore(path, read_only=True)
    try:
        with pytest.raises(StoreError, match="cannot compact"):
            ro.compact_ops(1)
        assert ro.ops_since(0) != []
    finally:
        ro.close()


def test_ops_since_reads_only_the_pending_rows_by_primary_key(store):
    plan = store.db.execute(
        "EXPLAIN QUERY PLAN SELECT seq, op, item_id FROM ops WHERE seq > ? ORDER BY seq", (0,)
    ).fetchall()
    detail = " ".join(row[-1] for row in plan)
    assert "SEARCH ops USING INTEGER PRIMARY KEY (rowid>?)" in detail, detail
    assert "TEMP B-TREE" not in detail  # no sort of the whole log


def test_failed_batch_is_rolled_back_entirely(store):
    with pytest.raises(KeyError):
        store.add(vecs(2), [rec("ok"), {"name": "no sha"}])
    assert store.count() == 0
    assert store.last_seq() == 0
    assert store.has_sha256(["ok"]) == set()


# ---- persistence and read-only -----------------------------------------------------------------


def test_items_vectors_meta_and_log_survive_close_and_reopen(tmp_path):
    path = tmp_path / "meta.sqlite"
    s = MetadataStore(path)
    xb = vecs(3)
    ids = [i for i, _ in s.add(xb, [rec("a", kind="x"), rec("b"), rec("c")])]
    s.delete(ids[1])
    s.set_meta({"dim": D})
    s.close()

    s = MetadataStore(path)
    try:
        assert s.count() == 2
        assert s.get(ids[0])["kind"] == "x"
        np.testing.assert_array_equal(s.vectors([ids[2]])[ids[2]], xb[2])
        assert s.get_meta("dim") == D
        assert s.last_seq() == 4
        ((new, _),) = s.add(vecs(1), [rec("d")])
        assert new > ids[2]
    finally:
        s.close()


def test_read_only_store_reads_but_refuses_writes(tmp_path):
    path = tmp_path / "meta.sqlite"
    s = MetadataStore(path)
    ids = [i for i, _ in s.add(vecs(2), [rec("a", kind="x"), rec("b")])]
    s.close()

    ro = MetadataStore(path, read_only=True)
    try:
        assert ro.count() == 2 and ro.get(ids[0])["kind"] == "x"
        assert list(ro.filter_ids({"kind": "x"})) == [ids[0]]
        for write in (
            lambda: ro.add(vecs(1), [rec("c")]),
            lambda: ro.delete(ids[0]),
            lambda: ro.set_meta({"k": 1}),
        ):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                write()
        assert ro.count() == 2 and ro.last_seq() == 2
        assert ro.get(ids[0]) is not None  # still usable after the refused writes
    finally:
        ro.close()


def test_read_only_open_of_missing_database_raises_store_error_and_creates_nothing(tmp_path):
    with pytest.raises(StoreError, match="cannot read"):
        MetadataStore(tmp_path / "missing.sqlite", read_only=True)
    assert not (tmp_path / "missing.sqlite").exists()


def test_garbage_file_raises_store_error(tmp_path):
    path = tmp_path / "meta.sqlite"
    path.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError, match="cannot read metadata database"):
        MetadataStore(path)


# ---- metadata validation -----------------------------------------------------------------------


def test_validate_metadata_accepts_simple_json_object_and_none():
    meta = {"kind": "cat", "n": 3, "x": 1.5, "ok": True, "tags": ["a", "b"], "nested": {"k": None}, "_a1": 0}
    assert validate_metadata(meta) == meta
    assert validate_metadata(None) == {}
    assert validate_metadata({}) == {}


@pytest.mark.parametrize("key", RESERVED)
def test_validate_metadata_rejects_reserved_keys(key):
    with pytest.raises(StoreError, match="reserved"):
        validate_metadata({key: "x"})


@pytest.mark.parametrize("key", ["", "1abc", "has space", "dash-ed", "dot.ted", "a" * 65, "ünï"])
def test_validate_metadata_rejects_bad_field_names(key):
    with pytest.raises(StoreError, match="invalid metadata field name"):
        validate_metadata({key: 1})


def test_validate_metadata_accepts_64_character_field_name():
    assert validate_metadata({"a" * 64: 1}) == {"a" * 64: 1}


def test_validate_metadata_rejects_non_string_keys_with_store_error():
    with pytest.raises(StoreError, match="invalid metadata field name"):
        validate_metadata({1: "x"})


@pytest.mark.parametrize("meta", [["a"], "text", 5])
def test_validate_metadata_rejects_non_objects(meta):
    with pytest.raises(StoreError, match="JSON object"):
        validate_metadata(meta)


@pytest.mark.parametrize("value", [object(), b"bytes", {1, 2}])
def test_validate_metadata_rejects_values_json_cannot_encode(value):
    with pytest.raises(StoreError, match="JSON-serialisable"):
        validate_metadata({"v": value})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [float("-inf")]])
def test_validate_metadata_rejects_nan_and_infinity(value):
    with pytest.raises(StoreError, match="JSON-serialisable"):
        validate_metadata({"v": value})


def _unwritable_folder(monkeypatch, folder: Path) -> None:
    """As if `folder` were on a read-only mount (tests may run as root, where chmod does not stop writes)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))


def test_read_only_store_in_an_unwritable_folder_creates_no_files(tmp_path: Path, monkeypatch):
    s = MetadataStore(tmp_path / "meta.sqlite")
    s.add(vecs(2), [{"sha256": f"{i:064x}"} for i in range(2)])
    s.close()  # the last connection checkpoints the WAL into the database file
    before = sorted(p.name for p in tmp_path.iterdir())
    _unwritable_folder(monkeypatch, tmp_path)
    ro = MetadataStore(tmp_path / "meta.sqlite", read_only=True)
    assert ro.count() == 2
    ro.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -shm/-wal created


def test_read_only_store_refuses_unwritable_folder_with_uncheckpointed_writes(tmp_path: Path, monkeypatch):
    writer = MetadataStore(tmp_path / "meta.sqlite")
    writer.add(vecs(1), [{"sha256": "a" * 64}])  # still open: the write sits in meta.sqlite-wal
    _unwritable_folder(monkeypatch, tmp_path)
    with pytest.raises(StoreError, match="not yet checkpointed"):
        MetadataStore(tmp_path / "meta.sqlite", read_only=True)
    writer.close()


def test_paths_with_uri_characters_open_read_only(tmp_path: Path):
    folder = tmp_path / "a?b#c%20d"
    folder.mkdir()
    MetadataStore(folder / "meta.sqlite").close()
    ro = MetadataStore(folder / "meta.sqlite", read_only=True)
    assert ro.count() == 0
    ro.close()
