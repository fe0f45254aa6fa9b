"""The two stages of a bulk build, as plain picklable callables that any engine (Ray here) can run.

* `DecodeChunk`: a chunk of listing entries → one row per image with the record the local build stores
  (`service.ingest.Item`: name, sha256, size, metadata), its pixels at the model's resolution decoded by
  the local build's decoder (`service.ingest.FileDecoder`), or the error of an image that could not be
  read or decoded (it fails alone, with the local build's message).
* `Sketcher`: loads the model once per worker, checks it against the index's pins and sketches batches
  of rows with the index's projection, as `ModelIndex.sketch` does for the local build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from model.data import ImageDecodeError
from service.bulk.sources import Entry, read_entries
from service.ingest import FileDecoder, Item, index_record


def chunk_row(shard: int, first: int, entries: list[Entry]) -> dict:
    """One unit of decode work: entries first, first+1, … of the listing, all in shard `shard`."""
    return {"shard": shard, "first": first, "entries": json.dumps([e.to_dict() for e in entries])}


@dataclass(frozen=True)
class DecodeChunk:
    """Read and decode a chunk's images (a CPU task)."""

    resolution: int
    reduced: bool = False  # JPEGs decoded at a reduced DCT scale, as the index pins (`ModelIndex.decode_fit`)

    def __call__(self, chunk: dict) -> list[dict]:
        entries = [Entry(**e) for e in json.loads(chunk["entries"])]
        first, shard = int(chunk["first"]), int(chunk["shard"])
        return [
            {"shard": shard, "pos": first + i, **self.row(entry, data)}
            for i, (entry, data) in enumerate(zip(entries, read_entries(entries)))
        ]

    def row(self, entry: Entry, data: bytes | Exception) -> dict:
        """An image's record, error ('' if none) and pixels (zeros if it has none)."""
        pixels = np.zeros((3, self.resolution, self.resolution), np.uint8)
        if isinstance(data, Exception):  # the local build stops here; a cluster job reports it and goes on
            record = {"name": entry.name, "sha256": "", "size": 0, "metadata": entry.metadata}
            return _row(record, f"cannot read {entry.source}: {data}", pixels)
        item = Item(data, entry.name, entry.metadata, source=entry.source)
        try:
            pixels = FileDecoder(self.resolution, self.reduced)(item.data, item.source)
        except ImageDecodeError as e:
            return _row(index_record(item), str(e), pixels)
        return _row(index_record(item), "", pixels)


def _row(record: dict, error: str, pixels: np.ndarray) -> dict:
    return {**record, "metadata": json.dumps(record["metadata"]), "error": error, "image": pixels}


class Sketcher:
    """The model (loaded once per worker: its GPU if it has one) and the index's projection."""

    def __init__(self, model: str | None, pins: dict, batch_size: int, threads: int = 0, precision: str = "fp32"):
        import torch

        from model.loading import load_embedder
        from model.parallel import SplitProjector
        from service.model_index import check_pins

        if threads > 0:
            torch.set_num_threads(threads)
        # device auto: CUDA when the worker has it
        embedder = load_embedder(model, batch_size=batch_size, precision=precision)
        self.projector = check_pins(pins, embedder)
        self._split = SplitProjector(self.projector)  # a worker of several CPU threads splits each batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows with pixels → the same rows with sketches instead (zeros for the unreadable)."""
        import torch

        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.projector.d), np.float32)
        if ok.any():  # ModelIndex.sketch's computation, on the worker's model
            vectors[ok] = self._split.embed(torch.from_numpy(np.ascontiguousarray(batch["image"][ok])))
        return {**{k: v for k, v in batch.items() if k != "image"}, "vector": vectors}
