"""Embedding shards: written whole, complete only for the same entries and sketch, gathered from any order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.bulk.shards import (
    Shard,
    ShardCollector,
    ShardPlan,
    is_complete,
    pending_shards,
    read_shard,
    shard_path,
    write_shard,
)
from service.bulk.sources import Entry


def _plan(n: int = 5, size: int = 2) -> ShardPlan:
    return ShardPlan.of([Entry(f"/src/{i}.jpg", f"{i}.jpg", {"path": f"{i}.jpg"}) for i in range(n)], size)


def _rows(plan: ShardPlan, k: int, d: int = 4) -> dict[str, np.ndarray]:
    """The sketch stage's rows of shard k: the second one unreadable."""
    entries = plan.entries_of(k)
    pos = np.arange(k * plan.size, k * plan.size + len(entries))
    return {
        "shard": np.full(len(entries), k),
        "pos": pos,
        "name": np.array([e.name for e in entries], dtype=object),
        "sha256": np.array([f"{p:08d}" for p in pos], dtype=object),
        "size": pos * 10,
        "metadata": np.array([json.dumps({"path": e.name}) for e in entries], dtype=object),
        "error": np.array(["" if i != 1 else "bad image" for i in range(len(entries))], dtype=object),
        "vector": np.arange(len(entries) * d, dtype=np.float32).reshape(-1, d) + k,
    }


def test_a_shard_reads_back_as_written(tmp_path):
    plan = _plan()
    shard = Shard.from_rows(_rows(plan, 0))
    write_shard(tmp_path, 0, plan, "sketch-a", shard)
    back = read_shard(shard_path(tmp_path, 0))
    assert np.array_equal(back.vectors, shard.vectors) and back.records == shard.records
    assert back.errors == [None, "bad image"] and back.records[1] == {
        "name": "1.jpg",
        "sha256": "00000001",
        "size": 10,
        "metadata": {"path": "1.jpg"},
    }


def test_a_shard_is_complete_only_for_the_same_entries_and_sketch(tmp_path):
    plan = _plan()
    write_shard(tmp_path, 0, plan, "sketch-a", Shard.from_rows(_rows(plan, 0)))
    assert is_complete(tmp_path, 0, plan, "sketch-a")
    assert not is_complete(tmp_path, 0, plan, "sketch-b")  # another model or projection
    entries = [e for k in range(plan.count) for e in plan.entries_of(k)]
    renamed = ShardPlan.of([Entry("/src/new.jpg", "new.jpg"), *entries[1:]], plan.size)
    assert not is_complete(tmp_path, 0, renamed, "sketch-a")  # the listing changed
    assert not is_complete(tmp_path, 1, plan, "sketch-a")  # never written


def test_pending_shards_redoes_missing_and_truncated_ones_and_drops_temp_files(tmp_path):
    plan = _plan()
    for k in range(plan.count):
        write_shard(tmp_path, k, plan, "s", Shard.from_rows(_rows(plan, k)))
    data = shard_path(tmp_path, 1).read_bytes()
    shard_path(tmp_path, 1).write_bytes(data[: len(data) // 2])  # as a non-atomic writer killed midway would
    shard_path(tmp_path, 2).unlink()
    (tmp_path / ".shard-000002.parquet.x1y2.tmp").write_bytes(data[:100])  # a killed atomic write
    assert pending_shards(tmp_path, plan, "s") == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))


def test_the_collector_gathers_shards_from_rows_in_any_order():
    plan = _plan(size=3)
    rows = [_rows(plan, k) for k in range(plan.count)]
    both = {c: np.concatenate([rows[1][c], rows[0][c][::-1]]) for c in rows[0]}
    collector = ShardCollector(plan, [0, 1])
    assert [k for k, _ in collector.add({c: v[:1] for c, v in both.items()})] == [] and collector.unfinished == [0, 1]
    done = dict(collector.add({c: v[1:] for c, v in both.items()}))
    assert sorted(done) == [0, 1] and collector.unfinished == []
    assert [r["name"] for r in done[0].records] == ["0.jpg", "1.jpg", "2.jpg"]
    assert np.array_equal(done[0].vectors, rows[0]["vector"])


def test_a_shard_of_the_wrong_length_is_not_written(tmp_path):
    plan = _plan()
    rows = {c: v[:1] for c, v in _rows(plan, 0).items()}
    with pytest.raises(ValueError, match="1 rows"):
        write_shard(tmp_path, 0, plan, "s", Shard.from_rows(rows))
    assert not list(tmp_path.iterdir())
