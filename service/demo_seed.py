"""Index the bundled demo collection once into an empty index, so a fresh `make serve` can search.

Runs as a background task after start-up (the server answers meanwhile), through the ingest pipeline
in chunks, so the collection is searchable as it goes. A marker file in the index folder records that
it ran, so deleting every image does not bring the demo back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from anyio import to_thread

from model.data import ImageDecodeError, iter_records
from service.ingest import Item, batched, model_decoder

log = logging.getLogger(__name__)

MARKER = "demo-seeded"
CHUNK = 64


def demo_items(folder: Path) -> list[Item]:
    """Every image of the demo folder, labelled by its sub-folder."""
    return [
        Item(
            rec.data, rec.name, {"label": rec.name.split("/")[0] if "/" in rec.name else "", "source": "demo"}, rec.name
        )
        for rec in iter_records(folder)
    ]


async def seed(engine, folder: Path) -> None:
    """Embed and add every image of FOLDER if the index is empty and was never seeded."""
    marker = engine.settings.resolved_index_dir / MARKER
    if marker.exists() or engine.index.count > 0 or not folder.is_dir():
        return
    log.info("indexing the demo collection %s (once; searchable as it goes)", folder)
    items = await to_thread.run_sync(demo_items, folder)
    decode, n = model_decoder(engine.extractor, engine.decode_fit), 0
    for chunk in batched(items, CHUNK):
        for item, outcome in zip(chunk, await engine.add_images(chunk, decode, (ImageDecodeError,))):
            if outcome.error is not None:
                log.warning("demo: skipping %s: %s", item.name, outcome.error)
            n += outcome.ok
    marker.write_text(f"{n} images from {folder}\n")
    log.info("demo collection indexed: %d images", n)
