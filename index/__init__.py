"""Compressed AFV index: projection, FAISS product quantization and a durable metadata store."""

from index.collection import (
    AddResult,
    AFVIndex,
    AFVIndexError,
    Hit,
    IndexCorruptError,
    IndexError_,
    IndexExistsError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexReadOnlyError,
    InvalidInputError,
)
from index.projection import ProjectionError, Projector

__all__ = [
    "AFVIndex",
    "AddResult",
    "Hit",
    "AFVIndexError",
    "IndexError_",
    "IndexCorruptError",
    "IndexExistsError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReadOnlyError",
    "InvalidInputError",
    "ProjectionError",
    "Projector",
]
