"""The indexed collection: add (one or many), get and delete images. Writes need an API key."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request

from service.deps import EngineDep, ReadAuth, SettingsDep, WriteAuth
from service.errors import APIError
from service.ingest import Item, Outcome
from service.inputs import openapi_body, parse_body
from service.routes.common import (
    AUTH_ERRORS,
    IMAGE_ERRORS,
    NOT_FOUND,
    limit_images,
    parse_id,
    request_decoder,
    split_record,
)
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

router = APIRouter(prefix="/v1", tags=["images"])


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
    item = Item(body.image, body.name, body.metadata or {}, source="image")
    outcome = (await engine.add_images([item], request_decoder(engine, settings), (APIError,)))[0]
    if outcome.error is not None:
        raise outcome.error
    return ImageAdded(id=str(outcome.id), duplicate=outcome.duplicate)


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
    names: Sequence[str | None] = body.names or [None] * len(body.images)
    metas = body.metadata or [None] * len(body.images)
    items = [Item(data, names[i], metas[i] or {}, source=f"images[{i}]") for i, data in enumerate(body.images)]
    outcomes = await engine.add_images(items, request_decoder(engine, settings), (APIError,))
    results = [_batch_item(i, o) for i, o in enumerate(outcomes)]
    failed = sum(r.error is not None for r in results)
    return BatchAddResponse(results=results, added=len(results) - failed, failed=failed)


def _batch_item(i: int, outcome: Outcome) -> BatchItem:
    if isinstance(outcome.error, APIError):
        return BatchItem(index=i, error=ErrorBody(code=outcome.error.code, message=outcome.error.message))
    return BatchItem(index=i, id=str(outcome.id), duplicate=outcome.duplicate)


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
