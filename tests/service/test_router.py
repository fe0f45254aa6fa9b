"""The search router (`afv serve --shards`): an index split into 3 shards, each served read-only by its own
uvicorn replica, answers `/v1/search` as the single index does (flat and IVF-PQ), and says which shard failed.

The replicas run on `FakeEmbedder` (no model to load); the single index is served the same way, so the
two answers can be compared id for id and distance for distance.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import service.engine as engine_module
from index.sharding import shard_of, split_index
from service.cli import app as cli
from service.ingest import Item, ingest, model_decoder
from service.model_index import BuildOptions, ModelIndex
from service.router import create_router_app
from tests.service.conftest import API_KEY, png, start_server, stop_server, test_settings
from tests.service.fakes import FakeEmbedder

N_IMAGES, N_RANDOM = 60, 2600  # IVF-PQ trains on >= 2496 vectors here


@dataclass
class Deployment:
    """One index served whole and as 3 shards (each by its own read-only replica)."""

    kind: str
    single: str
    shards: list[str]
    ids: list[int]
    counts: list[int]
    tmp: Path


def _build(folder: Path, kind: str) -> list[int]:
    """An index of fixture images (and, for IVF-PQ, random vectors in the pooled pixels' range); its image ids."""
    embedder = FakeEmbedder()
    with ModelIndex.create(folder, embedder, BuildOptions(kind=kind)) as mi:
        items = [Item(png(i), f"img{i}.png", {"label": f"c{i % 4}"}) for i in range(N_IMAGES)]
        ids = [o.id for _, o in ingest(mi.index, items, decode=model_decoder(embedder), embed=mi.sketch)]
        if kind == "ivfpq":
            xb = np.random.default_rng(0).random((N_RANDOM, mi.index.dim), dtype=np.float32)
            recs = [
                {"sha256": f"{i:064x}", "name": f"r{i}", "metadata": {"label": f"c{i % 4}"}} for i in range(N_RANDOM)
            ]
            mi.index.add_embedded(xb, recs)
        mi.index.save()  # trains IVF-PQ for kind ivfpq
        assert mi.index.vindex.plan.kind == kind
    return [i for i in ids if i is not None]


def _serve_read_only(folder: Path, data: Path) -> tuple[uvicorn.Server, object, str]:
    """`afv serve --read-only --index FOLDER` with the fake embedder standing in for the model."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module, "load_embedder", lambda *a, **kw: FakeEmbedder())
        return start_server(test_settings(data, index_dir=folder, read_only=True))


@pytest.fixture(scope="module", params=["flat", "ivfpq"])
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"router-{request.param}")
    ids = _build(tmp / "single", request.param)
    split = split_index(tmp / "single", tmp / "shards", 3)
    servers = [_serve_read_only(f, tmp / f"data-{f.name}") for f in [tmp / "single", *split.folders]]
    urls = [url for _, _, url in servers]
    yield Deployment(request.param, urls[0], urls[1:], ids, split.counts, tmp)
    for server, thread, _ in servers:
        stop_server(server, thread)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def router(deployment) -> Iterator[TestClient]:
    with TestClient(create_router_app(test_settings(deployment.tmp / "router"), deployment.shards)) as c:
        yield c


def _search(client, **request) -> list[tuple[str, float, str | None, dict]]:
    image = request.pop("image", None)
    if image is not None:
        r = client.post("/v1/search", files={"image": image}, data={k: str(v).lower() for k, v in request.items()})
    else:
        r = client.post("/v1/search", json=request)
    assert r.status_code == 200, r.text
    return [(h["id"], h["distance"], h["name"], h["metadata"]) for h in r.json()["results"]]


def _queries(d: Deployment, k: int) -> list[dict]:
    images = [{"image": png(i), "k": k, "mirror": i % 2 == 0} for i in range(N_IMAGES - 4, N_IMAGES + 4)]
    return images + [{"id": str(i), "k": k} for i in d.ids[::10]]  # indexed images and others


@pytest.mark.parametrize("k", [1, 7, 40, 1000])
def test_sharded_search_answers_as_the_single_index(deployment, router, k):
    if k == 1000:  # more than any shard holds
        assert max(deployment.counts) < k
    with httpx.Client(base_url=deployment.single, timeout=60) as single:
        for query in _queries(deployment, k):
            expected = _search(single, **query)
            assert _search(router, **query) == expected, query.get("id", "image")
            assert len(expected) == min(k, len(expected)) and expected  # non-trivial answers


def test_filtered_search_matches_too(deployment, router):
    """A filter matching at most BRUTE_FORCE_MAX items is searched exactly, on the shards as in the index."""
    with httpx.Client(base_url=deployment.single, timeout=60) as single:
        for query in _queries(deployment, 9):
            where = {"label": ["c1", "c2"]}
            query["where"] = json.dumps(where) if "image" in query else where
            expected = _search(single, **query)
            assert _search(router, **query) == expected and {h[3]["label"] for h in expected} == {"c1", "c2"}


def test_reranked_search_matches_on_flat_and_is_no_worse_on_ivfpq(deployment, router):
    """Exact re-ranking: a flat index is exact anyway; IVF-PQ shards re-rank their own k·10 candidates each,
    together a superset of the whole index's, so each rank's distance is the index's or smaller."""
    with httpx.Client(base_url=deployment.single, timeout=60) as single:
        for query in _queries(deployment, 9):
            query["rerank"] = True
            expected, got = _search(single, **query), _search(router, **query)
            if deployment.kind == "flat":
                assert got == expected
            else:
                assert len(got) == len(expected) and all(g[1] <= e[1] for g, e in zip(got, expected))


def test_stats_health_and_readiness_cover_every_shard(deployment, router):
    single = httpx.get(f"{deployment.single}/v1/index/stats").json()
    stats = router.get("/v1/index/stats").json()
    assert stats["count"] == single["count"] == sum(deployment.counts) and stats["kind"] == deployment.kind
    assert [s["count"] for s in stats["shards"]] == deployment.counts
    assert [s["url"] for s in stats["shards"]] == deployment.shards
    assert router.get("/v1/stats").json()["count"] == single["count"]
    assert router.get("/healthz").json() == {"status": "ok"}
    ready = router.get("/readyz").json()
    assert ready["ready"] and ready["index_images"] == single["count"]


def test_caller_errors_are_passed_on_as_the_single_index_gives_them(deployment, router):
    with httpx.Client(base_url=deployment.single, timeout=60) as single:
        for request in [
            {"json": {"id": "999999", "k": 3}},  # unknown id: 404 from the shard that would hold it
            {"json": {"id": "not-a-number"}},
            {"json": {"k": 3}},
            {"json": {"id": "1", "k": 0}},
            {"files": {"image": b"not an image"}},
            {"json": {"id": str(deployment.ids[0]), "where": {"bad field!": 1}}},
        ]:
            want, got = single.post("/v1/search", **request), router.post("/v1/search", **request)
            assert got.status_code == want.status_code and want.status_code in (400, 404, 422), request
            assert got.json()["error"]["code"] == want.json()["error"]["code"]


def test_each_image_is_in_the_shard_its_id_hashes_to(deployment):
    clients = [httpx.Client(base_url=url, timeout=60) for url in deployment.shards]
    for image_id in deployment.ids[::4]:
        found = [c.get(f"/v1/images/{image_id}").status_code for c in clients]
        assert found == [200 if k == shard_of([image_id], 3)[0] else 404 for k in range(3)]
    for c in clients:
        c.close()


def _dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


def test_a_replica_that_is_down_fails_the_search_naming_it(deployment):
    dead = _dead_url()
    urls = [deployment.shards[0], dead, deployment.shards[2]]
    with TestClient(create_router_app(test_settings(deployment.tmp / "router-dead"), urls)) as c:
        for request in [{"files": {"image": png(3)}}, {"json": {"id": str(deployment.ids[0])}}]:
            r = c.post("/v1/search", **request)
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "shard_unavailable" and f"shard 1 ({dead})" in error["message"]
            assert [s["shard"] for s in error["detail"]["shards"]] == [1]
        assert c.get("/readyz").status_code == 503 and c.get("/v1/index/stats").status_code == 503


def test_replicas_in_the_wrong_order_are_refused(deployment):
    urls = [deployment.shards[1], deployment.shards[0], deployment.shards[2]]
    with TestClient(create_router_app(test_settings(deployment.tmp / "router-swap"), urls)) as c:
        r = c.post("/v1/search", json={"id": str(deployment.ids[0])})
    assert r.status_code == 502 and r.json()["error"]["code"] == "shard_mismatch"
    assert "serves shard 1, not shard 0" in r.json()["error"]["message"]
    assert {s["shard"] for s in r.json()["error"]["detail"]["shards"]} == {0, 1}
    with TestClient(create_router_app(test_settings(deployment.tmp / "router-two"), deployment.shards[:2])) as c:
        assert "router was given 2 shard URLs" in c.get("/v1/index/stats").json()["error"]["message"]
    with TestClient(create_router_app(test_settings(deployment.tmp / "router-whole"), [deployment.single])) as c:
        assert "not a shard" in c.post("/v1/search", json={"id": "1"}).json()["error"]["message"]


def test_afv_serve_shards_checks_the_replicas_before_binding(deployment, monkeypatch):
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(app))
    run = CliRunner().invoke
    res = run(cli, ["serve", "--shards", ",".join(deployment.shards)])
    assert res.exit_code == 0, res.output
    assert started and started[0].title == "AFV search router"
    res = run(cli, ["serve", "--shards", ",".join(reversed(deployment.shards))])
    assert res.exit_code == 1 and "list the URLs in shard order" in res.output and len(started) == 1


# ---- without replicas: a mock network -------------------------------------------------------------


def _mock_replicas(
    count: int, broken: int | None = None, seen: list | None = None, sketch: object = None
) -> httpx.MockTransport:
    """`count` replicas of one split answering every call; replica `broken` answers search with a 500; `sketch`
    replaces the query vectors' answer."""

    def handle(request: httpx.Request) -> httpx.Response:
        shard = int(request.url.host.removeprefix("shard"))
        if seen is not None:
            seen.append((shard, request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v1/index/stats":
            info = {"index": shard, "count": count, "split": "s", "hash": "splitmix64"}
            return httpx.Response(200, json={"count": 1, "shard": info})
        if request.url.path == "/v1/search:sketch":
            return httpx.Response(200, json=sketch or {"vectors": [[0.0, 1.0]]})
        if shard == broken:
            return httpx.Response(500, json={"error": {"code": "internal_error", "message": "internal error: boom"}})
        return httpx.Response(200, json={"results": [{"id": str(10 + shard), "distance": 1.0 / (shard + 1)}]})

    return httpx.MockTransport(handle)


def _mock_router(tmp_path, count: int = 3, **kw) -> TestClient:
    settings = test_settings(tmp_path, **kw.pop("settings", {}))
    urls = [f"http://shard{k}:8000" for k in range(count)]
    return TestClient(create_router_app(settings, urls, transport=_mock_replicas(count, **kw)))


def test_a_replica_answering_500_is_a_502_naming_it(tmp_path):
    with _mock_router(tmp_path, broken=2) as c:
        r = c.post("/v1/search", json={"id": "5"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "shard_error"
    assert (
        "shard 2 (http://shard2:8000) answered 500 internal_error: internal error: boom" in r.json()["error"]["message"]
    )


def test_a_replica_answering_nonsense_is_a_502_naming_it(tmp_path):
    with _mock_router(tmp_path, sketch={"vectors": "no"}) as c:
        r = c.post("/v1/search", json={"id": "5"})  # held by shard_of(5, 3) == 2
    assert r.status_code == 502 and r.json()["error"]["code"] == "shard_error"
    assert "shard 2 (http://shard2:8000) answered no query vectors" in r.json()["error"]["message"]


def test_hits_merge_by_distance_then_id(tmp_path):
    with _mock_router(tmp_path) as c:
        hits = c.post("/v1/search", json={"id": "5", "k": 2}).json()["results"]
    assert [(h["id"], h["distance"]) for h in hits] == [("12", 1 / 3), ("11", 0.5)]


def test_the_callers_key_is_checked_as_the_app_does_and_forwarded(tmp_path):
    seen: list = []
    with _mock_router(tmp_path, seen=seen, settings={"auth_reads": True}) as c:
        assert c.post("/v1/search", json={"id": "5"}).status_code == 401 and seen == []
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert c.post("/v1/search", json={"id": "5"}, headers=auth).status_code == 200
    assert seen and all(a == auth["Authorization"] for _, _, a in seen)
    assert {p for _, p, _ in seen} == {"/v1/index/stats", "/v1/search:sketch", "/v1/search:vectors"}


# ---- the replicas' two search steps ----------------------------------------------------------------


def test_sketch_then_vector_search_is_the_search(api):
    with api.client() as c:
        ids = [c.post("/v1/images", files={"image": png(i)}, headers=api.auth).json()["id"] for i in range(3)]
        for mirror in (True, False):
            sketch = c.post("/v1/search:sketch", files={"image": png(1)}, data={"mirror": str(mirror).lower()}).json()
            assert len(sketch["vectors"]) == (2 if mirror else 1)
            found = c.post("/v1/search:vectors", json={"vectors": sketch["vectors"], "k": 3}).json()
            direct = c.post("/v1/search", files={"image": png(1)}, data={"k": "3", "mirror": str(mirror).lower()})
            assert found == direct.json() and found["results"][0]["id"] == ids[1]
        stored = c.post("/v1/search:sketch", json={"id": ids[2]}).json()["vectors"]
        assert c.post("/v1/search:vectors", json={"vectors": stored, "k": 1}).json()["results"][0]["id"] == ids[2]
        assert c.post("/v1/search:sketch", json={"id": "123456"}).status_code == 404
        bad = [{"vectors": [[0.0, 1.0]]}, {"vectors": [[0.0] * 48, [0.0] * 47]}, {"vectors": []}]
        assert [c.post("/v1/search:vectors", json=b).status_code for b in bad] == [422, 422, 422]
