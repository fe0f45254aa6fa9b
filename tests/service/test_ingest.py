"""The ingest pipeline: dedupe by hash (stored and within a batch), one model pass per batch, failures alone."""

from __future__ import annotations

import numpy as np
import pytest

from index import AFVIndex
from model.data import ImageDecodeError
from service.ingest import Item, ingest, ingest_batch, model_decoder

DIM = 8


class CountingEmbed:
    """A stand-in sketcher: each image's mean pixel, repeated; counts calls and images."""

    def __init__(self):
        self.calls, self.images = 0, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls, self.images = self.calls + 1, self.images + len(x)
        return np.repeat(x.reshape(len(x), -1).mean(1, keepdims=True), DIM, axis=1).astype(np.float32)


def decode(data: bytes, source: str) -> np.ndarray:
    """Bytes b'img:<n>' decode to a 3×2×2 image of value n; anything else is unreadable."""
    if not data.startswith(b"img:"):
        raise ImageDecodeError(f"{source}: not an image")
    return np.full((3, 2, 2), int(data[4:]), np.uint8)


@pytest.fixture
def index(tmp_path):
    with AFVIndex.create(tmp_path / "idx", dim=DIM) as idx:
        yield idx


def _item(n: int, **kw) -> Item:
    return Item(f"img:{n}".encode(), name=f"n{n}", **kw)


def test_new_items_are_added_in_order_with_one_model_pass(index):
    embed = CountingEmbed()
    outcomes = ingest_batch(index, [_item(i, metadata={"k": i}) for i in range(5)], decode=decode, embed=embed)
    assert embed.calls == 1 and embed.images == 5
    assert [o.ok and not o.duplicate for o in outcomes] == [True] * 5
    assert [index.get(o.id)["k"] for o in outcomes] == list(range(5))
    assert index.search(np.full(DIM, 3.0), k=1)[0][0].id == outcomes[3].id


def test_known_and_repeated_items_are_duplicates_and_not_embedded_again(index):
    first = ingest_batch(index, [_item(1), _item(2)], decode=decode, embed=CountingEmbed())
    embed = CountingEmbed()
    outcomes = ingest_batch(index, [_item(2), _item(3), _item(3), _item(1)], decode=decode, embed=embed)
    assert embed.images == 1  # only the new image 3, once
    assert [(o.id, o.duplicate) for o in outcomes] == [
        (first[1].id, True),
        (outcomes[1].id, False),
        (outcomes[1].id, True),
        (first[0].id, True),
    ]
    assert index.count == 3


def test_an_unreadable_item_fails_alone(index):
    outcomes = ingest_batch(
        index,
        [_item(1), Item(b"junk", source="f[1]"), Item(b"junk", source="f[2]"), _item(2)],
        decode=decode,
        embed=CountingEmbed(),
    )
    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert "f[1]" in str(outcomes[1].error) and outcomes[2].error is outcomes[1].error
    assert index.count == 2


def test_a_batch_with_nothing_new_runs_no_model(index):
    ingest_batch(index, [_item(1)], decode=decode, embed=CountingEmbed())
    embed = CountingEmbed()
    assert ingest_batch(index, [_item(1), Item(b"junk")], decode=decode, embed=embed)[0].duplicate
    assert embed.calls == 0


def test_an_item_deleted_meanwhile_is_added_again(index, monkeypatch):
    old = ingest_batch(index, [_item(7)], decode=decode, embed=CountingEmbed())[0].id
    real_find = index.find_sha256
    calls = []

    def find_then_delete(shas):  # the first lookup sees the item; a concurrent DELETE lands right after
        found = real_find(shas)
        if not calls:
            index.delete(old)
        calls.append(shas)
        return found

    monkeypatch.setattr(index, "find_sha256", find_then_delete)
    again = ingest_batch(index, [_item(7)], decode=decode, embed=CountingEmbed())[0]
    assert not again.duplicate and again.id != old and index.get(again.id) is not None


def test_ingest_streams_batches_and_keeps_item_order(index):
    embed = CountingEmbed()
    items = [_item(i % 7) for i in range(20)]
    results = list(ingest(index, items, decode=decode, embed=embed, batch_size=6))
    assert [it for it, _ in results] == items and embed.calls == 2 and embed.images == 7
    assert index.count == 7 and sum(not o.duplicate for _, o in results) == 7


def test_model_decoder_preprocesses_to_the_model_resolution(extractor, images):
    x = model_decoder(extractor)(images[0][1], "a.jpg")
    assert x.shape == (3, extractor.resolution, extractor.resolution) and x.dtype == np.uint8
    with pytest.raises(ImageDecodeError):
        model_decoder(extractor)(b"not an image", "b.jpg")


@pytest.mark.parametrize(
    "ways",
    [{"workers": 2}, {"decode_threads": 2, "decode_ahead": False}, {"decode_ahead": True, "decode_threads": 2}],
    ids=["worker-processes", "threads-between-passes", "threads-ahead"],
)
def test_decoding_ahead_or_side_by_side_gives_the_same_outcomes(tmp_path, images, ways):
    from service.ingest import FileDecoder

    items = [Item(data, name) for name, data in images[:20]] + [Item(b"junk", "bad"), Item(images[0][1], "again")]
    outcomes, vectors = {}, {}
    for name, how in (("inline", {"decode_threads": 1, "decode_ahead": False}), ("other", ways)):
        with AFVIndex.create(tmp_path / name, dim=DIM) as idx:
            embed = CountingEmbed()
            got = list(ingest(idx, items, decode=FileDecoder(32), embed=embed, batch_size=6, **how))
            outcomes[name] = [(o.id, o.duplicate, type(o.error).__name__) for _, o in got]
            vectors[name] = idx.vectors([o.id for _, o in got if o.id is not None])
            assert [it for it, _ in got] == items and idx.count == 20 and embed.images == 20
    assert outcomes["inline"] == outcomes["other"]
    assert len(vectors["inline"]) == 20 and vectors["inline"].keys() == vectors["other"].keys()
    assert all(np.array_equal(vectors["inline"][i], vectors["other"][i]) for i in vectors["inline"])
    assert (
        outcomes["other"][20][2] == "ImageDecodeError" and outcomes["other"][21][1]
    )  # junk fails alone; a repeat is a duplicate


def test_a_batch_is_decoded_in_one_run_of_files_per_decode_thread(index, monkeypatch):
    import service.ingest as ingest_module

    runs: list[list[str]] = []
    decode_files = ingest_module.DecodeFiles.__call__

    def logged(self, items):
        runs.append([item.source for item in items])
        return decode_files(self, items)

    monkeypatch.setattr(ingest_module.DecodeFiles, "__call__", logged)
    items = [_item(i, source=f"s{i}") for i in range(7)] + [Item(b"junk", source="bad")]
    got = list(ingest(index, items, decode=decode, embed=CountingEmbed(), batch_size=8, decode_threads=3))
    assert [o.ok for _, o in got] == [True] * 7 + [False] and isinstance(got[7][1].error, ImageDecodeError)
    assert sorted(runs) == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6", "bad"]]
    assert ingest_module.split([1, 2, 3], 8) == [[1], [2], [3]] and ingest_module.split([], 2) == []


def test_by_default_small_files_are_decoded_ahead_and_large_ones_alone(tmp_path, monkeypatch):
    import time

    import service.ingest as ingest_module

    decoded: dict[str, float] = {}
    passes_ended: list[float] = []

    def timed_decode(data: bytes, source: str) -> np.ndarray:
        decoded[source] = time.perf_counter()
        return np.zeros((3, 32, 32), np.uint8) + data[0]

    def slow_embed(x: np.ndarray) -> np.ndarray:
        time.sleep(0.15)
        passes_ended.append(time.perf_counter())
        return CountingEmbed()(x)

    monkeypatch.setattr(ingest_module, "usable_cores", lambda: ingest_module.FEW_CORES + 2)
    big = ingest_module.DECODE_THREADS_MIN_BYTES
    small = [Item(bytes([i]) * 1_000, source=f"small{i}") for i in range(4)]
    large = [Item(bytes([100 + i]) * big, source=f"large{i}") for i in range(2)]
    with AFVIndex.create(tmp_path / "idx", dim=DIM) as idx:
        got = list(ingest(idx, small + large, decode=timed_decode, embed=slow_embed, batch_size=2))
    assert all(o.error is None for _, o in got) and len({o.id for _, o in got}) == 6
    assert decoded["small2"] < passes_ended[0]  # the second batch while the first was embedded
    assert decoded["large0"] > passes_ended[1]  # large files: after the passes before them
    assert ingest_module.large_files(large) and not ingest_module.large_files([Item(b"x" * (big - 1))])


def test_decoding_ahead_in_threads_decodes_the_next_batch_before_the_pass_ends(tmp_path):
    import threading
    import time

    decoded: dict[str, tuple[float, str]] = {}
    passes_ended: list[float] = []

    def slow_embed(x: np.ndarray) -> np.ndarray:
        time.sleep(0.2)
        passes_ended.append(time.perf_counter())
        return CountingEmbed()(x)

    def timed_decode(data: bytes, source: str) -> np.ndarray:
        decoded[source] = (time.perf_counter(), threading.current_thread().name)
        return decode(data, source)

    items = [_item(i, source=f"s{i}") for i in range(4)]
    with AFVIndex.create(tmp_path / "idx", dim=DIM) as idx:
        got = list(ingest(idx, items, decode=timed_decode, embed=slow_embed, batch_size=2, decode_ahead=True))
        assert [o.ok for _, o in got] == [True] * 4 and idx.count == 4
    assert all(name.startswith("afv-decode") for _, name in decoded.values())
    assert decoded["s2"][0] < passes_ended[0] and decoded["s3"][0] < passes_ended[0]  # batch 2, during pass 1


def test_on_few_cores_every_batch_is_decoded_alone_by_default():
    import service.ingest as ingest_module

    small, large = [Item(b"x" * 1_000)], [Item(b"x" * ingest_module.DECODE_THREADS_MIN_BYTES)]
    few, more = ingest_module.FEW_CORES, ingest_module.FEW_CORES + 1
    assert ingest_module.decode_alone(small, few) and ingest_module.decode_alone(large, few)
    assert not ingest_module.decode_alone(small, more) and ingest_module.decode_alone(large, more)
