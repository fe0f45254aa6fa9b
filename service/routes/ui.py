"""The reverse-image-search web page at `/` and the thumbnails it shows."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from service.deps import EngineDep, ReadAuth, SettingsDep
from service.errors import APIError
from service.routes.common import parse_id

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["ui"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """Upload or pick an image; see its nearest indexed images as a grid with distances."""
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@router.get(
    "/v1/images/{image_id}/file",
    dependencies=[ReadAuth],
    responses={404: {"description": "unknown id, or the image's bytes are not kept"}},
)
async def image_file(image_id: str, engine: EngineDep, settings: SettingsDep) -> FileResponse:
    """The image file itself, for images of the demo collection (the index keeps no pixels)."""
    rec = await engine.get(parse_id(image_id))
    root = settings.demo_collection
    name = rec.get("name") or ""
    if rec.get("source") != "demo" or root is None:
        raise APIError(404, "no_file", f"image {image_id} has no stored file (only demo images do)")
    path = (root / name).resolve()
    if not path.is_file() or root.resolve() not in path.parents:
        raise APIError(404, "no_file", f"the file of image {image_id} is missing")
    return FileResponse(path)
