"""Liveness, readiness and Prometheus metrics (no auth: for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service.errors import error_response
from service.schemas import ErrorResponse, Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health()


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorResponse}})
async def readyz(request: Request):
    """Model and index loaded: ready to serve."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return error_response(503, "not_ready", "the model and index are still loading")
    ext = engine.extractor
    return Ready(
        ready=True,
        model=ext.name,
        model_hash=ext.model_hash,
        method=ext.kind,
        dim=ext.dim,
        device=str(ext.device),
        index_images=await run_in_threadpool(lambda: engine.index.count),
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body, ctype = await run_in_threadpool(request.app.state.metrics.render)  # reads the index size
    return Response(body, media_type=ctype)
