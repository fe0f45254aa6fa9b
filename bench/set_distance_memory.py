"""Memory and responsiveness of one large /v1/set-distance: the server's peak RSS, the request's time,
and the slowest /healthz answered meanwhile (polled every 20 ms), loopback only.

Starts `afv serve`'s app on a temporary data folder (bundled default model unless --model), waits until
it is ready, sends `--repeats` set-distance requests of `--images` fixture images per set, and prints the
server process's peak RSS (VmHWM; the model processes are separate) against its idle peak.

    .venv/bin/python bench/set_distance_memory.py                  # 128 + 128 images, bundled pyramid
    .venv/bin/python bench/set_distance_memory.py --images 64 --model runs/cpu-c10
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "fixtures" / "cifar10"
SERVER = """
import sys, uvicorn
from service.app import create_app
from service.settings import Settings
model = sys.argv[3] or None
uvicorn.run(create_app(Settings(data_dir=sys.argv[1], demo_collection=None, api_keys=["bench"], model=model)),
            host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_gb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in GB."""
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1e6


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).json().get("ready"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128, help="images per set (fixture images, repeated if needed)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="", help="run folder (default: the bundled model)")
    args = ap.parse_args()
    files = sorted(IMAGES.rglob("*.jpg"))
    data = [files[i % len(files)].read_bytes() for i in range(2 * args.images)]
    body = [("images_a", d) for d in data[: args.images]] + [("images_b", d) for d in data[args.images :]]
    port, folder = free_port(), tempfile.mkdtemp(prefix="afv-setdist-")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, folder, str(port), args.model], cwd=ROOT)
    url, slowest, done = f"http://127.0.0.1:{port}", [0.0], threading.Event()
    try:
        wait_ready(url, proc)
        idle = peak_rss_gb(proc.pid)

        def probe() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                httpx.get(f"{url}/healthz", timeout=60)
                slowest[0] = max(slowest[0], time.perf_counter() - t0)
                time.sleep(0.02)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        auth = {"Authorization": "Bearer bench"}
        for i in range(args.repeats):
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/set-distance", files=body, headers=auth, timeout=600)
            r.raise_for_status()
            print(f"request {i + 1}: distance {r.json()['distance']:.6g}, {time.perf_counter() - t0:.2f} s")
        done.set()
        prober.join()
        print(
            f"{args.images} + {args.images} images: server peak RSS {peak_rss_gb(proc.pid):.2f} GB "
            f"(idle {idle:.2f} GB); slowest /healthz meanwhile {slowest[0] * 1e3:.0f} ms"
        )
    finally:
        done.set()
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
