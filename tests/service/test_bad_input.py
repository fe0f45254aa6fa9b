"""Every kind of bad input gets its documented 4xx JSON error (or is converted), never a 5xx.

Run in-process over a fake embedder (`api`); the byte limits on a real socket are in test_e2e.py.

Documented: 400 invalid_image (empty, corrupt, truncated, not an image) / bad_request (malformed
multipart); 404 not_found; 405; 413 payload_too_large / too_many_pixels; 415; 422 validation_error.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import cifar, encode, png


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that *declares* width×height (a decompression bomb's header) with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def zero_bomb(side: int) -> bytes:
    """A real, highly compressible side×side PNG (decodes to side² pixels)."""
    return encode(Image.new("L", (side, side)), "PNG", optimize=True)


def sixteen_bit() -> bytes:
    arr = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return encode(img)


CONVERTED = {
    "cmyk_jpeg": lambda: encode(cifar(1).convert("CMYK"), "JPEG"),
    "sixteen_bit_png": sixteen_bit,
    "palette_png": lambda: encode(cifar(1).convert("P")),
    "rgba_png": lambda: encode(cifar(1).convert("RGBA")),
    "la_png": lambda: encode(cifar(1).convert("LA")),
    "grey_png": lambda: encode(cifar(1).convert("L")),
    "gif": lambda: encode(cifar(1), "GIF"),
    "webp": lambda: encode(cifar(1), "WEBP"),
    "tall_thin": lambda: encode(Image.new("RGB", (3, 500), (10, 200, 30))),
}

REJECTED = {
    "zero_bytes": (lambda: b"", 400, "invalid_image"),
    "text": (lambda: b"hello, this is not an image\n" * 10, 400, "invalid_image"),
    "truncated_png": (lambda: png(0)[:200], 400, "invalid_image"),
    "truncated_jpeg": (lambda: encode(cifar(0), "JPEG")[:300], 400, "invalid_image"),
    "corrupt_png": (lambda: png(0)[:60] + b"\0" * 200 + png(0)[260:], 400, "invalid_image"),
    "pixel_bomb_header": (lambda: png_header_only(100_000, 100_000), 413, "too_many_pixels"),
    "over_pixel_limit": (lambda: zero_bomb(2_100), 413, "too_many_pixels"),
}


@pytest.mark.parametrize("case", sorted(CONVERTED))
def test_modes_are_converted(api, case):
    with api.client() as c:
        r = c.post("/v1/embed", files={"image": (f"{case}.img", CONVERTED[case]())})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", sorted(REJECTED))
@pytest.mark.parametrize("route", ["/v1/embed", "/v1/distance", "/v1/images"])
def test_bad_images_rejected(api, case, route):
    make, status, code = REJECTED[case]
    data = make()
    files = (
        {"image_a": ("a.png", png(0)), "image_b": ("b", data)} if route == "/v1/distance" else {"image": ("x", data)}
    )
    with api.client(headers=api.auth) as c:
        r = c.post(route, files=files)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    if route == "/v1/distance":
        assert r.json()["error"]["message"].startswith("image_b")


@pytest.mark.parametrize(
    "body,ctype,status,code",
    [
        (b"{not json", "application/json", 422, "validation_error"),
        (b"[1, 2, 3]", "application/json", 422, "validation_error"),
        (b'{"image": "@@@not base64@@@"}', "application/json", 422, "validation_error"),
        (b'{"image": 12}', "application/json", 422, "validation_error"),
        (b"{}", "application/json", 422, "validation_error"),
        (b'{"image": "aGk=", "extra": 1}', "application/json", 422, "validation_error"),
        (b"image=abc", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"raw bytes", "", 415, "unsupported_media_type"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x", 422, "validation_error"),  # no parts
        (b"--x\r\nbroken", "multipart/form-data", 400, "bad_request"),
    ],
)
def test_malformed_bodies(api, body, ctype, status, code):
    with api.client() as c:
        r = c.post("/v1/embed", content=body, headers={"Content-Type": ctype} if ctype else {})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "payload,status",
    [
        ({"id": "987654"}, 404),
        ({"id": "not-an-id"}, 404),
        ({"id": "-1"}, 404),
        ({"id": "99999999999999999999999"}, 404),
        ({}, 422),
        ({"id": "1", "image": "aGk="}, 422),
        ({"id": "1", "k": 0}, 422),
        ({"id": "1", "k": 10**6}, 422),
        ({"id": "1", "where": ["x"]}, 422),
        ({"id": "1", "where": {"bad key!": 1}}, 422),
        ({"id": "1", "where": {"a": {"nested": 1}}}, 422),
    ],
)
def test_search_bad_requests(api, payload, status):
    with api.client(headers=api.auth) as c:
        if payload.get("id") == "1":  # make sure id 1 exists so the error is about the other field
            c.post("/v1/images", files={"image": png(40)})
        r = c.post("/v1/search", json=payload)
    assert r.status_code == status, r.text


def test_unknown_ids_routes_and_methods(api):
    with api.client(headers=api.auth) as c:
        for path in ("/v1/images/123456", "/v1/images/abc", "/v1/images/-5", "/v1/images/1e9"):
            assert c.get(path).status_code == 404
            assert c.delete(path).status_code == 404
        r = c.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = c.get("/v1/distance")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("metadata", ['{"name": "reserved"}', "not json", "[1]", '{"bad key": 1}'])
def test_bad_metadata(api, metadata):
    with api.client(headers=api.auth) as c:
        r = c.post("/v1/images", files={"image": png(41)}, data={"metadata": metadata})
    assert r.status_code == 422, r.text


def test_batch_misaligned_names(api):
    with api.client(headers=api.auth) as c:
        r = c.post("/v1/images:batch", files=[("images", png(1)), ("images", png(2))], data={"names": ["a"]})
    assert r.status_code == 422


def test_still_ready_after_all_that(api):
    with api.client() as c:
        assert c.get("/readyz").json()["ready"] is True
        assert c.post("/v1/distance", files={"image_a": png(0), "image_b": png(1)}).status_code == 200
        metrics = c.get("/metrics").text
    assert 'status="500"' not in metrics


# ---- issue 13: image shapes, limits in messages, upload names, strict JSON types ----------------


@pytest.mark.parametrize("size", [(1, 400_000), (400_000, 1)], ids=str)
@pytest.mark.parametrize("route", ["/v1/embed", "/v1/search"])
def test_thin_images_are_answered(api, route, size):
    """An 856-byte 1×400,000 PNG once took 7–13 s and 2.3 GB here; now it is preprocessed like any image."""
    data = encode(Image.new("L", size, 128))
    assert len(data) < 2_000
    with api.client() as c:
        r = c.post(route, files={"image": ("strip.png", data)})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("size", [(1, 4_000_001), (4_000_001, 1), (20_000, 20_000)], ids=str)
def test_pixel_limit_message_states_the_configured_limit(api, size):
    data = png_header_only(*size) if size == (20_000, 20_000) else zero_strip(size)
    with api.client() as c:
        r = c.post("/v1/embed", files={"image": ("big.png", data)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels", r.text
    message = r.json()["error"]["message"]
    assert f"> {api.settings.max_pixels}" in message and "128000000" not in message, message


def zero_strip(size: tuple[int, int]) -> bytes:
    return encode(Image.new("L", size), "PNG", optimize=True)


def added_name(c, **post) -> str | None:
    r = c.post("/v1/images", **post)
    assert r.status_code == 201, r.text
    return c.get(f"/v1/images/{r.json()['id']}").json()["name"]


def test_upload_file_name_is_the_default_name(api):
    with api.client(headers=api.auth) as c:
        assert added_name(c, files={"image": ("cat.png", png(50))}) == "cat.png"
        assert added_name(c, files={"image": ("../../etc/dog.png", png(51))}) == "dog.png"
        assert added_name(c, files={"image": ("C:\\photos\\bird.png", png(52))}) == "bird.png"
        assert added_name(c, files={"image": ("x" * 1000 + ".png", png(53))}) == "x" * 255
        assert added_name(c, files={"image": ("cat.png", png(54))}, data={"name": "given"}) == "given"
        r = c.post("/v1/images:batch", files=[("images", ("a/one.png", png(55))), ("images", ("two.png", png(56)))])
        ids = [item["id"] for item in r.json()["results"]]
        assert [c.get(f"/v1/images/{i}").json()["name"] for i in ids] == ["one.png", "two.png"]


def test_very_long_upload_file_name_is_a_clear_400(api):
    with api.client(headers=api.auth) as c:
        r = c.post("/v1/images", files={"image": ("n" * 5000 + ".png", png(57))})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text
    assert "file name" in r.json()["error"]["message"] and "header" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "metadata, says",
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1', "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ("3", "JSON object"),
    ],
)
def test_metadata_messages_tell_invalid_json_from_non_objects(api, metadata, says):
    with api.client(headers=api.auth) as c:
        r = c.post("/v1/images", files={"image": png(58)}, data={"metadata": metadata})
    assert r.status_code == 422 and says in r.json()["error"]["message"], r.text
    if says == "not valid JSON":
        assert "must be a JSON object" not in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "extra", [{"k": True}, {"k": "5"}, {"k": 5.0}, {"rerank": "true"}, {"rerank": 1}, {"mirror": "false"}], ids=str
)
def test_json_numbers_and_booleans_are_strict(api, extra):
    with api.client(headers=api.auth) as c:
        iid = c.post("/v1/images", files={"image": png(59)}).json()["id"]
        assert c.post("/v1/search", json={"id": iid, "k": 5, "rerank": True}).status_code == 200
        r = c.post("/v1/search", json={"id": iid, **extra})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text


def test_multipart_form_numbers_and_booleans_still_convert(api):
    with api.client(headers=api.auth) as c:
        for i in range(60, 68):
            c.post("/v1/images", files={"image": png(i)})
        r = c.post("/v1/search", files={"image": png(60)}, data={"k": "5", "rerank": "true", "mirror": "false"})
        assert r.status_code == 200 and len(r.json()["results"]) == 5, r.text
        r = c.post("/v1/search", files={"image": png(60)}, data={"k": "five"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("k:"), r.text


def test_jnd_calibrate_same_takes_numbers_and_booleans_not_strings(api):
    with api.client(headers=api.auth) as c:
        ok = [{"distance": 1, "same": True}, {"distance": 2.5, "same": 0}]
        assert c.post("/v1/jnd/calibrate", json={"pairs": ok, "save": False}).status_code == 200
        bad = [{"distance": 1, "same": "1"}, {"distance": 2, "same": 0}]
        assert c.post("/v1/jnd/calibrate", json={"pairs": bad, "save": False}).status_code == 422
        assert c.post("/v1/jnd/calibrate", json={"pairs": ok, "save": "no"}).status_code == 422
