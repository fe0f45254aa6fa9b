"""Does a Python thread beside the model threads leave cores idle? A stand-in for the server's event loop.

Two model threads, as the service runs them (each with its own replica and one torch thread, AFV
batches of 12 with the bundled model), run for a fixed time, alone and then beside a third thread that
runs Python (or small NumPy calls) for `--duty` of the time in 2 ms slices. Prints images/s and the
process's busy cores for each. If the third thread's GIL holding stalled the model threads, the busy
cores would fall below 2 by more than nothing; if it only takes its share of the CPU, img/s falls by
about `duty`/2.

    OMP_NUM_THREADS=2 .venv/bin/python bench/gil_probe.py --duty 0.2 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def busy_thread(kind: str, duty: float, stop: float) -> None:
    """Hold the CPU (pure Python, or small NumPy calls) for `duty` of the time until `stop`."""
    burst = 0.002 * duty / (1 - duty)
    ones = np.ones(2000)
    while time.perf_counter() < stop:
        t = time.perf_counter()
        while time.perf_counter() - t < burst:
            sum(range(200)) if kind == "python" else np.dot(ones, ones)
        time.sleep(0.002)


def run(x, split, seconds: float, third: str | None, duty: float) -> tuple[float, float]:
    """(images/s, busy cores of this process) of two model threads, with an optional third thread."""
    from model.parallel import set_thread_torch_threads

    stop, counts = time.perf_counter() + seconds, [0, 0]

    def model(i: int) -> None:
        set_thread_torch_threads(1)
        while time.perf_counter() < stop:
            split.map(lambda e, b: e.embed(b), x, threads=1)
            counts[i] += len(x)

    threads = [threading.Thread(target=model, args=(i,)) for i in range(2)]
    if third:
        threads.append(threading.Thread(target=busy_thread, args=(third, duty, stop)))
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(counts) / wall, (time.process_time() - c0) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duty", type=float, default=0.2, help="share of the time the third thread runs")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch
    from PIL import Image

    from model.loading import load_embedder
    from model.parallel import BatchSplitter

    ex = load_embedder(None, device="cpu")
    files = sorted((ROOT / "tests/fixtures/cifar10").rglob("*.jpg"))[:12]
    x = torch.from_numpy(np.stack([ex.preprocess(Image.open(f).convert("RGB")) for f in files]))
    split = BatchSplitter(ex)
    for _ in range(args.rounds):
        for third in (None, "python", "numpy"):
            img_s, cores = run(x, split, args.seconds, third, args.duty)
            label = f"+ {third} thread ({args.duty:.0%})" if third else "model threads alone"
            print(f"{label:<28} {img_s:7.1f} img/s, process {cores:.2f} cores busy")


if __name__ == "__main__":
    main()
