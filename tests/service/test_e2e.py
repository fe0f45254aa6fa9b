"""End to end through a real uvicorn server: similarity, judgments, indexing and search."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import cifar, encode, noisy, png


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health_ready_docs(live):
    with live.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["model_hash"]
        assert c.get("/docs").status_code == 200
        assert "/v1/search" in c.get("/openapi.json").json()["paths"]


def test_distance_multipart_and_json_agree(live):
    a, b = png(0), png(1)
    with live.client() as c:
        r1 = c.post("/v1/distance", files={"image_a": ("a.png", a), "image_b": ("b.png", b)})
        r2 = c.post("/v1/distance", json={"image_a": b64(a), "image_b": "data:image/png;base64," + b64(b)})
        same = c.post("/v1/distance", json={"image_a": b64(a), "image_b": b64(a)}).json()
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["distance"] == pytest.approx(r2.json()["distance"], rel=1e-5)
    assert r1.json()["distance"] > 0 and same["distance"] == pytest.approx(0, abs=1e-3)
    assert sum(r1.json()["layers"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("i", [0, 3, 5])
def test_2afc_picks_less_distorted(live, i):
    ref = cifar(i)
    files = {"ref": encode(ref), "p0": encode(noisy(ref, 60, seed=i)), "p1": encode(noisy(ref, 3, seed=i))}
    with live.client() as c:
        r = c.post("/v1/2afc", files=files).json()
        swapped = c.post("/v1/2afc", files={"ref": files["ref"], "p0": files["p1"], "p1": files["p0"]}).json()
    assert r["choice"] == 1 and r["d1"] < r["d0"]
    assert swapped["choice"] == 0


def test_distance_2afc_and_jnd_report_the_same_distance_of_a_pair(live):
    ref, p0, p1 = (encode(x) for x in (cifar(4), noisy(cifar(4), 20, seed=1), cifar(7)))
    with live.client() as c:
        two = c.post("/v1/2afc", files={"ref": ref, "p0": p0, "p1": p1}).json()
        d0 = c.post("/v1/distance", files={"image_a": ref, "image_b": p0}).json()["distance"]
        d1 = c.post("/v1/jnd", files={"image_a": ref, "image_b": p1}).json()["distance"]
    assert two["d0"] == pytest.approx(d0, rel=1e-5) and two["d1"] == pytest.approx(d1, rel=1e-5)
    assert two["d0"] < two["d1"]


def test_jnd_reports_threshold(live):
    ref = cifar(2)
    with live.client() as c:
        t = c.get("/v1/jnd/threshold").json()
        same = c.post("/v1/jnd", files={"image_a": encode(ref), "image_b": encode(ref)}).json()
        far = c.post("/v1/jnd", files={"image_a": encode(ref), "image_b": encode(noisy(ref, 80))}).json()
    assert t["source"] == "synthetic" and t["threshold"] > 0
    assert same["same"] is True and same["threshold"] == t["threshold"]
    assert far["same"] is False and far["distance"] > t["threshold"]


def test_set_distance_and_embed(live):
    with live.client() as c:
        r = c.post(
            "/v1/set-distance",
            files=[("images_a", png(i)) for i in range(3)] + [("images_b", png(i)) for i in range(3, 7)],
        ).json()
        same = c.post(
            "/v1/set-distance", json={"images_a": [b64(png(1)), b64(png(2))], "images_b": [b64(png(2)), b64(png(1))]}
        ).json()
        e = c.post("/v1/embed", files={"image": png(0)}).json()
    assert r["n_a"] == 3 and r["n_b"] == 4 and r["distance"] > 0
    assert same["distance"] == pytest.approx(0, abs=1e-3)
    assert e["dim"] == len(e["vector"]) and e["norm"] > 0


def test_a_large_jpeg_is_decoded_alike_when_indexed_and_when_searched_for(live):
    big = encode(cifar(9).resize((512, 384), Image.Resampling.BICUBIC), "JPEG", quality=90)
    with live.client(headers=live.auth) as c:
        added = c.post("/v1/images", files={"image": ("big.jpg", big)})
        assert added.status_code == 201, added.text
        hits = c.post("/v1/search", files={"image": big}, data={"k": "1"}).json()["results"]
    assert hits[0]["id"] == added.json()["id"] and hits[0]["distance"] == pytest.approx(0, abs=1e-3)


def test_add_search_get_delete(live):
    with live.client(headers=live.auth) as c:
        ids = []
        for i in range(6):
            r = c.post(
                "/v1/images",
                files={"image": (f"img{i}.png", png(i))},
                data={"name": f"img{i}", "metadata": json.dumps({"label": "even" if i % 2 == 0 else "odd"})},
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        again = c.post("/v1/images", files={"image": png(0)}).json()
        assert again == {"id": ids[0], "duplicate": True}
        for i in range(6):
            hits = c.post("/v1/search", files={"image": png(i)}, data={"k": "3"}).json()["results"]
            assert hits[0]["id"] == ids[i] and hits[0]["distance"] == pytest.approx(0, abs=1e-2)
            assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
        by_id = c.post("/v1/search", json={"id": ids[3], "k": 2}).json()["results"]
        assert by_id[0]["id"] == ids[3] and by_id[0]["distance"] == pytest.approx(0, abs=1e-4)
        odd = c.post("/v1/search", json={"image": b64(png(0)), "k": 10, "where": {"label": "odd"}}).json()
        assert {h["id"] for h in odd["results"]} == {ids[1], ids[3], ids[5]}
        info = c.get(f"/v1/images/{ids[1]}").json()
        assert info["name"] == "img1" and info["metadata"] == {"label": "odd"} and info["size"] > 0
        assert c.delete(f"/v1/images/{ids[1]}").json() == {"id": ids[1], "deleted": True}
        assert c.get(f"/v1/images/{ids[1]}").status_code == 404
        assert c.delete(f"/v1/images/{ids[1]}").status_code == 404
        hits = c.post("/v1/search", files={"image": png(1)}, data={"k": "10"}).json()["results"]
        assert ids[1] not in {h["id"] for h in hits}
        assert c.get("/v1/index/stats").json()["count"] >= 5


def test_search_finds_mirror_image_copies_unless_told_not_to(live):
    original = cifar(40)
    mirrored = encode(original.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    with live.client(headers=live.auth) as c:
        added = c.post("/v1/images", files={"image": ("orig.png", encode(original))}).json()["id"]
        hit = c.post("/v1/search", files={"image": mirrored}, data={"k": "1"}).json()["results"][0]
        plain = c.post("/v1/search", json={"image": b64(mirrored), "k": 50, "mirror": False}).json()["results"]
    assert hit["id"] == added and hit["distance"] == pytest.approx(0, abs=1e-2)
    assert next(h["distance"] for h in plain if h["id"] == added) > 10 * max(hit["distance"], 1e-3)


def test_batch_add_reports_each_item(live):
    images = [("images", (f"b{i}.png", png(20 + i))) for i in range(4)] + [("images", ("bad.png", b"nope"))]
    with live.client(headers=live.auth) as c:
        r = c.post("/v1/images:batch", files=images, data={"metadata": [json.dumps({"batch": i}) for i in range(5)]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["added"] == 4 and body["failed"] == 1
        assert body["results"][4]["error"]["code"] == "invalid_image"
        first = body["results"][0]["id"]
        assert c.get(f"/v1/images/{first}").json()["metadata"] == {"batch": 0}
        r = c.post("/v1/images:batch", json={"images": [b64(png(30)), b64(png(31))], "names": ["x", "y"]})
        assert r.json()["added"] == 2


def test_concurrent_requests_share_model_batches(live):
    async def run():
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
            rs = await asyncio.gather(
                *(c.post("/v1/distance", files={"image_a": png(i), "image_b": png(i + 1)}) for i in range(24))
            )
            return [r.status_code for r in rs], (await c.get("/metrics")).text

    codes, metrics = asyncio.run(run())
    assert codes == [200] * 24
    count = _metric(metrics, 'afv_model_batch_size_count{kind="pairs"}')
    total = _metric(metrics, 'afv_model_batch_size_sum{kind="pairs"}')
    assert total / count > 2  # some passes carried several requests' images
    assert _metric(metrics, 'afv_http_requests_total{method="POST",route="/v1/distance",status="200"}') >= 24
    assert "afv_index_images" in metrics


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_oversize_image_and_request(live):
    big = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    one_image = encode(Image.fromarray(big))  # ~1.5 MB > max_image_bytes, < max_request_bytes
    assert live.settings.max_image_bytes < len(one_image) < live.settings.max_request_bytes
    with live.client() as c:
        r = c.post("/v1/embed", files={"image": one_image})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
        r = c.post("/v1/embed", files={"image": b"\0" * 4_000_000})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
        chunked = (b"\0" * 100_000 for _ in range(40))  # no Content-Length: limited while streaming
        r = c.post("/v1/embed", content=chunked, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/set-distance", files=[("images_a", png(0))] * 20 + [("images_b", png(1))] * 20)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
