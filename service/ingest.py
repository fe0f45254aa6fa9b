"""The one ingest pipeline: items → hash → dedupe → decode → sketch in batches → add to the index.

Every way images enter an index goes through `ingest` (or `ingest_batch` for one request's worth):
`afv index build` and `afv index add`, the demo seeding, `POST /v1/images` and `/v1/images:batch`.
The callers differ only in what they pass in:

* `decode(data, source)` turns bytes into a 3×R×R uint8 array and raises one of `decode_errors` for
  an unreadable image (the HTTP routes pass their size/pixel limits and API errors);
* `embed(x)` turns an n×3×R×R uint8 batch into n sketches (the CLI calls the model directly, the
  service goes through its micro-batcher).

An item whose content hash is already indexed, or repeated earlier in the batch, is not decoded or
embedded again: it gets the existing id, marked as a duplicate. An unreadable item fails alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from index import AFVIndex
from model.data import ImageDecodeError, decode_image
from model.embedder import Embedder

Decode = Callable[[bytes, str], np.ndarray]
Embed = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Item:
    """One image to ingest: its bytes, an optional name and user metadata, and where it came from."""

    data: bytes
    name: str | None = None
    metadata: dict = field(default_factory=dict)
    source: str = "image"  # named in error messages: a file path, a request field such as images[3]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Outcome:
    """What became of one item: its id (and whether it was already indexed), or why it failed."""

    id: int | None = None
    duplicate: bool = False
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def model_decoder(embedder: Embedder) -> Decode:
    """Decode any image file and preprocess it to the embedder's resolution (no request limits)."""

    def decode(data: bytes, source: str) -> np.ndarray:
        return embedder.preprocess(decode_image(data))

    return decode


def ingest(
    index: AFVIndex,
    items: Iterable[Item],
    *,
    decode: Decode,
    embed: Embed,
    batch_size: int = 64,
    decode_errors: tuple[type[Exception], ...] = (ImageDecodeError,),
) -> Iterator[tuple[Item, Outcome]]:
    """Ingest any number of items in batches of `batch_size`; yields each item with its outcome, in order."""
    for batch in batched(items, batch_size):
        yield from zip(batch, ingest_batch(index, batch, decode=decode, embed=embed, decode_errors=decode_errors))


def ingest_batch(
    index: AFVIndex,
    items: list[Item],
    *,
    decode: Decode,
    embed: Embed,
    decode_errors: tuple[type[Exception], ...] = (ImageDecodeError,),
) -> list[Outcome]:
    """Ingest one batch with one model pass; an outcome per item, in order."""
    shas = [item.sha256 for item in items]
    outcomes = [Outcome() for _ in items]
    known = index.find_sha256(shas)
    first: dict[str, int] = {}
    for i, sha in enumerate(shas):
        if sha in known:
            outcomes[i] = Outcome(known[sha], duplicate=True)
        else:
            first.setdefault(sha, i)
    _add_new(index, items, sorted(first.values()), outcomes, decode, embed, decode_errors)
    _resolve_repeats(shas, first, outcomes)
    _redo_deleted(
        index, items, [i for i, sha in enumerate(shas) if sha in known], outcomes, decode, embed, decode_errors
    )
    return outcomes


def _add_new(
    index: AFVIndex,
    items: list[Item],
    todo: list[int],
    outcomes: list[Outcome],
    decode: Decode,
    embed: Embed,
    decode_errors: tuple[type[Exception], ...],
) -> None:
    """Decode the items at positions `todo`, sketch the readable ones in one call and add them."""
    arrays, ok = [], []
    for i in todo:
        try:
            arrays.append(decode(items[i].data, items[i].source))
            ok.append(i)
        except decode_errors as e:
            outcomes[i] = Outcome(error=e)
    if not ok:
        return
    records = [_record(items[i]) for i in ok]
    for i, result in zip(ok, index.add_embedded(embed(np.stack(arrays)), records)):
        outcomes[i] = Outcome(result.id, result.duplicate)


def _resolve_repeats(shas: list[str], first: dict[str, int], outcomes: list[Outcome]) -> None:
    """An item repeated within the batch shares its first occurrence's outcome, as a duplicate."""
    for i, sha in enumerate(shas):
        j = first.get(sha, i)
        if j != i:
            src = outcomes[j]
            outcomes[i] = Outcome(src.id, duplicate=src.ok, error=src.error)


def _redo_deleted(
    index: AFVIndex,
    items: list[Item],
    were_known: list[int],
    outcomes: list[Outcome],
    decode: Decode,
    embed: Embed,
    decode_errors: tuple[type[Exception], ...],
) -> None:
    """Items found indexed but deleted since (a concurrent DELETE) are ingested after all."""
    if not were_known:
        return
    still = index.find_sha256([items[i].sha256 for i in were_known])
    gone = [i for i in were_known if items[i].sha256 not in still]
    if gone:
        again = ingest_batch(index, [items[i] for i in gone], decode=decode, embed=embed, decode_errors=decode_errors)
        for i, outcome in zip(gone, again):
            outcomes[i] = outcome


def _record(item: Item) -> dict:
    return {"name": item.name, "sha256": item.sha256, "size": len(item.data), "metadata": item.metadata}


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of at most `size` items."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
