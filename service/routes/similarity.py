"""Perceptual similarity: pair distance, 2AFC, set distance and raw embeddings."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from service.deps import EngineDep, ReadAuth, SettingsDep
from service.inputs import openapi_body, parse_body
from service.routes.common import IMAGE_ERRORS, limit_images, load_images
from service.schemas import (
    DistanceRequest,
    DistanceResponse,
    EmbedRequest,
    EmbedResponse,
    SetDistanceRequest,
    SetDistanceResponse,
    TwoAFCRequest,
    TwoAFCResponse,
)

router = APIRouter(prefix="/v1", tags=["similarity"], dependencies=[ReadAuth], responses=IMAGE_ERRORS)


@router.post("/distance", response_model=DistanceResponse, openapi_extra=openapi_body(DistanceRequest))
async def distance(request: Request, engine: EngineDep, settings: SettingsDep) -> DistanceResponse:
    """Fisher distance between two images, with each network block's share of the squared distance."""
    body = await parse_body(request, DistanceRequest, settings)
    x = await load_images(engine, settings, [("image_a", body.image_a), ("image_b", body.image_b)])
    [report] = await engine.distances(x[None])
    return DistanceResponse(distance=report.distance, layers=report.layers, regions=report.regions)


@router.post("/2afc", response_model=TwoAFCResponse, openapi_extra=openapi_body(TwoAFCRequest))
async def two_afc(request: Request, engine: EngineDep, settings: SettingsDep) -> TwoAFCResponse:
    """BAPPS two-alternative forced choice: which of p0, p1 is closer to ref."""
    body = await parse_body(request, TwoAFCRequest, settings)
    x = await load_images(engine, settings, [("ref", body.ref), ("p0", body.p0), ("p1", body.p1)])
    d0, d1 = (float(d) for d in (await engine.two_afc(x[None]))[0])
    return TwoAFCResponse(d0=d0, d1=d1, choice=0 if d0 <= d1 else 1)


@router.post("/set-distance", response_model=SetDistanceResponse, openapi_extra=openapi_body(SetDistanceRequest))
async def set_distance(request: Request, engine: EngineDep, settings: SettingsDep) -> SetDistanceResponse:
    """Distance between two image sets, as the model defines it (AFVs: between their mean vectors)."""
    body = await parse_body(request, SetDistanceRequest, settings)
    limit_images(len(body.images_a) + len(body.images_b), settings.max_images_per_request)
    xa = await load_images(engine, settings, [(f"images_a[{i}]", b) for i, b in enumerate(body.images_a)])
    xb = await load_images(engine, settings, [(f"images_b[{i}]", b) for i, b in enumerate(body.images_b)])
    d = await engine.set_distance(xa, xb)
    return SetDistanceResponse(distance=d, n_a=len(xa), n_b=len(xb))


@router.post("/embed", response_model=EmbedResponse, openapi_extra=openapi_body(EmbedRequest))
async def embed(request: Request, engine: EngineDep, settings: SettingsDep) -> EmbedResponse:
    """The image's compressed vector (the index's sketch of its AFV) and that vector's norm."""
    body = await parse_body(request, EmbedRequest, settings)
    v = (await engine.embed(await load_images(engine, settings, [("image", body.image)])))[0]
    return EmbedResponse(vector=v.tolist(), norm=float(np.linalg.norm(v.astype(np.float64))), dim=len(v))
