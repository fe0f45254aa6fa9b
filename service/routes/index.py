"""Index-level information."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import EngineDep, ReadAuth

router = APIRouter(prefix="/v1/index", tags=["index"], dependencies=[ReadAuth])


@router.get("/stats")
async def stats(engine: EngineDep) -> dict[str, Any]:
    """Size, structure (flat / IVF-PQ, bytes per vector) and provenance (model, projection) of the index."""
    return {
        **await engine.stats(),
        "model_name": engine.extractor.name,
        "afv_dim": engine.extractor.dim,
        "method": engine.extractor.kind,
        "device": str(engine.extractor.device),
    }
