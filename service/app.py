"""The FastAPI application: `create_app(settings, resources)`; the model and index are loaded once, in the
lifespan, unless ready-made `Resources` are passed (tests pass a small fake embedder this way)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.engine import Engine, Resources, StartupError
from service.errors import BodySizeLimitMiddleware, install_error_handlers
from service.metrics import Metrics, MetricsMiddleware
from service.routes import health, images, index, jnd, search, similarity, ui
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Perceptual similarity (Fisher distance between Adversarial Fisher Vectors), BAPPS-style
2AFC and JND judgments, and reverse image search over a compressed index.

Images: `multipart/form-data` file uploads, or JSON with base64 strings. Write endpoints need
`Authorization: Bearer <key>` (keys from `AFV_API_KEYS`). Errors are JSON:
`{"error": {"code", "message", "detail"}}`."""


def api_keys(settings: Settings) -> list[str]:
    """The configured keys, or one generated now and logged loudly (for `make serve` users)."""
    if settings.api_keys:
        return list(settings.api_keys)
    key = secrets.token_urlsafe(24)
    log.warning(
        "!!! No API key configured (AFV_API_KEYS). Generated one for this run; write endpoints "
        "need:  Authorization: Bearer %s  !!!",
        key,
    )
    return [key]


def _lifespan(settings: Settings, resources: Resources | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.api_keys = api_keys(settings)
        try:
            loaded = resources if resources is not None else await run_in_threadpool(Resources.load, settings)
        except StartupError as e:
            log.error("cannot start: %s", e)
            raise
        engine = Engine(loaded, settings, app.state.metrics)
        await engine.start()
        app.state.engine = engine
        demo = None
        if settings.demo_collection is not None and settings.index_dir is None and not engine.read_only:
            demo = asyncio.create_task(engine.seed_demo(settings.demo_collection))
        try:
            yield
        finally:
            if demo is not None:
                demo.cancel()
                await asyncio.gather(demo, return_exceptions=True)
            app.state.engine = None
            await engine.stop()

    return lifespan


def create_app(settings: Settings | None = None, resources: Resources | None = None) -> FastAPI:
    """Build the app; the model and index (or the given `resources`) are loaded when it starts, not here."""
    settings = settings or get_settings()
    app = FastAPI(
        title="AFV similarity service", version="1", description=DESCRIPTION, lifespan=_lifespan(settings, resources)
    )
    app.state.settings, app.state.metrics, app.state.engine = settings, Metrics(), None
    install_error_handlers(app)
    for module in (health, similarity, jnd, search, images, index, ui):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
