"""Liveness, readiness and Prometheus metrics (no auth: for orchestrators and scrapers).

`/readyz` answers 200 while reads can be served, with `writable: false` and `write_error` while index
writes fail (a full disk) or the index is served read-only: a replica whose disk is full still serves
search, and its next successful write clears the flag. `/readyz?writes=true` is the probe for write
traffic: 503 `writes_failing` (or `read_only`) instead.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.errors import error_response
from service.schemas import ErrorResponse, Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health()


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorResponse}})
async def readyz(request: Request, writes: bool = Query(False, description="Also require working writes.")):
    """Model and index loaded: ready to serve (and, with `writes=true`, index writes working)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return error_response(503, "not_ready", "the model and index are still loading")
    if writes and engine.read_only:
        return error_response(503, "read_only", "this server serves its index read-only")
    if writes and engine.write_error is not None:
        return error_response(503, "writes_failing", f"index writes are failing: {engine.write_error}")
    ext = engine.extractor
    return Ready(
        ready=True,
        model=ext.name,
        model_hash=ext.model_hash,
        method=ext.kind,
        dim=ext.dim,
        device=str(ext.device),
        index_images=await run_in_threadpool(lambda: engine.index.count),
        writable=engine.write_error is None and not engine.read_only,
        read_only=engine.read_only,
        write_error=engine.write_error,
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body, ctype = await run_in_threadpool(request.app.state.metrics.render)  # reads the index size
    return Response(body, media_type=ctype)
