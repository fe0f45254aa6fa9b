"""The crash-safe manifest and log replay (atomic writes themselves are `durable.atomic_write`).

The write-ahead log itself is the `ops` table of the SQLite store (`index.store`): every add and
delete is committed there (with its vector) before the caller gets an answer; the FAISS file is a
checkpoint that records the last log sequence number it contains, and `replay` applies the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from durable import atomic_write_bytes


def write_manifest(path: Path, manifest: dict) -> None:
    """Atomically write a JSON manifest."""
    atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())


def replay(store, vindex, since_seq: int) -> int:
    """Apply the store's logged adds/deletes after `since_seq` to `vindex`; returns ops applied.

    Ids are never reused, so an add later deleted is simply skipped; deletes of ids the checkpoint
    holds are removed. Idempotent for any `since_seq` at or after the checkpoint's.
    """
    ops = store.ops_since(since_seq)
    pending: dict[int, None] = {}
    removed = []
    for _, op, item_id in ops:
        if op == "add":
            pending[item_id] = None
        elif item_id in pending:
            del pending[item_id]
        else:
            removed.append(item_id)
    vindex.remove(removed)
    vecs = store.vectors(pending)
    live = [i for i in pending if i in vecs]
    if live:
        vindex.add(np.stack([vecs[i] for i in live]), np.array(live, dtype=np.int64))
    return len(ops)


def read_manifest(path: Path) -> dict:
    """Read a JSON manifest; raises ValueError if it is not a JSON object."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data
