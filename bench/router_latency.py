"""Search latency through the shard router (`afv serve --shards`) against the single index, loopback only.

Builds an index of the fixture images with the model, splits it with `afv index shard`, starts one
`afv serve --read-only` process for the whole index and one per shard, and the router in front of the
shards; then sends the same queries, one at a time, to the single server and to the router (alternating
which goes first), and prints latency percentiles per kind of query and whether the answers agree.

    .venv/bin/python bench/router_latency.py                      # bundled model, 3 shards, 200 queries
    .venv/bin/python bench/router_latency.py --shards 2 --queries 100 --model runs/cpu-c10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "fixtures" / "cifar10"
AFV = [sys.executable, "-m", "service.cli"]
KEY = "router-bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def afv(*args: str, env: dict[str, str]) -> None:
    subprocess.run([*AFV, *args], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def serve(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`afv serve ARGS` on a free port, its output (access log included) in `log`."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([*AFV, "serve", "--port", str(port), *args], cwd=ROOT, env=env, stdout=out, stderr=out)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean())}


def timed(client: httpx.Client, request: dict) -> tuple[float, list]:
    t0 = time.perf_counter()
    r = client.post("/v1/search", **request)
    ms = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    return ms, [(h["id"], h["distance"]) for h in r.json()["results"]]


def timed_get(client: httpx.Client, path: str) -> float:
    """Milliseconds of one trivial request: what one loopback HTTP hop costs on this machine now."""
    t0 = time.perf_counter()
    client.get(path).raise_for_status()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=IMAGES)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200, help="of each kind (image, id)")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    env = dict(os.environ, AFV_API_KEYS=KEY, AFV_DEMO_COLLECTION="", AFV_TORCH_THREADS="1", OMP_NUM_THREADS="1")
    model = ["--model", str(args.model)] if args.model else []
    t0 = time.perf_counter()
    afv("index", "build", str(args.images), "--index", str(tmp / "single"), *model, env=env)
    afv("index", "shard", str(tmp / "single"), "--shards", str(args.shards), "--out", str(tmp / "shards"), env=env)
    print(f"built and sharded in {time.perf_counter() - t0:.1f} s; server logs in {tmp}", file=sys.stderr)

    procs: list[subprocess.Popen] = []
    try:
        folders = [tmp / "single", *(tmp / "shards" / f"shard-{k:03d}" for k in range(args.shards))]
        urls = []
        for i, folder in enumerate(folders):
            replica = ["--read-only", "--index", str(folder), *model]
            proc, url = serve(replica, env | {"AFV_DATA_DIR": str(tmp / f"d{i}")}, tmp / f"{folder.name}.log")
            procs.append(proc)
            urls.append(url)
        for proc, url in zip(procs, urls):
            wait_ready(url, proc)
        router, router_url = serve(["--shards", ",".join(urls[1:])], env, tmp / "router.log")
        procs.append(router)
        wait_ready(router_url, router)

        files = sorted(args.images.rglob("*.jpg"))
        ids = [h["id"] for h in httpx.post(f"{urls[0]}/v1/search", json={"id": "1", "k": 1000}).json()["results"]]
        queries = {
            "image": [
                {"files": {"image": files[i % len(files)].read_bytes()}, "data": {"k": str(args.k)}}
                for i in range(args.queries)
            ],
            "id": [{"json": {"id": ids[i % len(ids)], "k": args.k}} for i in range(args.queries)],
        }
        results: dict[str, dict] = {}
        with (
            httpx.Client(base_url=urls[0], timeout=60) as single,
            httpx.Client(base_url=router_url, timeout=60) as routed,
        ):
            for kind, requests in queries.items():
                timed(single, requests[0]), timed(routed, requests[0])  # warm-up
                lat: dict[str, list[float]] = {"single": [], "router": []}
                differ = 0
                for i, request in enumerate(requests):
                    order = [("single", single), ("router", routed)][:: 1 if i % 2 else -1]
                    answers = {}
                    for name, client in order:
                        ms, answers[name] = timed(client, request)
                        lat[name].append(ms)
                    differ += answers["single"] != answers["router"]
                results[kind] = {name: percentiles(ms) for name, ms in lat.items()} | {"answers_differ": differ}
            results["hop"] = percentiles([timed_get(single, "/healthz") for _ in range(args.queries)])
        print(json.dumps({"shards": args.shards, "queries": args.queries, "k": args.k, "results": results}, indent=1))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
