"""`afv serve`: run the HTTP service with uvicorn (or, with --shards, the search router over shard replicas)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.cli.options import DeviceOpt, EmbeddingOpt, ModelOpt, PrecisionOpt, fail, precision_of

if TYPE_CHECKING:
    from service.engine import Resources
    from service.settings import Settings

log = logging.getLogger(__name__)


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1 = this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model: ModelOpt = None,
    index: Annotated[Path | None, typer.Option("--index", help="Index folder (default: DATA_DIR/index-MODEL).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    embedding: EmbeddingOpt = None,
    readout: Annotated[
        str | None,
        typer.Option(
            help="AFV models: global | pyramid-1-2-4 (spatial pyramid), optionally +lowres, +grey, +blocks; "
            "default: the model's own."
        ),
    ] = None,
    read_only: Annotated[
        bool,
        typer.Option(
            "--read-only", help="Serve an existing index without writing (no LOCK file; write routes answer 403)."
        ),
    ] = False,
    shards: Annotated[
        str | None,
        typer.Option(
            "--shards",
            help="Be the search router of a sharded index instead: URL,URL,… of the replicas serving "
            "`afv index shard`'s shard-000, shard-001, … in that order. Loads no model or index.",
        ),
    ] = None,
) -> None:
    """Serve similarity, 2AFC/JND judgments and reverse image search over HTTP (OpenAPI docs at /docs)."""
    import uvicorn

    from service.app import create_app
    from service.settings import get_settings

    if shards is not None:
        given = {"--model": model, "--index": index, "--embedding": embedding, "--readout": readout}
        clash = [name for name, value in given.items() if value is not None] + (["--read-only"] if read_only else [])
        if clash:
            fail(f"{', '.join(clash)}: the replicas load the model and index; the router (--shards) takes neither")
        _route(shards, host, port)
        return

    if precision is not None:
        precision = precision_of(precision)  # before anything loads
    updates: dict[str, Any] = {"device": device}
    if model is not None:
        updates["model"] = model
    if index is not None:
        updates["index_dir"] = index
    if embedding is not None:
        updates["embedding"] = embedding
    if precision is not None:
        updates["precision"] = precision
    if readout is not None:
        updates["readout"] = readout
    if read_only:
        updates["read_only"] = True
    try:
        settings = get_settings().model_copy(update=updates)
    except ValueError as e:  # invalid AFV_* environment / .env values
        fail(f"invalid settings: {e}")
    if model is not None and not model.exists():
        fail(f"no such model folder: {model}")
    _warn_if_public(host)
    resources = _load(settings)
    uvicorn.run(create_app(settings, resources), host=host, port=port, log_level="info")


def _route(shards: str, host: str, port: int) -> None:
    """Run the search router over the replicas named in `shards`, after checking that they are those shards."""
    import asyncio

    import uvicorn

    from service.router import check_shards, create_router_app, parse_shard_urls
    from service.settings import get_settings

    try:
        urls = parse_shard_urls(shards)
    except ValueError as e:
        fail(f"--shards: {e}")
    try:
        settings = get_settings()
    except ValueError as e:  # invalid AFV_* environment / .env values
        fail(f"invalid settings: {e}")
    failures = asyncio.run(check_shards(urls, settings))
    wrong = [str(f) for f in failures if f.code == "shard_mismatch"]
    if wrong:
        fail("; ".join(wrong))
    for f in failures:  # a replica still starting: searches answer 503 naming it until it is up
        log.warning("%s", f)
    _warn_if_public(host)
    uvicorn.run(create_router_app(settings, urls), host=host, port=port, log_level="info")


def _warn_if_public(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service is reachable from other machines", host)


def _load(settings: Settings) -> Resources:
    """Model and index loaded before the server binds, so that a bad model or index is one line, not a trace."""
    from index import AFVIndexError
    from service.engine import Resources, StartupError

    try:
        return Resources.load(settings)  # checks the index folder (StartupError) before loading the model
    except StartupError as e:
        fail(str(e))
    except (AFVIndexError, ValueError, FileNotFoundError) as e:
        fail(f"cannot serve: {e}")
