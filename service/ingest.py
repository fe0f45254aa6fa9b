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
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from index import AFVIndex
from model.data import ImageDecodeError, decode_image, image_to_uint8
from model.embedder import Embedder

Decode = Callable[[bytes, str], np.ndarray]
Embed = Callable[[np.ndarray], np.ndarray]

# Batches whose files average at least this many bytes are decoded alone, side by side in every decode
# thread, between model passes; smaller ones one batch ahead, while the model runs. On 2 cores: 97 KiB
# JPEGs (512 px) decoded in two threads between passes beat one thread in 13 of 14 rounds and decoding
# ahead in 6 of 9; 26 KiB ones (256 px) decoded ahead beat one thread between passes in 8 of 9 rounds
# (docs/results.md, 2026-12-07). Decoding ahead competes with the model for the cores, which small
# files' decoding fits beside and large files' does not.
DECODE_THREADS_MIN_BYTES = 40 * 1024
MAX_DECODE_THREADS = 8
# On this few cores every batch is decoded alone: once the faster pyramid kernels kept both cores busy
# (1.9 of 2 at raw speed), 26 KiB files decoded in two threads between passes beat two threads ahead
# in 5 of 9 rounds, lost 1 and tied 3 (medians 76-81 % of raw against 66-79 %; docs/results.md).
FEW_CORES = 2


@dataclass(frozen=True)
class Item:
    """One image to ingest: its bytes, an optional name and user metadata, and where it came from."""

    data: bytes
    name: str | None = None
    metadata: dict = field(default_factory=dict)
    source: str = "image"  # named in error messages: a file path, a request field such as images[3]

    @cached_property
    def sha256(self) -> str:  # computed once: the plan, the record and the delete re-check all use it
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


@dataclass(frozen=True)
class FileDecoder:
    """Decode any image file and fit it to `resolution` (no request limits). A plain picklable object, so
    that worker processes can run it (`ingest(..., workers=N)`)."""

    resolution: int
    reduced: bool = False  # JPEGs decoded at a reduced DCT scale (`decode_image(fit=...)`), as the index pins

    def __call__(self, data: bytes, source: str) -> np.ndarray:
        return image_to_uint8(decode_image(data, fit=self.resolution if self.reduced else None), self.resolution)


def model_decoder(embedder: Embedder, fit: int | None = None) -> Decode:
    """Decode any image file and preprocess it to the embedder's resolution (no request limits); `fit`
    (`ModelIndex.decode_fit`): decode JPEGs reduced for it."""
    return FileDecoder(embedder.resolution, reduced=fit is not None)


@dataclass
class _Plan:
    """A batch after hashing and the dedupe lookup: what must be decoded, and what is answered already."""

    items: list[Item]
    shas: list[str]
    known: dict[str, int]
    first: dict[str, int]  # content hash → position of its first new occurrence
    outcomes: list[Outcome]

    @property
    def todo(self) -> list[int]:
        return sorted(self.first.values())


def ingest(
    index: AFVIndex,
    items: Iterable[Item],
    *,
    decode: Decode,
    embed: Embed,
    batch_size: int = 64,
    decode_errors: tuple[type[Exception], ...] = (ImageDecodeError,),
    workers: int = 0,
    decode_threads: int | None = None,
    decode_ahead: bool | None = None,
) -> Iterator[tuple[Item, Outcome]]:
    """Ingest any number of items in batches of `batch_size`; yields each item with its outcome, in order.

    With `workers` > 0, `decode` (which must then be picklable, e.g. `FileDecoder`) runs in that many
    processes, one batch ahead of the model: batch k+1 is decoded while batch k is embedded. Otherwise it
    runs in `decode_threads` threads (None: one per core, at most MAX_DECODE_THREADS): one batch ahead
    with `decode_ahead`, each batch alone between model passes without, and with None (the default)
    ahead for batches of small files and alone for batches of large ones (DECODE_THREADS_MIN_BYTES), or
    every batch alone on FEW_CORES cores or fewer (`decode_alone`)."""
    cores = usable_cores()
    if workers > 0:  # fork, as torch's DataLoader does on Linux: workers start at once and only decode
        pool: Executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        decode_ahead, tasks = True, workers
    else:
        tasks = decode_threads or min(MAX_DECODE_THREADS, cores)
        pool = ThreadPoolExecutor(tasks, "afv-decode")
    decode_some = DecodeFiles(decode, decode_errors)
    with pool:
        ahead: deque[tuple[_Plan, list[Future], bool]] = deque()
        for batch in batched(items, batch_size):
            alone = not decode_ahead if decode_ahead is not None else decode_alone(batch, cores)
            while alone and ahead:  # the passes before it first: its decode then has every core
                yield from _finish_pipelined(index, *ahead.popleft(), decode, embed, decode_errors)
            plan, in_flight = _plan(index, batch), bool(ahead)
            runs = [[batch[i] for i in run] for run in split(plan.todo, tasks)]
            ahead.append((plan, [pool.submit(decode_some, run) for run in runs], in_flight))
            if alone or len(ahead) > 1:
                yield from _finish_pipelined(index, *ahead.popleft(), decode, embed, decode_errors)
        while ahead:
            yield from _finish_pipelined(index, *ahead.popleft(), decode, embed, decode_errors)


def _finish_pipelined(
    index: AFVIndex,
    plan: _Plan,
    futures: list[Future],
    planned_in_flight: bool,
    decode: Decode,
    embed: Embed,
    decode_errors: tuple[type[Exception], ...],
) -> Iterator[tuple[Item, Outcome]]:
    """Collect a batch's decoded images from the workers (in order, runs of `DecodeFiles`), embed and add them
    (first dropping what the batch before added meanwhile, if it was planned while that one was in flight)."""
    decoded: list[np.ndarray | Exception] = [x for fut in futures for x in fut.result()]
    if planned_in_flight:
        decoded = _drop_added_since(index, plan, decoded)
    _complete(index, plan, decoded, decode, embed, decode_errors)
    yield from zip(plan.items, plan.outcomes)


def _drop_added_since(index: AFVIndex, plan: _Plan, decoded: list) -> list:
    """A batch planned while the one before was still embedding: what that one added since is answered as
    a duplicate now, not embedded again. Returns the decoded images of what is still to embed."""
    todo = plan.todo
    added = index.find_sha256([plan.shas[i] for i in todo])
    if not added:
        return decoded
    plan.known.update(added)
    for sha in added:
        del plan.first[sha]
    for i, sha in enumerate(plan.shas):
        if sha in added:
            plan.outcomes[i] = Outcome(added[sha], duplicate=True)
    return [x for i, x in zip(todo, decoded) if plan.shas[i] not in added]


def ingest_batch(
    index: AFVIndex,
    items: list[Item],
    *,
    decode: Decode,
    embed: Embed,
    decode_errors: tuple[type[Exception], ...] = (ImageDecodeError,),
) -> list[Outcome]:
    """Ingest one batch with one model pass, decoding in the calling thread; an outcome per item, in order."""
    plan = _plan(index, items)
    decoded = [_decode_one(decode, items[i], decode_errors=decode_errors) for i in plan.todo]
    _complete(index, plan, decoded, decode, embed, decode_errors)
    return plan.outcomes


def _plan(index: AFVIndex, items: list[Item]) -> _Plan:
    """Hash the batch and look the hashes up: stored items are answered, repeats point at their first."""
    shas = [item.sha256 for item in items]
    outcomes = [Outcome() for _ in items]
    known = index.find_sha256(shas)
    first: dict[str, int] = {}
    for i, sha in enumerate(shas):
        if sha in known:
            outcomes[i] = Outcome(known[sha], duplicate=True)
        else:
            first.setdefault(sha, i)
    return _Plan(items, shas, known, first, outcomes)


@dataclass(frozen=True)
class DecodeFiles:
    """Decode some images in turn: each one's pixels, or its decode error. One task per decode thread or
    process and batch: 256-px JPEGs decoded 15-25 % faster in two threads than as one task each (the
    futures' hand-offs cost more than a small file's decode). Picklable when `decode` is."""

    decode: Decode
    errors: tuple[type[Exception], ...]

    def __call__(self, items: list[Item]) -> list[np.ndarray | Exception]:
        return [_decode_one(self.decode, item, decode_errors=self.errors) for item in items]


def split(items: list[int], parts: int) -> list[list[int]]:
    """`items` in at most `parts` contiguous runs of nearly equal length (none empty)."""
    return [run.tolist() for run in np.array_split(np.asarray(items, dtype=np.int64), parts) if len(run)]


def _decode_one(decode: Decode, item: Item, *, decode_errors: tuple[type[Exception], ...]) -> np.ndarray | Exception:
    try:
        return decode(item.data, item.source)
    except decode_errors as e:
        return e


def _complete(
    index: AFVIndex,
    plan: _Plan,
    decoded: list[np.ndarray | Exception],
    decode: Decode,
    embed: Embed,
    decode_errors: tuple[type[Exception], ...],
) -> None:
    """Sketch the readable new items in one call, add them, and settle repeats and concurrent deletes."""
    ok = [(i, x) for i, x in zip(plan.todo, decoded) if not isinstance(x, Exception)]
    for i, x in zip(plan.todo, decoded):
        if isinstance(x, Exception):
            plan.outcomes[i] = Outcome(error=x)
    if ok:
        vectors = embed(np.stack([x for _, x in ok]))
        for (i, _), result in zip(ok, index.add_embedded(vectors, [index_record(plan.items[i]) for i, _ in ok])):
            plan.outcomes[i] = Outcome(result.id, result.duplicate)
    _resolve_repeats(plan.shas, plan.first, plan.outcomes)
    were_known = [i for i, sha in enumerate(plan.shas) if sha in plan.known]
    _redo_deleted(index, plan.items, were_known, plan.outcomes, decode, embed, decode_errors)


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


def decode_alone(items: list[Item], cores: int) -> bool:
    """Whether `ingest` decodes this batch alone between model passes by default (else one batch ahead)."""
    return cores <= FEW_CORES or large_files(items)


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def large_files(items: list[Item]) -> bool:
    """Whether the items' files average DECODE_THREADS_MIN_BYTES or more: decoded alone, not ahead."""
    return bool(items) and sum(len(item.data) for item in items) >= DECODE_THREADS_MIN_BYTES * len(items)


def index_record(item: Item) -> dict:
    """The record an item is stored under (the local and the Ray build write the same)."""
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
