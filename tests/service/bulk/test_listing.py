"""A spooled listing: cut into shards as it streams, the same plan as one held in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.bulk.listing import LISTING_DIR, part_path, spool
from service.bulk.shards import ShardPlan
from service.bulk.sources import Entry


def _entries(n: int) -> list[Entry]:
    return [
        Entry("/src/a.tar.gz", f"{i}.jpg", {"path": f"{i}.jpg", "label": i % 3}, member=f"./{i}.jpg", sequential=True)
        for i in range(n)
    ]


def test_the_spooled_plan_is_the_plan_held_in_memory(tmp_path):
    entries = _entries(7)
    spooled, held = spool(iter(entries), tmp_path, 3), ShardPlan.of(entries, 3)
    assert (spooled.count, spooled.total, spooled.size) == (held.count, held.total, held.size) == (3, 7, 3)
    assert spooled.counts == held.counts == (3, 3, 1)
    assert spooled.digests == held.digests
    assert [spooled.entries_of(k) for k in range(3)] == [held.entries_of(k) for k in range(3)]


def test_each_shard_is_written_before_the_listing_goes_past_it(tmp_path):
    size, seen = 4, []

    def listing() -> Iterator[Entry]:
        for i, entry in enumerate(_entries(13)):
            if i % size == 0 and i > 0:  # about to start shard i // size: the one before is on disk
                seen.append(part_path(tmp_path / LISTING_DIR, i // size - 1).is_file())
                assert not part_path(tmp_path / LISTING_DIR, i // size).exists()
            yield entry

    spooled = []
    plan = spool(listing(), tmp_path, size, on_entries=spooled.append)
    assert seen == [True, True, True]
    assert spooled == [4, 4, 4, 1] and plan.count == 4


def test_a_shorter_listing_drops_the_parts_of_a_longer_earlier_one(tmp_path):
    spool(iter(_entries(10)), tmp_path, 2)
    plan = spool(iter(_entries(3)), tmp_path, 2)
    parts = sorted(p.name for p in (tmp_path / LISTING_DIR).iterdir())
    assert parts == ["part-000000.jsonl.gz", "part-000001.jsonl.gz"] and plan.count == 2
    assert plan.entries_of(1) == _entries(3)[2:]


def test_an_empty_listing_makes_no_shards(tmp_path):
    plan = spool(iter([]), tmp_path, 5)
    assert (plan.count, plan.total) == (0, 0)


def test_a_shard_size_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shard size"):
        spool(iter(_entries(2)), tmp_path, 0)
    assert not Path(tmp_path / LISTING_DIR).exists()
