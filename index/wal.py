"""Durability helpers: atomic file replacement (temp file, fsync, rename) and a crash-safe manifest.

The write-ahead log itself is the `ops` table of the SQLite store (`index.store`): every add and
delete is committed there (with its vector) before the caller gets an answer; the FAISS file is a
checkpoint that records the last log sequence number it contains, and `replay` applies the rest.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) for a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


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
