"""Vector storage and search: FAISS product quantization, a durable metadata store and a write-ahead log.

No torch, no images: `model/` makes the vectors, `service/` connects the two.
"""

from index.collection import (
    AddResult,
    AFVIndex,
    AFVIndexError,
    Hit,
    IndexCorruptError,
    IndexExistsError,
    IndexFullError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexReadOnlyError,
    IndexWriteError,
    InvalidInputError,
    ItemNotFoundError,
)

__all__ = [
    "AFVIndex",
    "AddResult",
    "Hit",
    "AFVIndexError",
    "IndexCorruptError",
    "IndexExistsError",
    "IndexFullError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReadOnlyError",
    "IndexWriteError",
    "InvalidInputError",
    "ItemNotFoundError",
]
