"""Helpers shared by the routes: documented error responses, ids, records, image decoding, distances."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from service.engine import Engine
from service.errors import APIError, not_found
from service.inputs import decode_images, decode_one
from service.schemas import ErrorResponse
from service.settings import Settings

Responses = dict[int | str, dict[str, Any]]  # a route's documented `responses`, as FastAPI takes them

IMAGE_ERRORS: Responses = {
    400: {"model": ErrorResponse, "description": "Not a readable image (empty, corrupt, truncated)."},
    413: {"model": ErrorResponse, "description": "Request/image too large or too many pixels."},
    415: {"model": ErrorResponse, "description": "Neither multipart/form-data nor JSON."},
    422: {"model": ErrorResponse, "description": "Malformed JSON or invalid/missing fields."},
}
AUTH_ERRORS: Responses = {401: {"model": ErrorResponse, "description": "Missing or invalid API key."}}
NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "Unknown image id."}}
RECORD_FIELDS = ("id", "name", "sha256", "size", "added_at")


def parse_id(raw: str) -> int:
    """Path/JSON id → int; anything else is an unknown id (404), not a validation error."""
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise not_found(f"image {raw!r}") from None
    if value < 0 or value >= 2**63:
        raise not_found(f"image {raw!r}")
    return value


def split_record(rec: dict) -> tuple[dict, dict]:
    """Index record → (record fields, user metadata), with server paths (indexes built by older CLIs
    stored absolute file paths) cut to the file's name."""
    meta = {k: _no_server_path(v) if k == "path" else v for k, v in rec.items() if k not in RECORD_FIELDS}
    return {k: rec.get(k) for k in RECORD_FIELDS}, meta


def _no_server_path(value: Any) -> Any:
    if isinstance(value, str) and (value.startswith("/") or PureWindowsPath(value).drive != ""):
        return PurePosixPath(value.split("::")[-1]).name
    return value


def request_decoder(engine: Engine, settings: Settings):
    """The ingest pipeline's decode step for HTTP uploads: the request limits, errors as APIError."""

    def decode(data: bytes, source: str) -> np.ndarray:
        with engine.metrics.stage("decode"):
            return decode_one(data, source, settings, engine.extractor.preprocess, engine.decode_fit)

    return decode


async def load_images(engine: Engine, settings: Settings, items: list[tuple[str, bytes]]) -> np.ndarray:
    """[(field name, bytes)] → n×3×R×R uint8 at the model's resolution (decoded off the loop)."""
    with engine.metrics.stage("decode"):
        return await decode_images(items, settings, engine.extractor.preprocess, engine.decode_fit)


def limit_images(n: int, limit: int) -> None:
    """413 when one request carries more images than allowed."""
    if n > limit:
        raise APIError(413, "payload_too_large", f"{n} images in one request; the limit is {limit}")
