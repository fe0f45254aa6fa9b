"""Assembly: shards are added in listing order whatever order they finish in."""

from __future__ import annotations

import numpy as np
import pytest

from index import AFVIndex
from service.bulk.assemble import ShardAssembler, assemble
from service.bulk.shards import Shard, ShardPlan, shard_path, write_shard
from service.bulk.sources import Entry

DIM = 4


def _write(folder, plan: ShardPlan, k: int) -> None:
    entries = plan.entries_of(k)
    records = [
        {"name": e.name, "sha256": f"{k * plan.size + i:064d}", "size": 10, "metadata": {"path": e.name}}
        for i, e in enumerate(entries)
    ]
    vectors = np.random.default_rng(k).normal(size=(len(entries), DIM)).astype(np.float32)
    write_shard(folder, k, plan, "sketch", Shard(vectors, records, [None] * len(entries)))


@pytest.fixture
def plan() -> ShardPlan:
    return ShardPlan.of([Entry(f"/src/{i}.jpg", f"{i}.jpg") for i in range(7)], 3)


def _names(index: AFVIndex) -> list[str]:
    return [index.get(i)["name"] for i in range(1, index.count + 1)]  # type: ignore[index]


def test_shards_ready_out_of_order_are_added_in_listing_order(tmp_path, plan):
    folder = tmp_path / "shards"
    with AFVIndex.create(tmp_path / "idx", dim=DIM) as index, index.bulk():
        added = []
        assembler = ShardAssembler(index, folder, plan, on_rows=added.append)
        _write(folder, plan, 2)
        assembler.ready(2)
        assert index.count == 0 and not assembler.done  # shards 0 and 1 are not there yet
        _write(folder, plan, 0)
        assembler.ready(0)
        assert _names(index) == ["0.jpg", "1.jpg", "2.jpg"]
        _write(folder, plan, 1)
        assembler.ready(1)
        assert _names(index) == [f"{i}.jpg" for i in range(7)] and assembler.done
        assert added == [3, 3, 1] and assembler.outcomes.added == 7


def test_assemble_refuses_to_start_while_a_shard_is_missing(tmp_path, plan):
    folder = tmp_path / "shards"
    for k in (0, 2):
        _write(folder, plan, k)
    with AFVIndex.create(tmp_path / "idx", dim=DIM) as index:
        with pytest.raises(FileNotFoundError, match=shard_path(folder, 1).name):
            assemble(index, folder, plan, "sketch")
        assert index.count == 0
        _write(folder, plan, 1)
        out = assemble(index, folder, plan, "sketch")
        assert (out.added, out.present, index.count) == (7, 0, 7)
        assert _names(index) == [f"{i}.jpg" for i in range(7)]
