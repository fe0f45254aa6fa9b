"""The indexed collection: add (one or many), get and delete images. Writes need an API key."""

from __future__ import annotations

import hashlib

import numpy as np
from fastapi import APIRouter, Request

from service.deps import EngineDep, ReadAuth, SettingsDep, WriteAuth
from service.engine import Engine, parse_id, split_record
from service.errors import APIError
from service.inputs import openapi_body, parse_body
from service.routes.common import AUTH_ERRORS, IMAGE_ERRORS, NOT_FOUND, limit_images, load_images
from service.schemas import (
    AddImageRequest,
    BatchAddRequest,
    BatchAddResponse,
    BatchItem,
    Deleted,
    ErrorBody,
    ImageAdded,
    ImageInfo,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["images"])


def _record(data: bytes, name: str | None, metadata: dict | None) -> dict:
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "metadata": metadata or {}}


@router.post(
    "/images",
    response_model=ImageAdded,
    status_code=201,
    dependencies=[WriteAuth],
    responses={**AUTH_ERRORS, **IMAGE_ERRORS},
    openapi_extra=openapi_body(AddImageRequest),
)
async def add_image(request: Request, engine: EngineDep, settings: SettingsDep) -> ImageAdded:
    """Index one image with optional `name` and `metadata`; the same bytes again return the same id."""
    body = await parse_body(request, AddImageRequest, settings)
    x = await load_images(engine, settings, [("image", body.image)])
    result = (await engine.add(await engine.embed(x), [_record(body.image, body.name, body.metadata)]))[0]
    return ImageAdded(id=str(result.id), duplicate=result.duplicate)


@router.post(
    "/images:batch",
    response_model=BatchAddResponse,
    dependencies=[WriteAuth],
    responses={**AUTH_ERRORS, **IMAGE_ERRORS},
    openapi_extra=openapi_body(BatchAddRequest),
)
async def add_images(request: Request, engine: EngineDep, settings: SettingsDep) -> BatchAddResponse:
    """Index many images; each gets its own result (an unreadable image fails alone)."""
    body = await parse_body(request, BatchAddRequest, settings)
    limit_images(len(body.images), settings.max_images_per_request)
    names = body.names or [None] * len(body.images)
    metas = body.metadata or [None] * len(body.images)
    results = [BatchItem(index=i) for i in range(len(body.images))]
    ok = await _decode_each(engine, settings, body.images, results)
    if ok:
        x = np.stack([a for _, a in ok])
        added = await engine.add(await engine.embed(x), [_record(body.images[i], names[i], metas[i]) for i, _ in ok])
        for (i, _), r in zip(ok, added):
            results[i].id, results[i].duplicate = str(r.id), r.duplicate
    failed = sum(r.error is not None for r in results)
    return BatchAddResponse(results=results, added=len(results) - failed, failed=failed)


async def _decode_each(
    engine: Engine, settings: Settings, images: list[bytes], results: list[BatchItem]
) -> list[tuple[int, np.ndarray]]:
    """Decode every image alone; failures are recorded in `results`."""
    ok = []
    for i, data in enumerate(images):
        try:
            ok.append((i, (await load_images(engine, settings, [(f"images[{i}]", data)]))[0]))
        except APIError as e:
            results[i].error = ErrorBody(code=e.code, message=e.message)
    return ok


@router.get("/images/{image_id}", response_model=ImageInfo, dependencies=[ReadAuth], responses=NOT_FOUND)
async def get_image(image_id: str, engine: EngineDep) -> ImageInfo:
    """An indexed image's record: name, content hash, size, time added and metadata."""
    rec, meta = split_record(await engine.get(parse_id(image_id)))
    return ImageInfo(**{**rec, "id": str(rec["id"])}, metadata=meta)


@router.delete(
    "/images/{image_id}", response_model=Deleted, dependencies=[WriteAuth], responses={**AUTH_ERRORS, **NOT_FOUND}
)
async def delete_image(image_id: str, engine: EngineDep) -> Deleted:
    """Remove an image from the index."""
    iid = parse_id(image_id)
    await engine.delete(iid)
    return Deleted(id=str(iid))
