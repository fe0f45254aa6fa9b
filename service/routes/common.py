"""Helpers shared by the routes: documented error responses, image decoding, distances."""

from __future__ import annotations

import numpy as np

from service.engine import Engine
from service.errors import APIError
from service.inputs import decode_images
from service.schemas import ErrorResponse
from service.settings import Settings

IMAGE_ERRORS = {
    400: {"model": ErrorResponse, "description": "Not a readable image (empty, corrupt, truncated)."},
    413: {"model": ErrorResponse, "description": "Request/image too large or too many pixels."},
    415: {"model": ErrorResponse, "description": "Neither multipart/form-data nor JSON."},
    422: {"model": ErrorResponse, "description": "Malformed JSON or invalid/missing fields."},
}
AUTH_ERRORS = {401: {"model": ErrorResponse, "description": "Missing or invalid API key."}}
NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown image id."}}


async def load_images(engine: Engine, settings: Settings, items: list[tuple[str, bytes]]) -> np.ndarray:
    """[(field name, bytes)] → n×3×R×R uint8 at the model's resolution (decoded off the loop)."""
    with engine.metrics.stage("decode"):
        return await decode_images(items, settings, engine.extractor.preprocess)


def pair_distance(va: np.ndarray, vb: np.ndarray) -> float:
    """Fisher distance ‖va − vb‖ of two AFV rows (float64 accumulation)."""
    return float(np.linalg.norm(va.astype(np.float64) - vb.astype(np.float64)))


def limit_images(n: int, limit: int) -> None:
    """413 when one request carries more images than allowed."""
    if n > limit:
        raise APIError(413, "payload_too_large", f"{n} images in one request; the limit is {limit}")
