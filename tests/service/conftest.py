"""Two ways to run the service in tests, and test images.

* `api`: the app on FastAPI's TestClient over a `FakeEmbedder` (no model to load): most API tests.
* `live`: a real uvicorn server on 127.0.0.1 (a free port, in a thread) with the bundled model, for
  the few end-to-end, fuzz and browser tests that need real sockets or real Fisher distances.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.engine import Resources
from service.model_index import ModelIndex
from service.settings import Settings
from tests.service.fakes import FakeEmbedder
from tests.tiny_model import extractor, image_batch, images  # noqa: F401

API_KEY = "test-key-0123456789"
CIFAR = Path(__file__).parents[1] / "fixtures" / "cifar10"


@dataclass
class LiveServer:
    url: str
    settings: Settings
    server: uvicorn.Server

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}


def test_settings(data_dir: Path, **overrides) -> Settings:
    """Small limits so the limit tests stay cheap; no demo collection; no warm-up; the bundled weights read out whole.

    The whole-image read-out embeds ~6× faster than the default's 4×4 pyramid, which keeps the many
    app start-ups (each fits the synthetic JND threshold) cheap; the pyramid default itself is tested
    in tests/model/test_bundled.py and tests/model/test_pyramid.py.
    """
    base = {
        "data_dir": data_dir,
        "demo_collection": None,
        "api_keys": [API_KEY],
        "device": "cpu",
        "readout": "global",
        "max_request_bytes": 3_000_000,
        "max_image_bytes": 1_000_000,
        "max_pixels": 4_000_000,
        "max_images_per_request": 32,
        "warm_up": False,  # tested on its own (test_engine): every app start-up here would pay it
    }
    return Settings(**{**base, **overrides})


test_settings.__test__ = False  # not a test


def start_server(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.started:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return server, thread, url
            except httpx.HTTPError:
                pass
        if not thread.is_alive():
            raise RuntimeError("server thread died during start-up")
        time.sleep(0.05)
    raise RuntimeError("server did not become ready in 60 s")


def stop_server(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    settings = test_settings(tmp_path_factory.mktemp("afv-data"))
    server, thread, url = start_server(settings)
    yield LiveServer(url, settings, server)
    stop_server(server, thread)


@dataclass
class InProcessApp:
    """The app on a started TestClient (lifespan run once); `client()` mirrors `LiveServer.client()`."""

    settings: Settings
    started: TestClient

    @contextlib.contextmanager
    def client(self, headers: dict[str, str] | None = None, **kw) -> Iterator[TestClient]:
        self.started.headers = httpx.Headers(headers or {})
        yield self.started

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}


def fake_app(data_dir: Path, **overrides) -> tuple[TestClient, Settings]:
    """An un-started app over a fresh index filled by a `FakeEmbedder` (enter the client to start it)."""
    settings = test_settings(data_dir, **overrides)
    embedder = FakeEmbedder()
    resources = Resources(embedder, ModelIndex.open_or_create(data_dir / "index-fake", embedder))
    return TestClient(create_app(settings, resources)), settings


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[InProcessApp]:
    client, settings = fake_app(tmp_path_factory.mktemp("afv-api"))
    with client as started:
        yield InProcessApp(settings, started)


# ---- images ------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def cifar(i: int) -> Image.Image:
    files = sorted(CIFAR.rglob("*.jpg"))
    return Image.open(files[i * 7 % len(files)]).convert("RGB")


def noisy(img: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    a = np.asarray(img, dtype=np.float64)
    a = a + np.random.default_rng(seed).normal(0, sigma, a.shape)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def png(i: int) -> bytes:
    return encode(cifar(i))
