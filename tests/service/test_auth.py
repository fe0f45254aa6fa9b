"""API keys: write endpoints need `Authorization: Bearer <key>`; reads are open unless configured."""

from __future__ import annotations

import logging

import pytest

from service.deps import key_is_valid
from tests.service.conftest import API_KEY, fake_app, png

WRITES = [
    ("POST", "/v1/images", {"files": {"image": ("a.png", b"")}}),
    ("POST", "/v1/images:batch", {"files": {"images": ("a.png", b"")}}),
    ("DELETE", "/v1/images/1", {}),
    ("POST", "/v1/jnd/calibrate", {"json": {"pairs": [{"distance": 1, "same": 1}, {"distance": 2, "same": 0}]}}),
]
BAD_HEADERS = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": API_KEY},
    {"Authorization": "Bearer"},
    {"Authorization": f"Bearer {API_KEY}x"},
]


@pytest.mark.parametrize("method,path,kw", WRITES)
@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_writes_need_a_valid_key(api, method, path, kw, headers):
    with api.client() as c:
        r = c.request(method, path, headers=headers, **kw)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_valid_key_and_open_reads(api):
    with api.client() as c:
        r = c.post("/v1/images", files={"image": png(50)}, headers=api.auth)
        assert r.status_code == 201
        assert c.get(f"/v1/images/{r.json()['id']}").status_code == 200
        assert c.post("/v1/search", files={"image": png(50)}).status_code == 200


def test_key_comparison():
    assert key_is_valid("b", ["a", "b"]) and not key_is_valid("c", ["a", "b"]) and not key_is_valid("a", [])
    assert not key_is_valid("ä", ["a"])


def test_generated_key_is_logged_and_works(tmp_path, caplog):
    client, _ = fake_app(tmp_path, api_keys=[])
    with caplog.at_level(logging.WARNING, logger="service.app"), client as c:
        line = next(r.getMessage() for r in caplog.records if "Generated" in r.getMessage())
        key = line.split("Bearer ")[1].split()[0]
        assert c.delete("/v1/images/1", headers={"Authorization": f"Bearer {key}"}).status_code == 404
        assert c.delete("/v1/images/1", headers={"Authorization": "Bearer other"}).status_code == 401


def test_auth_reads_setting(tmp_path):
    with fake_app(tmp_path, auth_reads=True)[0] as c:
        assert c.post("/v1/distance", files={"image_a": png(0), "image_b": png(1)}).status_code == 401
        assert c.get("/v1/index/stats").status_code == 401
        assert c.get("/v1/index/stats", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert c.get("/readyz").status_code == 200 and c.get("/metrics").status_code == 200
