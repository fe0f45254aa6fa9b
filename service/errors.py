"""Every error leaves the server as JSON `{"error": {"code", "message", "detail"?}}` with a 4xx status.

Documented codes: 400 `invalid_image` (empty, corrupt, truncated, not an image) and `bad_request`;
401 `unauthorized`; 403 `read_only` (a write to a server started with `--read-only`); 404 `not_found`;
405 `method_not_allowed`; 413 `payload_too_large` (request or one image over the byte limit) and
`too_many_pixels` (decompression bombs); 415 `unsupported_media_type`; 422 `validation_error`
(malformed JSON, missing/invalid fields); 503 `not_ready`, `model_restarted` (the model process running
the request's pass died, e.g. killed for memory; a new one takes the next pass: retry) and
`index_unavailable` (also a write the storage refused: disk I/O error, read-only file system; the
message names the cause); 507
`insufficient_storage` (a write found the disk or quota full; nothing was half-written, retry once
space is freed). A 500 `internal_error` is a bug.

Below the routes, code raises domain errors (the index's, the model's); `DOMAIN_ERRORS` maps each to
its HTTP status and code here, in one place, so the engine and the ingest pipeline stay HTTP-free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index import AFVIndexError, IndexFullError, IndexReadOnlyError, InvalidInputError, ItemNotFoundError
from model.data import ImageDecodeError
from service.batching import BatcherClosed
from service.model_processes import ModelProcessDied

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "not_ready",
    507: "insufficient_storage",
}


class APIError(Exception):
    """An error with a status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.detail, self.headers = (status, code, message, detail, headers)


def not_found(what: str) -> APIError:
    return APIError(404, "not_found", f"{what} not found")


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        body["detail"] = jsonable_encoder(detail)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


# Starlette types every handler as taking an Exception; it calls each with the class it is registered for.
async def _api_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, APIError)
    return error_response(e.status, e.code, e.message, e.detail, e.headers)


async def _http_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, StarletteHTTPException)
    code = _STATUS_CODES.get(e.status_code, "error")
    return error_response(e.status_code, code, str(e.detail), headers=getattr(e, "headers", None))


async def _validation_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    return error_response(422, "validation_error", validation_message(e.errors()), detail=_clean(e.errors()))


# most specific first: (error class, status, code); an error's message becomes the response's message
DOMAIN_ERRORS: list[tuple[type[Exception], int, str]] = [
    (ItemNotFoundError, 404, "not_found"),
    (InvalidInputError, 422, "invalid_input"),
    (ImageDecodeError, 400, "invalid_image"),
    (BatcherClosed, 503, "not_ready"),
    (ModelProcessDied, 503, "model_restarted"),
    (IndexReadOnlyError, 403, "read_only"),
    (IndexFullError, 507, "insufficient_storage"),  # IndexWriteError with no_space; other write failures: 503
    (AFVIndexError, 503, "index_unavailable"),
]


def to_api_error(e: Exception) -> APIError | None:
    """The APIError a domain error stands for (None if it is not one: a bug, answered with 500)."""
    for cls, status, code in DOMAIN_ERRORS:
        if isinstance(e, cls):
            message = f"{e} not found" if cls is ItemNotFoundError else str(e)
            return APIError(status, code, message)
    return None


async def _domain_error(request: Request, e: Exception) -> JSONResponse:
    api = to_api_error(e)
    if api is None:
        return await _unexpected(request, e)
    if api.status >= 500:
        log.error("%s: %s", api.code, e)
    return await _api_error(request, api)


async def _unexpected(_: Request, e: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(500, "internal_error", f"internal error: {type(e).__name__}")


def validation_message(errors: Sequence[Any]) -> str:
    """The first validation problem in words: 'image_a: Field required'."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid"))


def _clean(errors: Sequence[Any]) -> list:
    """Validation errors without echoing the (possibly huge, binary) input back."""
    return [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in errors]


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    for cls, _, _ in DOMAIN_ERRORS:
        app.add_exception_handler(cls, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit (an HTTPException so that
    FastAPI's own body parsing re-raises it rather than turning it into a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds {limit} bytes")


async def _drain(receive: Receive) -> None:
    """Read and drop a request body, so that the error response reaches the client intact."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodySizeLimitMiddleware:
    """Reject bodies over `limit` bytes: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            if int(length) <= 4 * self.limit:
                await _drain(receive)  # else the unread body makes the kernel reset the connection
            await error_response(
                413, "payload_too_large", f"request body exceeds {self.limit} bytes", headers={"Connection": "close"}
            )(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)
