"""BAPPS just-noticeable difference: same/different judgments against a calibratable threshold."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from service.deps import EngineDep, ReadAuth, SettingsDep, WriteKeyAuth
from service.inputs import openapi_body, parse_body
from service.routes.common import (
    AUTH_ERRORS,
    IMAGE_ERRORS,
    limit_images,
    load_images,
)
from service.schemas import JNDCalibrateRequest, JNDRequest, JNDResponse, JNDThreshold

router = APIRouter(prefix="/v1/jnd", tags=["jnd"])


@router.post(
    "",
    response_model=JNDResponse,
    dependencies=[ReadAuth],
    responses=IMAGE_ERRORS,
    openapi_extra=openapi_body(JNDRequest),
)
async def jnd(request: Request, engine: EngineDep, settings: SettingsDep) -> JNDResponse:
    """Distance between two images and whether it is below the just-noticeable threshold."""
    body = await parse_body(request, JNDRequest, settings)
    x = await load_images(engine, settings, [("image_a", body.image_a), ("image_b", body.image_b)])
    [report] = await engine.distances(x[None])
    d, t = report.distance, engine.jnd_in_use
    return JNDResponse(distance=d, same=d <= t.threshold, threshold=t.threshold, threshold_source=t.source)


@router.get("/threshold", response_model=JNDThreshold, dependencies=[ReadAuth])
async def threshold(engine: EngineDep) -> JNDThreshold:
    """The threshold in use and where it came from (settings, calibrated, synthetic)."""
    return engine.jnd_in_use


@router.post(
    "/calibrate", response_model=JNDThreshold, dependencies=[WriteKeyAuth], responses={**AUTH_ERRORS, **IMAGE_ERRORS}
)
async def calibrate(body: JNDCalibrateRequest, engine: EngineDep, settings: SettingsDep) -> JNDThreshold:
    """Fit the threshold to judged pairs (distances or base64 image pairs; `same` ∈ [0, 1]).

    `save` writes it to the data folder: refused (403 `read_only`) by a server started with `--read-only`."""
    if body.save:
        engine.check_writable()
    with_images = [i for i, p in enumerate(body.pairs) if p.distance is None]
    limit_images(2 * len(with_images), settings.max_images_per_request)
    d = np.array([p.distance or 0.0 for p in body.pairs], dtype=np.float64)
    if with_images:
        items = [(f"pairs[{i}].{f}", getattr(body.pairs[i], f)) for i in with_images for f in ("image_a", "image_b")]
        x = await load_images(engine, settings, items)
        d[with_images] = [r.distance for r in await engine.distances(x.reshape(-1, 2, *x.shape[1:]))]
    same = np.array([p.same for p in body.pairs], dtype=np.float64)
    return await engine.calibrate_jnd(d, same, body.save)
