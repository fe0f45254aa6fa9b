"""`Annotated` dependency aliases: settings, loaded resources, API-key checks and the read-only refusal."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.engine import Engine
from service.errors import APIError
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`.")


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with (`create_app(settings)`; default: `get_settings()`).

    Read from app state rather than through `dependency_overrides`, which FastAPI re-analyses on
    every request."""
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise APIError(503, "not_ready", "the model and index are still loading")
    return engine


def key_is_valid(given: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    ok = False
    for key in keys:
        ok |= secrets.compare_digest(given.encode(), key.encode())
    return ok


def _check_key(request: Request, creds: HTTPAuthorizationCredentials | None) -> None:
    keys: list[str] = request.app.state.api_keys
    if creds is None or not key_is_valid(creds.credentials, keys):
        raise APIError(
            401,
            "unauthorized",
            "missing or invalid API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_write_key(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Write endpoints: always need a key."""
    _check_key(request, creds)


async def require_writable(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Index writes: a key (401 first), then an index not served read-only (403 `read_only`, body unread)."""
    _check_key(request, creds)
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:  # not loaded yet: the route's EngineDep answers 503 not_ready
        engine.check_writable()


async def require_read_key(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Read endpoints: need a key only when `AFV_AUTH_READS` is set."""
    if settings.auth_reads:
        _check_key(request, creds)


SettingsDep = Annotated[Settings, Depends(app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
WriteAuth = Depends(require_writable)  # routes that write to the index
WriteKeyAuth = Depends(require_write_key)  # routes that need a key but write only on request (JND `save`)
ReadAuth = Depends(require_read_key)
