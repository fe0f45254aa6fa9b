"""The search router: the single index's `POST /v1/search`, answered by S replicas that each serve one shard.

`afv index shard` splits an index by id hash (`index.sharding`); each shard is served by its own
`afv serve --read-only --index OUT/shard-00k`, and `afv serve --shards URL0,URL1,…` (URL k serves shard
k) runs this app in front of them. Same request, response, errors and auth as the app's `/v1/search`.

Where the query's vector is computed: once, by one replica (`POST /v1/search:sketch`, taking turns
over the shards); then every shard searches with that vector (`POST /v1/search:vectors`). Forwarding
the image to every shard would cost S model passes per query, and the model pass (an AFV is a
gradient) is the expensive part: every replica would do all of the model work, so adding shards would
add no query throughput. Computing the vector here instead would need the model and the index's
projection in the router; the replicas hold both, pinned to their shard. So the router stays free of
model work, for one extra hop per query. An `id` query asks the one shard that holds the id
(`shard_of(id, S)`) for its stored vector.

Merging: each shard answers its own top k, and the global top k is among them (an item lives in one
shard only); they are merged by distance, ties by id. Shards keep the single index's trained FAISS
structure, so the distances are the single index's. Two cases may differ on IVF-PQ indexes: `rerank`
re-ranks each shard's candidates (together a superset of the single index's: as good or better), and
a `where` filter matching few items of a shard is searched exactly there.

Failures are never a silent partial answer: a shard that cannot be reached (or answers 503) makes the
answer 503 `shard_unavailable`, one answering another 5xx or something unreadable 502 `shard_error`,
one that is not the shard its URL should serve 502 `shard_mismatch`; each names the shards and URLs.
A shard's 4xx (unreadable image, unknown id, missing key) is the caller's and is passed on as it is.

Auth as the app's: reads need a key only with AFV_AUTH_READS; the caller's Authorization header is
forwarded to the replicas. Before a shard is first used, its `/v1/index/stats` is checked: URL k must
serve shard k of a split into S, the same split as the other shards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, FastAPI, Request
from pydantic import ValidationError

from index.sharding import HASH, shard_of
from service.app import api_keys
from service.deps import ReadAuth, SettingsDep
from service.errors import APIError, BodySizeLimitMiddleware, error_response, install_error_handlers
from service.inputs import openapi_body, parse_body
from service.routes.common import IMAGE_ERRORS, NOT_FOUND, parse_id
from service.schemas import ErrorResponse, Health, SearchHit, SearchRequest, SearchResponse, SketchResponse
from service.settings import Settings

log = logging.getLogger(__name__)

SHARD_TIMEOUT_S = 30.0  # one call to one replica
SUMMED_STATS = ("count", "ntotal", "index_file_bytes", "pending_ops")
PER_SHARD_STATS = ("shard", "index", "read_only", "mmapped", "device")
SHARD_ERRORS: dict[int | str, dict[str, Any]] = {
    502: {"model": ErrorResponse, "description": "A shard answered an error or is not the shard expected."},
    503: {"model": ErrorResponse, "description": "A shard cannot be reached or is not ready."},
}
T = TypeVar("T")


class ShardFailure(Exception):
    """One shard could not give its part of an answer (status 502 or 503 for the caller)."""

    def __init__(self, shard: Shard, status: int, code: str, problem: str):
        super().__init__(f"{shard.label} {problem}")
        self.shard, self.status, self.code, self.problem = shard, status, code, problem


@dataclass
class Shard:
    """Replica `url`, which must serve shard `index` of the split."""

    index: int
    url: str
    checked: bool = False  # its /v1/index/stats matched the layout

    @property
    def label(self) -> str:
        return f"shard {self.index} ({self.url})"


def parse_shard_urls(text: str) -> list[str]:
    """'http://a:8001,http://b:8001' → the URLs, in shard order; ValueError naming a bad one."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("give at least one shard URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL of a replica: {url!r}")
    if len(set(urls)) != len(urls):
        raise ValueError("a shard URL is listed twice: each shard needs its own replica")
    return urls


def layout_problem(info: Any, index: int, count: int, split: str | None) -> str | None:
    """Why a replica whose index reports shard setting `info` cannot be shard `index` of `count` (None: it can)."""
    if not isinstance(info, dict):
        return "serves a whole index, not a shard (split one with `afv index shard`)"
    if info.get("hash") != HASH:
        return f"assigns ids to shards by {info.get('hash')!r}, not {HASH!r}"
    if info.get("count") != count:
        return f"is shard {info.get('index')} of {info.get('count')}, but the router was given {count} shard URLs"
    if info.get("index") != index:
        return f"serves shard {info.get('index')}, not shard {index}: list the URLs in shard order"
    if split is not None and info.get("split") != split:
        return f"is from another split ({info.get('split')}) than the other shards ({split})"
    return None


class ShardRouter:
    """The shards, one HTTP client, and the calls that answer a search from them."""

    def __init__(self, urls: list[str], client: httpx.AsyncClient, key: str | None = None):
        self.shards = [Shard(k, url) for k, url in enumerate(urls)]
        self.client, self.key = client, key
        self.split: str | None = None
        self._turn = itertools.count()

    async def search(self, body: SearchRequest, auth: str | None) -> list[SearchHit]:
        """The top k of all shards for one query: its vector from one replica, then every shard searched."""
        headers = self._headers(auth)
        if body.id is not None:
            image_id = parse_id(body.id)
            owner = self.shards[int(shard_of([image_id], len(self.shards))[0])]
            vectors = await self._sketch(owner, headers, json={"id": str(image_id)})
        else:
            assert body.image is not None  # SearchRequest's validator: exactly one of `image` and `id`
            shard = self.shards[next(self._turn) % len(self.shards)]
            form = {"mirror": "true" if body.mirror else "false"}
            vectors = await self._sketch(shard, headers, files={"image": body.image}, data=form)
        query = {"vectors": vectors, "k": body.k, "where": body.where, "rerank": body.rerank}
        encoded = json.dumps(query).encode()  # once for all shards: ~2 ms of floats to text per copy
        return merge_top_k(await self._each(lambda s: self._search_one(s, headers, encoded)), body.k)

    async def stats(self, auth: str | None) -> dict[str, Any]:
        """The shards' index statistics: counts summed, the rest as the shards report it, and each shard's."""
        headers = self._headers(auth)
        each = await self._each(lambda s: self._get_checked(s, "/v1/index/stats", headers))
        merged = {k: v for k, v in each[0].items() if k not in PER_SHARD_STATS}
        merged.update({k: sum(s.get(k) or 0 for s in each) for k in SUMMED_STATS})
        merged["split"] = self.split
        merged["shards"] = [
            {"shard": sh.index, "url": sh.url, "count": s.get("count"), "index": s.get("index")}
            for sh, s in zip(self.shards, each)
        ]
        return merged

    async def ready(self) -> list[dict[str, Any]]:
        """Each shard's /readyz answer (an APIError naming the shards that are not ready)."""
        return await self._each(lambda s: self._get_checked(s, "/readyz", self._headers(None)))

    async def check_all(self) -> list[ShardFailure]:
        """Check every shard's layout now; the shards that failed (unreachable, refused, not the shard expected)."""
        results = await asyncio.gather(
            *(self._check(s, self._headers(None)) for s in self.shards), return_exceptions=True
        )
        failures = []
        for shard, r in zip(self.shards, results):
            if isinstance(r, APIError):  # e.g. 401: the replicas want a key and the router has none
                r = ShardFailure(shard, 502, "shard_error", f"answered {r.status} {r.code}: {r.message}")
            if isinstance(r, BaseException) and not isinstance(r, ShardFailure):
                raise r
            if r is not None:
                failures.append(r)
        return failures

    # -- calls to one shard --------------------------------------------------------------------

    def _headers(self, auth: str | None) -> dict[str, str]:
        if auth is not None:
            return {"Authorization": auth}
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def _sketch(self, shard: Shard, headers: dict[str, str], **kw: Any) -> list[list[float]]:
        """The query's vectors, from one shard alone (its failure is the answer's)."""
        try:
            answer = await self._post(shard, "/v1/search:sketch", headers, **kw)
            try:
                return SketchResponse.model_validate(answer).vectors
            except ValidationError as e:
                raise ShardFailure(shard, 502, "shard_error", f"answered no query vectors: {e}") from e
        except ShardFailure as f:
            raise shard_error([f], len(self.shards)) from f

    async def _post(self, shard: Shard, path: str, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
        await self._check(shard, headers)
        return await self._call(shard, "POST", path, headers, **kw)

    async def _search_one(self, shard: Shard, headers: dict[str, str], query: bytes) -> list[SearchHit]:
        json_headers = headers | {"Content-Type": "application/json"}
        answer = await self._post(shard, "/v1/search:vectors", json_headers, content=query)
        try:
            return SearchResponse.model_validate(answer).results
        except ValidationError as e:
            raise ShardFailure(shard, 502, "shard_error", f"answered no search results: {e}") from e

    async def _get_checked(self, shard: Shard, path: str, headers: dict[str, str]) -> dict[str, Any]:
        await self._check(shard, headers)
        return await self._call(shard, "GET", path, headers)

    async def _check(self, shard: Shard, headers: dict[str, str]) -> None:
        """Make sure, once, that the replica at shard.url serves this shard of the same split as the others."""
        if shard.checked:
            return
        stats = await self._call(shard, "GET", "/v1/index/stats", headers)
        info = stats.get("shard")
        problem = layout_problem(info, shard.index, len(self.shards), self.split)
        if problem is not None:
            raise ShardFailure(shard, 502, "shard_mismatch", problem)
        assert isinstance(info, dict)  # layout_problem refuses anything else
        self.split = self.split or info["split"]
        shard.checked = True

    async def _call(self, shard: Shard, method: str, path: str, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
        """One request to one replica: its JSON answer; ShardFailure if it has none; its 4xx passed on."""
        try:
            r = await self.client.request(method, shard.url + path, headers=headers, **kw)
        except httpx.TransportError as e:
            shard.checked = False  # whatever answers there next (a restarted replica) is checked again
            raise ShardFailure(shard, 503, "shard_unavailable", f"cannot be reached: {type(e).__name__} {e}") from e
        try:
            data = r.json()
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if r.status_code >= 400:
            what = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else r.text[:200]
            if r.status_code >= 500:
                status, code = (503, "shard_unavailable") if r.status_code == 503 else (502, "shard_error")
                raise ShardFailure(shard, status, code, f"answered {r.status_code} {what}")
            if isinstance(error, dict):  # the caller's mistake (bad image, unknown id, no key): as the replica said
                raise APIError(r.status_code, str(error.get("code")), str(error.get("message")), error.get("detail"))
        if r.status_code != 200 or not isinstance(data, dict):
            raise ShardFailure(shard, 502, "shard_error", f"answered {r.status_code} without a JSON object")
        return data

    async def _each(self, call: Callable[[Shard], Awaitable[T]]) -> list[T]:
        """`call` on every shard at once, in shard order; every shard's failure reported together."""
        results = await asyncio.gather(*(call(s) for s in self.shards), return_exceptions=True)
        failures = [r for r in results if isinstance(r, ShardFailure)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, ShardFailure):
                raise r  # a 4xx passed on (every shard says the same), or a bug
        if failures:
            raise shard_error(failures, len(self.shards))
        return [r for r in results if not isinstance(r, BaseException)]


def shard_error(failures: list[ShardFailure], count: int) -> APIError:
    """One error naming every failed shard: 503 if each is unavailable, else 502."""
    status = 503 if all(f.status == 503 for f in failures) else 502
    codes = {f.code for f in failures}
    code = codes.pop() if len(codes) == 1 else "shard_error"
    message = f"{len(failures)} of {count} shards failed, no results: " + "; ".join(str(f) for f in failures)
    detail = [{"shard": f.shard.index, "url": f.shard.url, "code": f.code, "problem": f.problem} for f in failures]
    return APIError(status, code, message, detail={"shards": detail})


def merge_top_k(lists: list[list[SearchHit]], k: int) -> list[SearchHit]:
    """The k nearest of the shards' hits (each item is in one shard only), by distance, ties by id."""
    return sorted((h for hits in lists for h in hits), key=lambda h: (h.distance, int(h.id)))[:k]


# ---- the app -------------------------------------------------------------------------------------

routes = APIRouter()


def _router(request: Request) -> ShardRouter:
    return request.app.state.router


@routes.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """The router process is up (its shards may not be: see /readyz)."""
    return Health()


@routes.get("/readyz", tags=["health"], responses=SHARD_ERRORS)
async def readyz(request: Request):
    """Every shard is ready and is the shard its URL should serve (else 503/502 naming the shards)."""
    try:
        shards = await _router(request).ready()
    except APIError as e:
        return error_response(e.status, e.code, e.message, e.detail)
    return {"ready": True, "shards": len(shards), "index_images": sum(s.get("index_images") or 0 for s in shards)}


@routes.post(
    "/v1/search",
    response_model=SearchResponse,
    tags=["search"],
    dependencies=[ReadAuth],
    responses={**IMAGE_ERRORS, **NOT_FOUND, **SHARD_ERRORS},
    openapi_extra=openapi_body(SearchRequest),
)
async def search(request: Request, settings: SettingsDep) -> SearchResponse:
    """The `k` nearest indexed images over all shards, nearest first: the single index's answer."""
    body = await parse_body(request, SearchRequest, settings)
    hits = await _router(request).search(body, request.headers.get("authorization"))
    return SearchResponse(results=hits)


@routes.get("/v1/index/stats", tags=["index"], dependencies=[ReadAuth], responses=SHARD_ERRORS)
@routes.get("/v1/stats", tags=["index"], dependencies=[ReadAuth], include_in_schema=False)
async def stats(request: Request) -> dict[str, Any]:
    """The index over all shards: counts summed, structure and model as the shards report, each shard's count."""
    return await _router(request).stats(request.headers.get("authorization"))


def create_router_app(
    settings: Settings,
    urls: list[str],
    *,
    timeout_s: float = SHARD_TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The router over the replicas at `urls` (URL k serves shard k); `transport` replaces the network in tests."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = api_keys(settings)
        app.state.api_keys = keys
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            app.state.router = ShardRouter(urls, client, key=keys[0] if settings.api_keys else None)
            yield

    app = FastAPI(
        title="AFV search router",
        version="1",
        description="`POST /v1/search` over an index split into shards, each served by its own replica.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(routes)
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_request_bytes)
    return app


async def check_shards(urls: list[str], settings: Settings, timeout_s: float = 10.0) -> list[ShardFailure]:
    """Check the replicas' layout once (for `afv serve --shards` before it binds): the shards that failed."""
    key = settings.api_keys[0] if settings.api_keys else None
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return await ShardRouter(urls, client, key).check_all()
