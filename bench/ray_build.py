"""`afv index build --engine ray` against `--engine local` on the same N images (#15 item 4).

Copies the first N images (in build order) of SOURCE (a folder, .tar or .tar.gz) into a temporary
folder, builds two indexes of it with the `afv` command, one per engine, and prints for each the wall
time of the whole command (model load, Ray start and stop included) and images/s, Ray's overhead
(ray time / local time − 1), the largest difference between the two indexes' vectors, and the share of
100 queries whose top-10 ids are identical in both. The Ray run's own embedding rate (its progress
bar's count over its time) is printed too: it leaves out Ray's start-up and the final training of the
index (the shards are added to the index while Ray embeds the rest).

    .venv/bin/python bench/ray_build.py ../shared/data/cifar10-jpeg.tar.gz             # 5000, bundled model
    .venv/bin/python bench/ray_build.py FOLDER --images 1000 --model RUN_DIR --shard-size 500
    .venv/bin/python bench/ray_build.py ../shared/data/cifar10-jpeg.tar.gz --running-cluster

`--running-cluster` starts a local Ray head (`ray start --head`) before both builds and stops it after,
and the Ray build joins it (`--address auto`): Ray's per-job costs without its start and stop, as on a
cluster that is already up.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
AFV = [sys.executable, "-m", "service.cli"] if not (ROOT / ".venv/bin/afv").exists() else [str(ROOT / ".venv/bin/afv")]


def take_images(source: str, n: int, folder: Path) -> int:
    """The first n images of `source`, written under their names into `folder`; how many there were."""
    from itertools import islice

    from service.bulk.sources import iter_source, read_entries

    entries = list(islice(iter_source(source), n))
    for entry, data in zip(entries, read_entries(entries)):
        if isinstance(data, Exception):
            raise data
        (folder / entry.name).parent.mkdir(parents=True, exist_ok=True)
        (folder / entry.name).write_bytes(data)
    return len(entries)


def timed_build(folder: Path, index: Path, extra: list[str]) -> tuple[float, str]:
    """Wall seconds of one `afv index build` and what it printed (stdout + stderr)."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [*AFV, "index", "build", str(folder), "--index", str(index), *extra], capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"build failed ({' '.join(extra)}):\n{res.stdout}\n{res.stderr}")
    return seconds, res.stdout + res.stderr


def compare(local: Path, ray: Path, queries: int = 100, k: int = 10, seed: int = 0) -> tuple[float, float, float]:
    """(max |Δ| over all vector components, max ‖Δ‖/‖v‖ per vector, share of identical top-k id lists)."""
    from index import AFVIndex

    with AFVIndex.open(local, read_only=True) as a, AFVIndex.open(ray, read_only=True) as b:
        shas = a.find_sha256([a.get(i)["sha256"] for i in range(1, a.count + 1)])  # type: ignore[index]
        assert b.find_sha256(list(shas)) == shas, "the two builds gave images different ids"
        ids = sorted(shas.values())
        va, vb = a.vectors(ids), b.vectors(ids)
        A, B = np.stack([va[i] for i in ids]), np.stack([vb[i] for i in ids])
        rel = np.linalg.norm(A - B, axis=1) / np.maximum(np.linalg.norm(A, axis=1), 1e-30)
        rng = np.random.default_rng(seed)
        q = A[rng.choice(len(A), size=min(queries, len(A)), replace=False)]
        q = q + rng.normal(0, 0.01, q.shape).astype(np.float32) * np.abs(A).mean()  # near items, not on them
        same = [[h.id for h in x] == [h.id for h in y] for x, y in zip(a.search(q, k=k), b.search(q, k=k), strict=True)]
        return float(np.abs(A - B).max()), float(rel.max()), float(np.mean(same))


@contextmanager
def running_cluster(start: bool) -> Iterator[None]:
    """A local Ray head for the duration (when `start`), with this machine's CPUs; stopped after."""
    if not start:
        yield
        return
    ray = str(Path(sys.executable).parent / "ray")
    cpus = str(os.cpu_count() or 1)
    subprocess.run(
        [ray, "start", "--head", "--num-cpus", cpus, "--include-dashboard=false", "--disable-usage-stats"],
        check=True,
        capture_output=True,
    )
    try:
        yield
    finally:
        subprocess.run([ray, "stop"], capture_output=True)


def bar_rate(output: str, bar: str) -> float | None:
    """Images per second over a finished tqdm bar in a command's output: its count over its elapsed time."""
    done = re.findall(rf"{re.escape(bar)}: 100%[^\r\n]*? (\d+)/\d+ \[(?:(\d+):)?(\d+):(\d+)<", output)
    if not done:
        return None
    n, h, m, s = done[-1]
    seconds = int(h or 0) * 3600 + int(m) * 60 + int(s)
    return int(n) / seconds if seconds else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="Folder, .tar or .tar.gz of images.")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--model", type=Path, default=None, help="Run directory (default: the bundled model).")
    ap.add_argument("--shard-size", type=int, default=1000, help="Images per embedding shard of the Ray build.")
    ap.add_argument("--ray-args", default="", help="More options for the Ray build, e.g. '--workers 2'.")
    ap.add_argument("--running-cluster", action="store_true", help="Join a Ray head started beforehand.")
    ap.add_argument("--keep", type=Path, default=None, help="Copy the Ray-built index here (for bench/pq_recall.py).")
    args = ap.parse_args()

    model = ["--model", str(args.model)] if args.model else []
    with tempfile.TemporaryDirectory(prefix="afv-ray-bench-") as tmp, running_cluster(args.running_cluster):
        work = Path(tmp)
        n = take_images(args.source, args.images, work / "images")
        local_s, _ = timed_build(work / "images", work / "local", model)
        ray_extra = [*model, "--engine", "ray", "--shard-size", str(args.shard_size), *args.ray_args.split()]
        ray_extra += ["--address", "auto"] if args.running_cluster else []
        ray_s, ray_out = timed_build(work / "images", work / "ray", ray_extra)
        max_abs, max_rel, same = compare(work / "local", work / "ray")
        if args.keep:
            shutil.copytree(work / "ray", args.keep, ignore=shutil.ignore_patterns("embeddings", "LOCK"))
    shards = next((line for line in ray_out.splitlines() if line.startswith("embedding shards:")), "")
    embed_rate = bar_rate(ray_out, "embedding (ray)")  # shards are added meanwhile: no assembly rate of its own
    cluster = ", Ray head started beforehand" if args.running_cluster else ""
    print(f"{n} images of {args.source}, model {args.model or 'bundled default'}, {os.cpu_count()} CPUs{cluster}")
    print(f"{'engine':<8} {'wall s':>8} {'img/s':>8}")
    print(f"{'local':<8} {local_s:>8.1f} {n / local_s:>8.1f}")
    print(f"{'ray':<8} {ray_s:>8.1f} {n / ray_s:>8.1f}   ({shards})")
    if embed_rate is not None:
        print(f"ray embedding stage alone (no start-up, no assembly): {embed_rate:.1f} img/s")
    print(f"ray overhead: {ray_s / local_s - 1:+.1%} (goal <= +20% on one machine)")
    print(f"max |vector difference|: {max_abs:.3g} (largest relative, per vector: {max_rel:.2g})")
    print(f"identical top-10 over 100 queries: {same:.0%}")


if __name__ == "__main__":
    main()
