"""Index-level information."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from service.deps import EngineDep, ReadAuth

router = APIRouter(prefix="/v1/index", tags=["index"], dependencies=[ReadAuth])


@router.get("/stats")
async def stats(engine: EngineDep) -> dict[str, Any]:
    """Size, structure (flat / IVF-PQ, bytes per vector) and provenance (model, projection) of the index.

    The index folder is named, not located: server paths stay off the API."""
    stats = await engine.stats()
    stats["index"] = Path(stats.pop("path")).name
    return {
        **stats,
        "model_name": engine.extractor.name,
        "afv_dim": engine.extractor.dim,
        "method": engine.extractor.kind,
        "device": str(engine.extractor.device),
    }
