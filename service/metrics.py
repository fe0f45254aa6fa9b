"""Prometheus metrics: per-route request counts and latencies, model batches, images embedded, index size,
and failing index writes (`afv_index_writes_failing` 0/1, `afv_index_write_failures_total` by reason).

Each app owns its own `CollectorRegistry` (so several apps can live in one test process). Requests are
timed by a pure ASGI middleware labelled with the route *template* (`/v1/images/{image_id}`), never
the raw path, so label cardinality stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # others → "OTHER" (bounded labels)


class Metrics:
    """The service's Prometheus collectors, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "afv_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "afv_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images_embedded = Counter(
            "afv_images_embedded_total",
            "Images run through the model, by kind (afv, pairs, triplets, embed).",
            ["kind"],
            registry=r,
        )
        self.batch_size = Histogram(
            "afv_model_batch_size", "Images per batched model pass.", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "afv_model_batch_seconds",
            "Duration of one batched model pass.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "afv_batch_queue_wait_seconds",
            "Time a request waited for its model batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "afv_stage_seconds",
            "Time per stage (decode, index search, …).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.index_size = Gauge("afv_index_images", "Images in the index.", registry=r)
        self.model_workers = Gauge(
            "afv_model_threads", "Model threads running batches independently (AFV_MODEL_WORKERS).", registry=r
        )
        self.model_processes = Gauge(
            "afv_model_processes", "Worker processes running the model passes (AFV_MODEL_PROCESSES).", registry=r
        )
        self.model_process_restarts = Gauge(
            "afv_model_process_restarts", "Model worker processes forked again after one died.", registry=r
        )
        self.writes_failing = Gauge(
            "afv_index_writes_failing", "1 while index writes fail (until the next successful write).", registry=r
        )
        self.write_failures = Counter(
            "afv_index_write_failures_total",
            "Index writes the storage refused, by reason (no_space, storage).",
            ["reason"],
            registry=r,
        )

    def track_index_size(self, count: Callable[[], int]) -> None:
        """Read the index size at scrape time."""
        self.index_size.set_function(lambda: float(count()))

    def track_model_processes(self, running: Callable[[], int], restarts: Callable[[], int]) -> None:
        """Read the model processes' count and restarts at scrape time."""
        self.model_processes.set_function(lambda: float(running()))
        self.model_process_restarts.set_function(lambda: float(restarts()))

    def write_failed(self, no_space: bool) -> None:
        """An index write failed on storage."""
        self.write_failures.labels("no_space" if no_space else "storage").inc()
        self.writes_failing.set(1)

    def write_succeeded(self) -> None:
        self.writes_failing.set(0)

    # BatchObserver protocol (service.batching)
    def batch_done(self, kind: str, size: int, seconds: float) -> None:
        self.images_embedded.labels(kind).inc(size)
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)

    def stage(self, name: str) -> _Timer:
        return _Timer(self.stage_seconds.labels(name))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Timer:
    def __init__(self, hist) -> None:
        self.hist = hist

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.hist.observe(time.perf_counter() - self.t0)


class MetricsMiddleware:
    """Counts and times every HTTP request, labelled by the matched route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.requests.labels(name, method, str(status)).inc()
            self.metrics.latency.labels(name, method).observe(time.perf_counter() - t0)
