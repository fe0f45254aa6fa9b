"""Chaos probe of the index and the service, run by hand (bounded in time and requests; loopback only).

Repeats the independent probe of issue #13 and prints, per scenario, acknowledged against present
images and the status codes each input got:

* kill -9 during `afv index build` (several times, then a resume);
* kill -9 of the server during single uploads and during batch uploads;
* a full disk: the data folder on a small tmpfs (needs root and mount; skipped otherwise);
* a read-only mount of an index (needs root and mount; skipped otherwise);
* the bad-image corpus against every image endpoint.

    .venv/bin/python bench/chaos.py                      # untrained tiny networks (fast)
    .venv/bin/python bench/chaos.py --model RUN_DIR      # a trained model
    .venv/bin/python bench/chaos.py --only kill-build --only bad-images

Results of a run are recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEY = "chaos-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PY = sys.executable
AFV = [PY, "-m", "service.cli"]


# ---- helpers -------------------------------------------------------------------------------------


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n distinct small PNGs (random smooth colours) in `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((32, 32), Image.Resampling.BILINEAR)
        path = folder / f"img{i:05d}.png"
        img.save(path)
        paths.append(path)
    return paths


def png_bytes(i: int) -> bytes:
    rng = np.random.default_rng(10_000 + i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def env(data_dir: Path, model: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "AFV_DATA_DIR": str(data_dir),
        "AFV_MODEL": str(model),
        "AFV_API_KEYS": KEY,
        "AFV_DEMO_COLLECTION": "",
        **extra,
    }


def index_count(index_dir: Path) -> int:
    """Images in an index, opened read-only in a fresh process (as after a crash)."""
    out = subprocess.run([*AFV, "index", "stats", "--index", str(index_dir)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"index stats failed: {out.stderr.strip()}")
    return int(json.loads(out.stdout)["count"])


def present_ids(index_dir: Path, ids: list[int]) -> int:
    """How many of these ids the index (reopened writable, i.e. after replay) still holds."""
    code = (
        "import sys, json\nfrom index import AFVIndex\n"
        f"ids = json.loads(sys.stdin.read())\nwith AFVIndex.open({str(index_dir)!r}) as idx:\n"
        "    print(sum(idx.get(i) is not None for i in ids))\n"
    )
    out = subprocess.run(
        [PY, "-c", code],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return int(out.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(data_dir: Path, model: Path, *args: str, **extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`afv serve` in a subprocess on a free loopback port; yields once /readyz answers (or it exits)."""
    port = free_port()
    cmd = [*AFV, "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env(data_dir, model, **extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:  # a clean shutdown (checkpoint, close); kill scenarios SIGKILL it themselves
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


def can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp())
    ok = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True).returncode
        == 0
    )
    if ok:
        subprocess.run(["umount", str(probe)])
    probe.rmdir()
    return ok


def report(title: str, rows: dict[str, object]) -> dict:
    print(f"\n## {title}")
    for k, v in rows.items():
        print(f"  {k:<34} {v}")
    return {"scenario": title, **rows}


# ---- scenarios -----------------------------------------------------------------------------------


def kill_build(work: Path, model: Path, n_images: int, kills: int) -> dict:
    """kill -9 `afv index build` `kills` times at random moments, then let it finish; count images."""
    src, idx = work / "collection", work / "kill-build-index"
    make_images(src, n_images)
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(kills):
        proc = subprocess.Popen(
            [*AFV, "index", "build", str(src), "--index", str(idx), "--model", str(model)],
            env=env(work, model),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(float(rng.uniform(5, 10)))  # start-up (imports, model) takes ~4 s
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts.append(index_count(idx) if (idx / "meta.sqlite").exists() else 0)
    done = subprocess.run(
        [*AFV, "index", "build", str(src), "--index", str(idx), "--model", str(model)],
        env=env(work, model),
        capture_output=True,
        text=True,
    )
    final = index_count(idx)
    return report(
        "kill -9 during afv index build",
        {
            "images in collection": n_images,
            "count after each kill": counts,
            "resume exit code": done.returncode,
            "count after resume": final,
            "lost or doubled": n_images - final,
        },
    )


async def _upload(url: str, client: int, batch: bool, acked: list[int], codes: Counter, stop: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=AUTH) as c:
        i = 0
        while time.monotonic() < stop:
            try:
                if batch:
                    files = [
                        ("images", (f"b{i}-{j}.png", png_bytes(100_000 * client + 10 * i + j + 500_000)))
                        for j in range(8)
                    ]
                    r = await c.post("/v1/images:batch", files=files)
                    codes[r.status_code] += 1
                    if r.status_code == 200:
                        acked += [int(x["id"]) for x in r.json()["results"] if x.get("id")]
                else:
                    r = await c.post("/v1/images", files={"image": (f"u{i}.png", png_bytes(100_000 * client + i))})
                    codes[r.status_code] += 1
                    if r.status_code == 201:
                        acked.append(int(r.json()["id"]))
            except httpx.HTTPError as e:
                codes[type(e).__name__] += 1
                return
            i += 1


def kill_server(work: Path, model: Path, batch: bool, seconds: float, clients: int) -> dict:
    """Upload from several clients, kill -9 the server after `seconds`; every acknowledged id must remain."""
    data = work / ("kill-batch" if batch else "kill-single")
    acked: list[int] = []
    codes: Counter = Counter()
    with server(data, model) as (proc, url):

        async def run() -> None:
            stop = time.monotonic() + seconds + 30
            tasks = [asyncio.create_task(_upload(url, k, batch, acked, codes, stop)) for k in range(clients)]
            await asyncio.sleep(seconds)
            proc.send_signal(signal.SIGKILL)
            await asyncio.gather(*tasks)

        asyncio.run(run())
    index_dir = next(data.glob("index-*"))
    return report(
        f"kill -9 of the server during {'batch' if batch else 'single'} uploads",
        {
            "acknowledged images": len(set(acked)),
            "present after restart": present_ids(index_dir, sorted(set(acked))),
            "status codes": dict(codes),
        },
    )


def full_disk(work: Path, model: Path, size_mb: int) -> dict:
    """The data folder on a small tmpfs: fill it, upload, free space, upload again."""
    mnt = work / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], check=True)
    codes: Counter = Counter()
    acked, ready = [], []
    try:
        with server(mnt / "data", model) as (_, url), httpx.Client(base_url=url, timeout=30, headers=AUTH) as c:
            for i in range(10):  # acknowledged before the disk fills: must survive
                r = c.post("/v1/images", files={"image": (f"pre{i}.png", png_bytes(600_000 + i))})
                if r.status_code == 201:
                    acked.append(int(r.json()["id"]))
            filler = mnt / "filler"
            with open(filler, "wb") as f:  # fill the disk, leaving the index as it is
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            for i in range(40):
                r = c.post("/v1/images", files={"image": (f"d{i}.png", png_bytes(700_000 + i))})
                codes[f"{r.status_code} {r.json().get('error', {}).get('code', '')}".strip()] += 1
                if r.status_code == 201:
                    acked.append(int(r.json()["id"]))
            ready.append(c.get("/readyz").status_code)
            ready.append(c.get("/readyz?writes=true").status_code)
            metrics_full = [
                ln for ln in c.get("/metrics").text.splitlines() if "writes_failing" in ln and not ln.startswith("#")
            ]
            filler.unlink()
            after = c.post("/v1/images", files={"image": ("after.png", png_bytes(799_999))})
            if after.status_code == 201:
                acked.append(int(after.json()["id"]))
            ready.append(c.get("/readyz").status_code)
            ready.append(c.get("/readyz?writes=true").status_code)
        present = present_ids(next((mnt / "data").glob("index-*")), acked)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
    return report(
        "full disk (tmpfs)",
        {
            "status codes while full": dict(codes),
            "/readyz, ?writes=true: full; freed": ready,
            "metrics while full": metrics_full,
            "upload after freeing space": after.status_code,
            "acknowledged / present": f"{len(acked)} / {present}",
        },
    )


def read_only(work: Path, model: Path) -> dict:
    """An index on a read-only bind mount: plain serve must fail in one line, --read-only must serve."""
    data = work / "ro-data"
    with server(data, model) as (_, url), httpx.Client(base_url=url, timeout=30, headers=AUTH) as c:
        ids = [
            c.post("/v1/images", files={"image": (f"r{i}.png", png_bytes(900_000 + i))}).json()["id"] for i in range(5)
        ]
    crashed = work / "ro-crashed"  # a writer killed before it could checkpoint its SQLite WAL
    with server(crashed, model) as (proc, url), httpx.Client(base_url=url, timeout=30, headers=AUTH) as c:
        for i in range(3):
            c.post("/v1/images", files={"image": (f"c{i}.png", png_bytes(950_000 + i))})
        proc.kill()
    mnt, mnt_crashed = work / "ro-mount", work / "ro-crashed-mount"
    for src, dst in ((data, mnt), (crashed, mnt_crashed)):
        dst.mkdir()
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)
    try:
        with server(mnt_crashed, model, "--read-only") as (proc, url):
            crashed_exit = proc.wait(timeout=120)
            crashed_out = (proc.stdout.read() if proc.stdout else b"").decode(errors="replace").strip().splitlines()
        with server(mnt, model) as (proc, url):
            plain_exit = proc.wait(timeout=120)
            plain_out = (proc.stdout.read() if proc.stdout else b"").decode(errors="replace").strip().splitlines()
        with (
            server(mnt, model, "--read-only") as (proc, url),
            httpx.Client(base_url=url, timeout=30, headers=AUTH) as c,
        ):
            get = c.get(f"/v1/images/{ids[0]}").status_code
            search = c.post("/v1/search", json={"id": ids[0], "k": 3}).status_code
            write = c.post("/v1/images", files={"image": ("w.png", png_bytes(999_999))})
            delete = c.delete(f"/v1/images/{ids[1]}").status_code
    finally:
        for dst in (mnt, mnt_crashed):
            subprocess.run(["umount", "-l", str(dst)])
    return report(
        "read-only mount",
        {
            "plain serve: exit code": plain_exit,
            "plain serve: last output line": plain_out[-1] if plain_out else "",
            "plain serve: output lines": len(plain_out),
            "--read-only: get / search": f"{get} / {search}",
            "--read-only: add": f"{write.status_code} {write.json().get('error', {}).get('code', '')}",
            "--read-only: delete": delete,
            "--read-only after a writer crash: exit": crashed_exit,
            "… its last line / lines": f"{crashed_out[-1] if crashed_out else ''} / {len(crashed_out)}",
        },
    )


def bad_images() -> dict[str, Callable[[], bytes]]:
    """The bad-image corpus: empty, corrupt, truncated, bombs, odd shapes and modes."""

    def enc(img: Image.Image, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt)
        return buf.getvalue()

    good = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    return {
        "empty": lambda: b"",
        "text": lambda: b"not an image\n" * 20,
        "truncated png": lambda: enc(good)[:200],
        "truncated jpeg": lambda: enc(good, "JPEG")[:300],
        "1x400000 png": lambda: enc(Image.new("RGB", (400_000, 1), (10, 20, 30))),
        "400000x1 png": lambda: enc(Image.new("RGB", (1, 400_000), (10, 20, 30))),
        "20000x20000 png": lambda: enc(Image.new("L", (20_000, 20_000))),
        "cmyk jpeg": lambda: enc(good.convert("CMYK"), "JPEG"),
        "16-bit png": lambda: enc(Image.fromarray(np.arange(1600, dtype=np.uint16).reshape(40, 40))),
        "palette gif": lambda: enc(good.convert("P"), "GIF"),
        "rgba webp": lambda: enc(good.convert("RGBA"), "WEBP"),
        "1x1 png": lambda: enc(Image.new("RGB", (1, 1))),
    }


def bad_input(work: Path, model: Path) -> dict:
    """Every bad image against every image endpoint: status code and seconds; 5xx is a failure."""
    rows, worst = {}, 0.0
    with server(work / "bad", model) as (_, url), httpx.Client(base_url=url, timeout=120, headers=AUTH) as c:
        for name, make in bad_images().items():
            data = make()
            got = []
            for route, files in (
                ("/v1/embed", {"image": ("x", data)}),
                ("/v1/search", {"image": ("x", data)}),
                ("/v1/images", {"image": ("x", data)}),
                ("/v1/distance", {"image_a": ("a", png_bytes(1)), "image_b": ("b", data)}),
            ):
                t0 = time.perf_counter()
                r = c.post(route, files=files)
                worst = max(worst, time.perf_counter() - t0)
                got.append(str(r.status_code))
            rows[f"{name} ({len(data)} B)"] = " ".join(got)
        alive = c.get("/readyz").status_code
    five = sum(code.startswith("5") for v in rows.values() for code in str(v).split())
    return report(
        "bad-image corpus (embed search images distance)",
        {**rows, "5xx responses": five, "slowest response, s": round(worst, 2), "/readyz after": alive},
    )


# ---- main ----------------------------------------------------------------------------------------

SCENARIOS = ("kill-build", "kill-single", "kill-batch", "full-disk", "read-only", "bad-images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="Run directory (default: untrained tiny networks).")
    ap.add_argument("--only", action="append", choices=SCENARIOS, help="Run only these scenarios (repeatable).")
    ap.add_argument("--images", type=int, default=8000, help="Collection size for the build kills.")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="Upload time before the server is killed.")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tmpfs-mb", type=int, default=6)
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()
    chosen = args.only or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="afv-chaos-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from model.extract import save_untrained_run

            model = save_untrained_run("tiny", work / "tiny-model")
        mount = can_mount()
        results = []
        for name in chosen:
            if name in ("full-disk", "read-only") and not mount:
                results.append(report(name, {"skipped": "needs root and mount (tmpfs, bind)"}))
                continue
            results.append(run_scenario(name, work, model, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def run_scenario(name: str, work: Path, model: Path, args: argparse.Namespace) -> dict:
    runs: dict[str, Callable[[], dict]] = {
        "kill-build": lambda: kill_build(work, model, args.images, args.kills),
        "kill-single": lambda: kill_server(work, model, False, args.seconds, args.clients),
        "kill-batch": lambda: kill_server(work, model, True, args.seconds, args.clients),
        "full-disk": lambda: full_disk(work, model, args.tmpfs_mb),
        "read-only": lambda: read_only(work, model),
        "bad-images": lambda: bad_input(work, model),
    }
    return runs[name]()


if __name__ == "__main__":
    main()
