"""Atomic file replacement (temp file beside the target, fsync, rename, fsync the folder).

The one way this project replaces a file it must not lose or half-write: FAISS checkpoints and the
index manifest (`index/`), model checkpoints (`model/checkpoint.py`) and the JND calibration
(`service/jnd.py`). A crash leaves either the old file or the new one, never a mix. It is a leaf
package: it imports nothing of ours, so every layer may use it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def no_space(e: OSError) -> bool:
    """Whether a failed write found the disk or the quota full (as opposed to another storage failure)."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
