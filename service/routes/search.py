"""Reverse image search: nearest indexed images to an uploaded image or to an indexed id.

`/v1/search` in two steps, for a router in front of index shards (`service.router`): `/v1/search:sketch`
gives the vectors a query is searched with (one model pass, on one replica), `/v1/search:vectors`
searches with given vectors (on every shard, no model work).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from index.collection import merge_hits
from service.deps import EngineDep, ReadAuth, SettingsDep
from service.inputs import openapi_body, parse_body
from service.routes.common import IMAGE_ERRORS, NOT_FOUND, load_images, parse_id, split_record
from service.schemas import SearchHit, SearchRequest, SearchResponse, SketchRequest, SketchResponse, VectorSearchRequest

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


@router.post(
    "/search:sketch",
    response_model=SketchResponse,
    responses={**IMAGE_ERRORS, **NOT_FOUND},
    openapi_extra=openapi_body(SketchRequest),
)
async def sketch(request: Request, engine: EngineDep, settings: SettingsDep) -> SketchResponse:
    """The vectors `/v1/search` would search with: the image's sketch (and its mirror image's), or the stored
    vector of an indexed `id`."""
    body = await parse_body(request, SketchRequest, settings)
    if body.id is not None:
        q = await engine.vector_of(parse_id(body.id))
    else:
        assert body.image is not None  # SketchRequest's validator: exactly one of `image` and `id`
        x = await load_images(engine, settings, [("image", body.image)])
        q = await engine.embed(np.concatenate([x, x[..., ::-1]]) if body.mirror else x)  # as Engine.search_images
    return SketchResponse(vectors=q.tolist())


@router.post("/search:vectors", response_model=SearchResponse, responses={422: IMAGE_ERRORS[422]})
async def search_vectors(body: VectorSearchRequest, engine: EngineDep) -> SearchResponse:
    """The `k` nearest indexed images to any of the given vectors (a query's sketches), nearest first."""
    lists = await engine.search(np.array(body.vectors, dtype=np.float32), body.k, body.where, body.rerank)
    return SearchResponse(results=[_hit(h) for h in merge_hits(lists, body.k)])


def _hit(h) -> SearchHit:
    rec, meta = split_record(h.metadata)
    return SearchHit(id=str(h.id), distance=h.distance, name=rec.get("name"), metadata=meta)
