"""Index the bundled demo collection once into an empty index, so a fresh `make serve` can search.

Runs as a background task after start-up (the server answers meanwhile). A marker file in the index
folder records that it ran, so deleting every image does not bring the demo back.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

from model.data import ImageDecodeError, decode_image, iter_records

log = logging.getLogger(__name__)

MARKER = "demo-seeded"
CHUNK = 64


def _load_chunks(folder: Path, preprocess) -> list[tuple[np.ndarray, list[dict]]]:
    chunks, arrays, records = [], [], []
    for rec in iter_records(folder):
        try:
            arrays.append(preprocess(decode_image(rec.data)))
        except ImageDecodeError as e:
            log.warning("demo: skipping %s: %s", rec.name, e)
            continue
        label = rec.name.split("/")[0] if "/" in rec.name else ""
        records.append(
            {
                "name": rec.name,
                "sha256": hashlib.sha256(rec.data).hexdigest(),
                "size": len(rec.data),
                "metadata": {"label": label, "source": "demo"},
            }
        )
        if len(arrays) == CHUNK:
            chunks.append((np.stack(arrays), records))
            arrays, records = [], []
    if arrays:
        chunks.append((np.stack(arrays), records))
    return chunks


async def seed(engine, folder: Path) -> None:
    """Embed and add every image of FOLDER if the index is empty and was never seeded."""
    marker = engine.settings.resolved_index_dir / MARKER
    if marker.exists() or engine.index.count > 0 or not folder.is_dir():
        return
    log.info("indexing the demo collection %s (once; searchable as it goes)", folder)
    chunks = await run_in_threadpool(_load_chunks, folder, engine.extractor.preprocess)
    n = 0
    for x, records in chunks:
        await engine.add(await engine.embed(x), records)
        n += len(records)
    marker.write_text(f"{n} images from {folder}\n")
    log.info("demo collection indexed: %d images", n)
