"""Reverse image search: nearest indexed images to an uploaded image or to an indexed id."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import EngineDep, ReadAuth, SettingsDep
from service.inputs import openapi_body, parse_body
from service.routes.common import IMAGE_ERRORS, NOT_FOUND, load_images, parse_id, split_record
from service.schemas import SearchHit, SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[ReadAuth])


@router.post(
    "/search",
    response_model=SearchResponse,
    responses={**IMAGE_ERRORS, **NOT_FOUND},
    openapi_extra=openapi_body(SearchRequest),
)
async def search(request: Request, engine: EngineDep, settings: SettingsDep) -> SearchResponse:
    """The `k` nearest indexed images, nearest first (optionally filtered by metadata `where`)."""
    body = await parse_body(request, SearchRequest, settings)
    if body.id is not None:
        q = await engine.vector_of(parse_id(body.id))
        hits = (await engine.search(q, body.k, body.where, body.rerank))[0]
    else:
        assert body.image is not None  # SearchRequest's validator: exactly one of `image` and `id`
        x = await load_images(engine, settings, [("image", body.image)])
        hits = await engine.search_images(x, body.k, body.where, body.rerank, body.mirror)
    return SearchResponse(results=[_hit(h) for h in hits])


def _hit(h) -> SearchHit:
    rec, meta = split_record(h.metadata)
    return SearchHit(id=str(h.id), distance=h.distance, name=rec.get("name"), metadata=meta)
