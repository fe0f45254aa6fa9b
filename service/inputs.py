"""Request bodies that carry images: multipart/form-data uploads or JSON with base64 strings.

A route names one pydantic model (service.schemas) whose image fields are `ImageBytes` (or lists of
them). `parse_body` fills it from either content type; `openapi_body` documents both. JSON bodies are
validated strictly (`"k": "5"` or `"k": true` is a 422); form fields are text, so their values are
converted (`k=5`, `rerank=true`). A model's `upload_names` fields default to the uploads' file names.
Images are then decoded (size and pixel limits; any mode → RGB) and preprocessed in a thread, never on
the event loop.
"""

from __future__ import annotations

import copy
import io
import json
import re
from typing import Any, TypeVar, get_args, get_origin

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from model.data import ImageDecodeError, declared_pixels, decode_image
from service.errors import APIError, BodyTooLarge, validation_message
from service.multipart import Part, split_form, text
from service.settings import Settings

# Images up to 64×64 (the models' own sizes) decode on the event loop: decoded and fitted in 0.14 ms
# (32 px JPEG) to 0.28 ms (64 px), about what the loop spends handing work to a thread and back (0.12 ms
# idle, more under load). Larger ones go to the thread pool, so that they never hold the loop up.
INLINE_PIXELS = 64 * 64
INLINE_BYTES = 64 * 1024
FAST_FORM_BYTES = 4 * 1024 * 1024  # larger multipart bodies stream through Starlette's parser (spooled)

M = TypeVar("M", bound=BaseModel)

MULTIPART, JSON = "multipart/form-data", "application/json"
MAX_UPLOAD_NAME = 255  # characters of an upload's file name kept as the default `name`
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) is list:
        return True
    return any(_is_list(a) for a in get_args(annotation))


def openapi_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` documenting MODEL as multipart (binary files) and as JSON (base64 strings)."""
    form = model.model_json_schema()
    js = copy.deepcopy(form)
    _binary_to_base64(js)
    objects = [name for name, prop in form.get("properties", {}).items() if _is_object(prop)]
    multipart: dict[str, Any] = {"schema": form}
    if objects:  # JSON objects travel as JSON-encoded form fields
        multipart["encoding"] = {name: {"contentType": JSON} for name in objects}
    return {"requestBody": {"required": True, "content": {MULTIPART: multipart, JSON: {"schema": js}}}}


def _is_object(prop: dict) -> bool:
    if prop.get("type") == "object":
        return True
    items = prop.get("items")
    return isinstance(items, dict) and items.get("type") == "object"


def _binary_to_base64(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("format") == "binary":
            node["format"] = "byte"
            node["contentEncoding"] = "base64"
        for v in node.values():
            _binary_to_base64(v)
    elif isinstance(node, list):
        for v in node:
            _binary_to_base64(v)


async def parse_body(request: Request, model: type[M], settings: Settings) -> M:
    """Fill MODEL from a multipart or JSON body; 415/422/413 with a clear message otherwise."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == MULTIPART:
        data, strict = await _read_form(request, model, settings), False  # text fields: "5" → 5
    elif ctype == JSON or ctype.endswith("+json"):
        data, strict = await _read_json(request), None  # the models' own (strict) field types
    else:
        raise APIError(
            415,
            "unsupported_media_type",
            f"send {MULTIPART} (file uploads) or {JSON} (base64 images), not {ctype or 'no content type'}",
        )
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as e:
        errors = e.errors(include_input=False, include_url=False)
        raise APIError(
            422,
            "validation_error",
            validation_message(errors),
            detail=[{k: err[k] for k in ("loc", "msg", "type")} for err in errors],
        ) from None


async def _read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise APIError(422, "validation_error", f"malformed JSON body: {e}") from None


async def _read_form(request: Request, model: type[BaseModel], settings: Settings) -> dict:
    max_files, max_fields, max_part = settings.max_images_per_request * 2 + 2, 64, settings.max_image_bytes
    form = await _plain_form(request, max_files, max_fields, max_part)
    if form is None:
        try:
            form = await request.form(max_files=max_files, max_fields=max_fields, max_part_size=max_part)
        except BodyTooLarge:
            raise
        except (HTTPException, MultiPartException, ValueError) as e:  # malformed multipart
            raise APIError(400, "bad_request", f"malformed multipart body: {_multipart_reason(e)}") from None
    try:
        data: dict[str, Any] = {}
        for name, f in model.model_fields.items():
            values = form.getlist(name)
            if not values:
                continue
            values = [await _form_value(v, name, settings) for v in values]
            data[name] = values if _is_list(f.annotation) else values[0]
        _default_upload_names(form, model, data)
        return data
    finally:
        await form.close()


async def _plain_form(request: Request, max_files: int, max_fields: int, max_part: int) -> FormData | None:
    """The form of a small, plain multipart body through `service.multipart`'s fast path; None for any
    other body, which Starlette's parser then reads (and rejects with its own errors where malformed)."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > FAST_FORM_BYTES:
        return None
    parts = split_form(await request.body(), request.headers.get("content-type", ""), max_files + max_fields)
    if parts is None:
        return None
    files = [p for p in parts if p.filename is not None]
    if len(files) > max_files or len(parts) - len(files) > max_fields:
        return None
    if any(p.filename is None and len(p.data) > max_part for p in parts):
        return None
    return FormData([(p.name, _upload(p) if p.filename is not None else text(p.data)) for p in parts])


class _InMemory(io.BytesIO):
    """Bytes that UploadFile reads in place: it looks for SpooledTemporaryFile's `_rolled` and sends
    reads of any other file to the thread pool."""

    _rolled = False


def _upload(part: Part) -> UploadFile:
    headers = Headers({"content-type": part.content_type} if part.content_type else {})
    return UploadFile(_InMemory(part.data), size=len(part.data), filename=part.filename, headers=headers)


def _default_upload_names(form: FormData, model: type[BaseModel], data: dict[str, Any]) -> None:
    """Fill a model's `upload_names` fields (`name` ← `image`) from the file names when not given."""
    for target, source in getattr(model, "upload_names", {}).items():
        uploads = form.getlist(source)
        if target in data or not uploads:
            continue
        names = [upload_name(v.filename) if isinstance(v, UploadFile) else None for v in uploads]
        data[target] = names if _is_list(model.model_fields[target].annotation) else names[0]


def _multipart_reason(e: BaseException) -> str:
    """The parser's reason, not just Starlette's "Invalid multipart data.": the chained causes say why."""
    reason = str(getattr(e, "detail", e))
    causes: list[str] = []
    cause = e.__cause__ or e.__context__
    while cause is not None and len(causes) < 4:
        if str(cause) not in (reason, *causes):
            causes.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if any("header size" in c.lower() for c in causes):
        return f"{reason} A part's header is too long: is the upload's file name over about 4,000 characters?"
    return f"{reason} ({'; '.join(causes)})" if causes else reason


def upload_name(filename: str | None) -> str | None:
    """An upload's file name as a record name: its base name, no control characters, ≤ MAX_UPLOAD_NAME."""
    base = _CONTROL.sub("", re.split(r"[/\\]", filename or "")[-1]).strip()
    return base[:MAX_UPLOAD_NAME] if base not in ("", ".", "..") else None


async def _form_value(v: Any, name: str, settings: Settings) -> Any:
    if isinstance(v, UploadFile):
        if v.size is not None and v.size > settings.max_image_bytes:
            raise _too_big(name, settings)
        data = await v.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise _too_big(name, settings)
        return data
    return v


def _too_big(name: str, settings: Settings) -> APIError:
    return APIError(413, "payload_too_large", f"{name}: image exceeds {settings.max_image_bytes} bytes")


def decode_one(data: bytes, field: str, settings: Settings, preprocess, fit: int | None = None) -> np.ndarray:
    """Bytes → preprocessed 3×R×R uint8, or a 400/413 APIError naming the field; `fit`: decode JPEGs
    reduced for it (`model.data.decode_image`)."""
    if len(data) > settings.max_image_bytes:
        raise _too_big(field, settings)
    try:
        img = decode_image(data, max_pixels=settings.max_pixels, fit=fit)
        return preprocess(img)
    except ImageDecodeError as e:
        if "too large" in str(e) or "decompression bomb" in str(e).lower():
            raise APIError(413, "too_many_pixels", f"{field}: {e}") from None
        message = "not a readable image: unknown or unsupported format" if "cannot identify" in str(e) else e
        raise APIError(400, "invalid_image", f"{field}: {message}") from None
    except (OSError, ValueError) as e:  # PIL may still fail while resizing a broken image
        raise APIError(400, "invalid_image", f"{field}: not a readable image: {e}") from None


async def decode_images(
    items: list[tuple[str, bytes]], settings: Settings, preprocess, fit: int | None = None
) -> np.ndarray:
    """[(field, bytes)] → n×3×R×R uint8, decoded off the event loop unless every image is small."""

    def work() -> np.ndarray:
        return np.stack([decode_one(data, field, settings, preprocess, fit) for field, data in items])

    if all(_small(data) for _, data in items):
        return work()
    return await run_in_threadpool(work)


def _small(data: bytes) -> bool:
    """Whether an image decodes faster on the event loop than it is handed to a thread (≤ INLINE_PIXELS)."""
    pixels = declared_pixels(data) if len(data) <= INLINE_BYTES else None
    return pixels is not None and pixels <= INLINE_PIXELS
