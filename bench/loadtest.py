"""Load test of the HTTP service: concurrent clients on /v1/search and /v1/distance, loopback only.

Starts a server in a subprocess (over a temporary index, or `--url` targets a running one on
127.0.0.1), seeds the index, then drives a bounded asyncio httpx client (at most `--requests`
requests and `--duration` seconds; `--client raw`, the default, sends requests encoded before the clock
starts, `--client httpx` builds each with httpx) and prints latency percentiles, throughput and errors. In the same
run it times the raw model work — the embedder's `embed` (AFVs) and the index's `embed` on batches of the
server's batch size, with the server idle — and reports service throughput as a share of it.

    .venv/bin/python bench/loadtest.py                         # default (bundled or untrained tiny) model
    .venv/bin/python bench/loadtest.py --preset cpu            # untrained `cpu`-preset networks (same cost)
    .venv/bin/python bench/loadtest.py --model runs/cpu-c10 --concurrency 32 --duration 30
    .venv/bin/python bench/loadtest.py --http h11 --loop asyncio        # uvicorn's pure-Python parser and loop
    .venv/bin/python bench/loadtest.py --client httpx --access-log      # the old client; afv serve's access log
    .venv/bin/python bench/loadtest.py --model-workers 1 | 2             # A/B of the server's model threads

It also prints each server thread's CPU over the load ("main" is the event loop), which shows whether
the server's cores are busy and with what.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.raw_http import Connection, ProtocolError, post  # noqa: E402

IMAGES = ROOT / "tests" / "fixtures" / "cifar10"
KEY = "loadtest-key"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MIRROR = ["true"]  # /v1/search's mirror flag for the load (set from --no-mirror)

SERVER_CODE = """
import json, logging, sys
import uvicorn
from model.memory import keep_freed_memory
from service.app import create_app
from service.settings import Settings
keep_freed_memory()  # as `afv serve` does
cfg = json.loads(sys.argv[1])
port, http, loop, switch, access = (cfg.pop(k) for k in ("port", "http", "loop", "switch_interval", "access_log"))
if switch:
    sys.setswitchinterval(switch)
logging.basicConfig(level=logging.WARNING)
uvicorn.run(create_app(Settings(**cfg)), host="127.0.0.1", port=port, log_level="info" if access else "warning",
            access_log=access, http=http, loop=loop)
"""


# ---- raw model throughput ------------------------------------------------------------------------


def untrained_model(preset: str, folder: Path) -> str:
    """--preset: a run folder of untrained networks of that preset, served and timed like any --model."""
    from model.extract import save_untrained_run

    return str(save_untrained_run(preset, folder / f"untrained-{preset}"))


def load_extractor(model: str | None, device: str):
    from model.loading import load_embedder

    return load_embedder(model, device=device)


def time_batches(fn, x, seconds: float = 3.0) -> tuple[float, float]:
    """(images per second, CPU seconds of this process per image) of fn on batch x, repeated for about
    `seconds` after one warm-up call."""
    fn(x)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


class RawTimer:
    """Raw `.afv` and index `.embed` images/s on one batch, in this process, with the server idle.

    Timed on the main thread (as `afv bench extract` does: in one pass and split across the torch
    threads, the faster counting) and on a worker thread (split, as the server runs it; PyTorch's
    intra-op threading behaves differently there), before and after the load.
    The comparison uses, per kind, the faster of the two threads, averaged over before/after.
    """

    def __init__(self, args, images: list[bytes]):
        import torch

        from model.data import decode_image
        from model.parallel import BatchSplitter, split_threads
        from service.model_index import ModelIndex

        self.ext = load_extractor(args.model, args.device)
        self.x = torch.from_numpy(
            np.stack([self.ext.preprocess(decode_image(b)) for b in (images * args.batch_size)[: args.batch_size]])
        )
        self._tmp = tempfile.TemporaryDirectory()
        self.idx = ModelIndex.create(Path(self._tmp.name) / "ix", self.ext)
        self._worker = ThreadPoolExecutor(1)
        afv_parts = BatchSplitter(self.ext)
        self._afv_split = lambda b: afv_parts.map(lambda e, part: e.embed(part).cpu(), b, split_threads(b.device))
        self.runs: list[dict[str, float]] = []

    def measure(self) -> None:
        """Each kind in one pass and split across the torch threads (what the server runs); the faster
        counts, so raw is the best this machine does either way."""
        fns = {
            "afv": (lambda b: self.ext.embed(b).cpu(), self._afv_split),
            "embed": (self.idx.projector.embed, self.idx.sketch),
        }
        run: dict[str, float] = {}
        for kind, (whole, split) in fns.items():
            run[f"{kind}_main"], run[f"{kind}_cpu"] = time_batches(whole, self.x, 2.0)
            split_rate, split_cpu = time_batches(split, self.x, 2.0)
            if split_rate > run[f"{kind}_main"]:
                run[f"{kind}_main"], run[f"{kind}_cpu"] = split_rate, split_cpu
            run[f"{kind}_worker"], _ = self._worker.submit(time_batches, split, self.x, 2.0).result()
        self.runs.append(run)

    def result(self) -> dict:
        self.idx.close()
        self._tmp.cleanup()
        self._worker.shutdown()
        best = {
            f"{k}_img_s": float(np.mean([max(r[f"{k}_main"], r[f"{k}_worker"]) for r in self.runs]))
            for k in ("afv", "embed")
        }
        cpu = {f"{k}_cpu_s": float(np.mean([r[f"{k}_cpu"] for r in self.runs])) for k in ("afv", "embed")}
        return {**best, **cpu, "runs": self.runs}


# ---- server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(proc: subprocess.Popen | None) -> float:
    """User + system CPU seconds so far of the server process and its model processes (Linux /proc; nan for a
    --url server)."""
    return float("nan") if proc is None else sum(thread_cpu_seconds(proc).values())


def thread_cpu_seconds(proc: subprocess.Popen | None) -> dict[int, float]:
    """CPU seconds so far of each thread of the server process and of its model processes, by thread id ({} for
    a --url server)."""
    from bench.thread_states import thread_cpu

    return {} if proc is None else thread_cpu(proc.pid)


def thread_cores(before: dict[int, float], after: dict[int, float], main: int, seconds: float) -> list[list]:
    """[label, cores busy] per server thread over the load, busiest first; 'main' is the event loop, 'process
    PID' a model process's own thread."""
    from bench.thread_states import family

    workers = set(family(main)[1:]) if main > 0 else set()

    def label(tid: int) -> str:
        return "main" if tid == main else f"process {tid}" if tid in workers else str(tid)

    rows = [[label(tid), (cpu - before.get(tid, 0.0)) / seconds] for tid, cpu in after.items()]
    return sorted(rows, key=lambda r: -r[1])


def server_env(pairs: list[str]) -> dict[str, str]:
    """--server-env KEY=VALUE pairs: variables for the server process alone (the raw timing keeps this one's)."""
    if bad := [p for p in pairs if "=" not in p]:
        raise SystemExit(f"--server-env wants KEY=VALUE, got {bad[0]!r}")
    return dict(p.split("=", 1) for p in pairs)


def start_server(args, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = {
        "data_dir": str(data_dir),
        "demo_collection": None,
        "api_keys": [KEY],
        "device": args.device,
        "model": args.model,
        "port": port,
        "http": args.http,
        "loop": args.loop,
        "switch_interval": args.switch_interval,
        "access_log": args.access_log,
        "batch_max_size": args.batch_size,
        "torch_threads": args.torch_threads,
        "model_workers": args.model_workers,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE, json.dumps(cfg)],
        cwd=ROOT,
        env={**os.environ, **server_env(args.server_env), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL if args.access_log else None,  # uvicorn's access lines
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not become ready in 180 s")


# ---- load -----------------------------------------------------------------------------------------


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "distance": []})
    errors: dict[str, int] = field(default_factory=dict)
    images: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def reply(self, op: str, status: int, t0: float) -> None:
        """Count one answered request of route `op`, sent at perf_counter time t0."""
        if status != 200:
            self.error(f"HTTP {status}")
            return
        self.latencies[op].append(time.perf_counter() - t0)
        self.images += 1 if op == "search" else 2


def load_images(n: int) -> list[bytes]:
    files = sorted(IMAGES.rglob("*.jpg"))[:n]
    if not files:
        raise SystemExit(f"no images under {IMAGES}")
    return [f.read_bytes() for f in files]


async def seed_index(client: httpx.AsyncClient, images: list[bytes]) -> None:
    for i in range(0, len(images), 32):
        chunk = images[i : i + 32]
        r = await client.post(
            "/v1/images:batch",
            files=[("images", (f"{i + j}.jpg", b)) for j, b in enumerate(chunk)],
            headers={"Authorization": f"Bearer {KEY}"},
        )
        r.raise_for_status()


async def one_request(client: httpx.AsyncClient, op: str, i: int, images: list[bytes], res: Results) -> None:
    a, b = images[i % len(images)], images[pair_of(i, len(images))]
    t0 = time.perf_counter()
    try:
        if op == "search":
            r = await client.post("/v1/search", files={"image": ("q.jpg", a)}, data={"k": "10", "mirror": MIRROR[0]})
        else:
            r = await client.post("/v1/distance", files={"image_a": ("a.jpg", a), "image_b": ("b.jpg", b)})
    except httpx.HTTPError as e:
        res.error(type(e).__name__)
        return
    res.reply(op, r.status_code, t0)


def pair_of(i: int, n: int) -> int:
    """The image that request i's first image is compared with in /v1/distance."""
    return (i * 7 + 3) % n


def op_of(i: int, args) -> str:
    """Request i's route: search_weight searches, then distance_weight distances, repeating."""
    return "search" if (i % (args.search_weight + args.distance_weight)) < args.search_weight else "distance"


async def drive(url: str, images: list[bytes], args) -> tuple[Results, float]:
    """Run the load with --client's client: `concurrency` workers share one request counter."""
    return await (drive_raw if args.client == "raw" else drive_httpx)(url, images, args)


async def run_workers(args, send: Callable[[int, int], Awaitable[None]]) -> float:
    """`concurrency` workers share one request counter and send request i as `send(worker, i)` until
    --requests or --duration runs out; the seconds it took."""
    counter, deadline = iter(range(args.requests)), time.perf_counter() + args.duration

    async def worker(w: int) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            await send(w, i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    return time.perf_counter() - t0


async def drive_httpx(url: str, images: list[bytes], args) -> tuple[Results, float]:
    res = Results()
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        elapsed = await run_workers(args, lambda _, i: one_request(client, op_of(i, args), i, images, res))
    return res, elapsed


def raw_requests(host: str, images: list[bytes]) -> dict[str, list[bytes]]:
    """Every request the load sends, encoded once: the same forms as `one_request`'s, request i using
    entry i % len(images)."""
    n = len(images)
    search = [
        post(host, "/v1/search", [("image", b, "q.jpg"), ("k", b"10", None), ("mirror", MIRROR[0].encode(), None)])
        for b in images
    ]
    distance = [
        post(host, "/v1/distance", [("image_a", images[i], "a.jpg"), ("image_b", images[pair_of(i, n)], "b.jpg")])
        for i in range(n)
    ]
    return {"search": search, "distance": distance}


async def drive_raw(url: str, images: list[bytes], args) -> tuple[Results, float]:
    res, where = Results(), urlparse(url)
    requests = raw_requests(where.netloc, images)
    conns = [Connection(where.hostname or "127.0.0.1", where.port or 80) for _ in range(args.concurrency)]

    async def send(w: int, i: int) -> None:
        op = op_of(i, args)
        t0 = time.perf_counter()
        try:
            reply = await asyncio.wait_for(conns[w].send(requests[op][i % len(images)]), 30)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ProtocolError) as e:
            res.error(type(e).__name__)
            return
        res.reply(op, reply.status, t0)

    try:
        elapsed = await run_workers(args, send)
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return res, elapsed


async def warm_and_seed(url: str, images: list[bytes], n_index: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await seed_index(client, images[:n_index])
        for b in images[:4]:
            (await client.post("/v1/search", files={"image": b})).raise_for_status()


def batch_stats(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        for kind, as_kind in (("afv", "afv"), ("pairs", "afv"), ("embed", "embed")):  # pairs: AFVs of image pairs
            for stat in ("sum", "count"):
                if line.startswith(f'afv_model_batch_size_{stat}{{kind="{kind}"}}'):
                    out[f"{as_kind}_{stat}"] += float(line.rsplit(" ", 1)[1])
            if line.startswith(f'afv_model_batch_seconds_sum{{kind="{kind}"}}'):
                out[f"{as_kind}_seconds"] += float(line.rsplit(" ", 1)[1])
        if line.startswith("afv_model_threads "):
            out["model_threads"] = float(line.rsplit(" ", 1)[1])
    return dict(out)


# ---- report ---------------------------------------------------------------------------------------


def cpu_ceiling(s: dict) -> dict[str, float]:
    """The best service/raw this machine allows with the load generator on it, if the server had no overhead.

    With K cores, M CPU seconds of model work per request at raw speed (raw itself keeping C cores busy)
    and L of the load generator per request: requests/s ≤ K / (M + L), so service/raw ≤ K/C · M/(M + L)."""
    raw, n = s["raw"], max(1, s["requests_ok"])
    afv_imgs, embed_imgs = s["model_images"]["afv"], s["model_images"]["embed"]
    model = (afv_imgs * raw["afv_cpu_s"] + embed_imgs * raw["embed_cpu_s"]) / n
    gen = s["cpu_s_per_request"]["load_generator"]
    cores = os.cpu_count() or 1
    model_wall = (afv_imgs / raw["afv_img_s"] + embed_imgs / raw["embed_img_s"]) / n
    busy = model / model_wall if model_wall else float(cores)  # cores the raw model keeps busy (C)
    return {
        "model_cpu_s": model,
        "load_generator_cpu_s": gen,
        "raw_cores": busy,
        "ceiling": min(1.0, cores / busy * model / (model + gen)) if model + gen > 0 else 1.0,
    }


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs) * 1000
    return {
        "n": len(xs),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def model_images(res: Results) -> tuple[int, int]:
    """(AFVs, sketches) the model computed: 2 AFVs per distance; a search sketches its image and, with
    mirror, its mirror image."""
    searches = len(res.latencies["search"])
    return 2 * len(res.latencies["distance"]), searches * (2 if MIRROR[0] == "true" else 1)


def summarise(res: Results, elapsed: float, raw: dict, before: dict, after: dict) -> dict:
    n_search, n_dist = len(res.latencies["search"]), len(res.latencies["distance"])
    afv_imgs, embed_imgs = model_images(res)
    raw_mix_seconds = afv_imgs / raw["afv_img_s"] + embed_imgs / raw["embed_img_s"]
    threads = int(after.get("model_threads", 1))
    mean_batch = {
        k: (after.get(f"{k}_sum", 0) - before.get(f"{k}_sum", 0))
        / max(1.0, after.get(f"{k}_count", 0) - before.get(f"{k}_count", 0))
        for k in ("afv", "embed")
    }
    return {
        "elapsed_s": elapsed,
        "requests_ok": n_search + n_dist,
        "errors": sum(res.errors.values()),
        "error_kinds": res.errors,
        "req_per_s": (n_search + n_dist) / elapsed,
        "images_per_s": res.images / elapsed,
        "latency": {
            "all": percentiles(res.latencies["search"] + res.latencies["distance"]),
            "search": percentiles(res.latencies["search"]),
            "distance": percentiles(res.latencies["distance"]),
        },
        "raw": raw,
        "model_images_per_s": (afv_imgs + embed_imgs) / elapsed,
        "raw_same_mix_img_s": (afv_imgs + embed_imgs) / raw_mix_seconds if raw_mix_seconds else 0.0,
        "service_vs_raw": raw_mix_seconds / elapsed if raw_mix_seconds else 0.0,
        "mean_model_batch": mean_batch,
        "model_images": {"afv": afv_imgs, "embed": embed_imgs},
        # images/s inside the server's passes (compare with raw: contention slows passes down)
        "in_pass_img_s": {
            k: (after.get(f"{k}_sum", 0) - before.get(f"{k}_sum", 0))
            / max(1e-9, after.get(f"{k}_seconds", 0) - before.get(f"{k}_seconds", 0))
            for k in ("afv", "embed")
        },
        # share of the wall time the model threads spent in batched passes (the rest they waited for work)
        "model_threads": threads,
        "model_busy": sum(after.get(f"{k}_seconds", 0) - before.get(f"{k}_seconds", 0) for k in ("afv", "embed"))
        / elapsed
        / threads,
    }


def print_report(s: dict, args) -> None:
    print(
        f"\n== AFV service load test: {args.concurrency} clients, {s['elapsed_s']:.1f} s, "
        f"model {args.preset or args.model or 'default'}, {args.client} client"
        + (f", server env {' '.join(args.server_env)}" if args.server_env else "")
        + (f", http {args.http}, loop {args.loop}" if (args.http, args.loop) != ("auto", "auto") else "")
        + (", access log" if args.access_log else "")
        + (f", switch interval {args.switch_interval} s" if args.switch_interval else "")
        + " =="
    )
    print(f"{'route':<10} {'n':>7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    for name, p in s["latency"].items():
        if p["n"]:
            print(f"{name:<10} {p['n']:>7} {p['p50_ms']:>9.1f} {p['p95_ms']:>9.1f} {p['p99_ms']:>9.1f}")
    print(
        f"throughput: {s['req_per_s']:.1f} req/s, {s['images_per_s']:.1f} images/s; errors: {s['errors']} "
        f"{s['error_kinds'] or ''}"
    )
    print(
        f"mean images per model pass: afv {s['mean_model_batch']['afv']:.1f}, "
        f"embed {s['mean_model_batch']['embed']:.1f}; {s['model_threads']} model thread(s), "
        f"busy {100 * s['model_busy']:.0f}% of the time"
    )
    print(
        f"images/s inside the server's passes (per model thread): afv {s['in_pass_img_s']['afv']:.1f}, "
        f"embed {s['in_pass_img_s']['embed']:.1f}"
    )
    print(f"raw model work, batch {args.batch_size}, server idle (img/s; main thread / worker thread):")
    for when, r in zip(("before", "after"), s["raw"]["runs"]):
        print(
            f"  {when:<6}  afv {r['afv_main']:8.1f} / {r['afv_worker']:8.1f}   "
            f"index embed {r['embed_main']:8.1f} / {r['embed_worker']:8.1f}"
        )
    print(
        f"  used: afv {s['raw']['afv_img_s']:.1f}, embed {s['raw']['embed_img_s']:.1f}; "
        f"same request mix as the load: {s['raw_same_mix_img_s']:.1f} img/s"
    )
    per, busy = s["cpu_s_per_request"], s["cpu_cores_busy"]
    print(
        f"CPU per request: server {1000 * per['server']:.1f} ms, load generator {1000 * per['load_generator']:.1f} ms "
        f"(cores busy: server {busy['server']:.2f}, load generator {busy['load_generator']:.2f})"
    )
    print(
        f"model images (AFVs + sketches, mirror images included): {s['model_images_per_s']:.1f}/s; "
        f"service throughput = {100 * s['service_vs_raw']:.0f}% of raw extraction throughput"
    )
    if threads := [f"{label} {cores:.2f}" for label, cores in s["server_thread_cores"] if cores >= 0.01]:
        print(f"server threads, cores busy (main = event loop): {', '.join(threads)}")
    c = s["cpu_ceiling"]
    print(
        f"CPU ceiling with the load generator on this machine: model {1000 * c['model_cpu_s']:.1f} ms CPU per "
        f"request at raw speed ({c['raw_cores']:.2f} cores busy), load generator "
        f"{1000 * c['load_generator_cpu_s']:.1f} ms: a server with no overhead of its own would reach at most "
        f"{100 * c['ceiling']:.0f}% of raw"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="target a running server on loopback (else one is started)")
    p.add_argument("--model", help="run directory for the started server and the raw timing")
    p.add_argument("--preset", help="untrained networks of this preset (tiny, cpu, …) instead of --model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load client: raw (requests encoded up front, little CPU taken from the server) or httpx",
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (upper bound)")
    p.add_argument("--requests", type=int, default=20_000, help="requests (upper bound)")
    p.add_argument("--search-weight", type=int, default=1)
    p.add_argument("--distance-weight", type=int, default=1)
    p.add_argument("--index-images", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32, help="server batch_max_size and raw timing batch")
    p.add_argument("--torch-threads", type=int, help="server's AFV_TORCH_THREADS (default: PyTorch's)")
    p.add_argument(
        "--model-workers", type=int, help="server's AFV_MODEL_WORKERS (default: one per torch thread on CPU)"
    )
    p.add_argument(
        "--http", default="auto", help="the started server's HTTP parser: auto (httptools, a dependency), h11"
    )
    p.add_argument("--loop", default="auto", help="the started server's event loop: auto (uvloop off Windows), asyncio")
    p.add_argument(
        "--switch-interval", type=float, help="the server's sys.setswitchinterval (Python's default: 0.005 s)"
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the started server only, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="the started server logs each request as `afv serve` does (its output goes to /dev/null)",
    )
    p.add_argument("--loop-nice", type=int, help="nice value for the started server's event-loop thread alone")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.add_argument("--no-mirror", action="store_true", help="searches without their mirror image (1 sketch each)")
    args = p.parse_args(argv)
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error("--url must point at a loopback address (127.0.0.1, localhost, ::1)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from model.memory import keep_freed_memory

    keep_freed_memory()  # raw timings as `afv` runs them: large freed blocks stay in the heap
    MIRROR[0] = "false" if args.no_mirror else "true"
    images = load_images(max(args.index_images, 64))
    with tempfile.TemporaryDirectory(prefix="afv-loadtest-") as tmp:
        if args.preset:
            args.model = untrained_model(args.preset, Path(tmp))
        proc, url = (None, args.url.rstrip("/")) if args.url else start_server(args, Path(tmp))
        try:
            asyncio.run(warm_and_seed(url, images, args.index_images))
            if args.loop_nice is not None and proc is not None:  # the event loop thread only (tid = pid)
                os.setpriority(os.PRIO_PROCESS, proc.pid, args.loop_nice)
            raw = RawTimer(args, images)
            raw.measure()
            before = batch_stats(url)
            cpu0, threads0 = (cpu_seconds(proc), time.process_time()), thread_cpu_seconds(proc)
            res, elapsed = asyncio.run(drive(url, images, args))
            cpu = {"server": cpu_seconds(proc) - cpu0[0], "load_generator": time.process_time() - cpu0[1]}
            threads = thread_cores(threads0, thread_cpu_seconds(proc), proc.pid if proc else -1, elapsed)
            after = batch_stats(url)
            raw.measure()
            summary = summarise(res, elapsed, raw.result(), before, after)
            summary["cpu_s_per_request"] = {k: v / max(1, summary["requests_ok"]) for k, v in cpu.items()}
            summary["cpu_cores_busy"] = {k: v / elapsed for k, v in cpu.items()}
            summary["cpu_ceiling"] = cpu_ceiling(summary)
            summary["server_thread_cores"] = threads
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    print_report(summary, args)
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
