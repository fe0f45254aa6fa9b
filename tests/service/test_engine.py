"""The engine's model threads: several answer concurrent requests exactly as one does."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.service.conftest import start_server, stop_server, test_settings
from tests.service.test_e2e import b64, png


def _answers(url: str) -> tuple[list[float], list[list[float]]]:
    """Eight distances and eight index sketches, requested 16 at a time (so passes overlap)."""

    def distance(i: int) -> float:
        body = {"image_a": b64(png(i)), "image_b": b64(png(i + 8))}
        return httpx.post(f"{url}/v1/distance", json=body, timeout=60).json()["distance"]

    def sketch(i: int) -> list[float]:
        return httpx.post(f"{url}/v1/embed", files={"image": png(i)}, timeout=60).json()["vector"]

    with ThreadPoolExecutor(16) as pool:
        distances = pool.map(distance, range(8))
        sketches = pool.map(sketch, range(8))
        return list(distances), list(sketches)


def test_two_model_threads_answer_as_one_does(live, tmp_path):
    server, thread, url = start_server(test_settings(tmp_path, model_workers=2))
    try:
        assert "afv_model_threads 2.0" in httpx.get(f"{url}/metrics").text
        two = _answers(url)
    finally:
        stop_server(server, thread)
    one = _answers(live.url)
    assert two[0] == pytest.approx(one[0], rel=1e-4)
    for a, b in zip(two[1], one[1]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
