"""Sketches of one batch in one pass with intra-op threads against the batch split across the threads
(`model.parallel.SplitProjector`, what `ModelIndex.sketch` runs), timed alternately in one run.

    .venv/bin/python bench/batch_parallel.py                              # bundled default model
    .venv/bin/python bench/batch_parallel.py --model RUN --mode exact --batch 32
    .venv/bin/python bench/batch_parallel.py --threads 1     # one thread: the whole batch against parts in turn
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rate(fn, x: torch.Tensor, batch: int) -> float:
    """Images/s of fn over x in batches (one warm-up batch first)."""
    fn(x[:batch])
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i : i + batch])
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    from model.loading import load_embedder
    from model.parallel import PART_IMAGES, SERIAL_PART_IMAGES, SplitProjector
    from model.sketch import Projector
    from service.model_index import auto_mode

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Run directory (default: the bundled model).")
    ap.add_argument("--mode", default=None, help="Projection (default: what a new index picks).")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--part",
        type=int,
        default=None,
        help="Images per part (default: PART_IMAGES; on one thread SERIAL_PART_IMAGES).",
    )
    ap.add_argument("--threads", type=int, default=None, help="Torch threads (default: torch's, one per core).")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    embedder = load_embedder(args.model, device="cpu", batch_size=args.batch)
    projector = Projector(embedder, d=1024, mode=args.mode or auto_mode(embedder))
    split = SplitProjector(projector, args.part or PART_IMAGES, args.part or SERIAL_PART_IMAGES)
    r = embedder.resolution
    x = torch.randint(0, 256, (args.images, 3, r, r), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    diff = float(np.abs(split.embed(x[: args.batch]) - projector.embed(x[: args.batch])).max())
    one, parts = [], []
    for _ in range(args.repeats):
        one.append(rate(projector.embed, x, args.batch))
        parts.append(rate(split.embed, x, args.batch))
    print(
        f"{embedder.name} ({projector.mode} sketch), batch {args.batch}, {torch.get_num_threads()} torch threads, "
        f"parts of {split.part if torch.get_num_threads() > 1 else split.serial_part} images, "
        f"{args.images} images x {args.repeats}"
    )
    print(f"one pass, intra-op threads : {' '.join(f'{v:7.1f}' for v in one)} img/s")
    print(f"split across the threads   : {' '.join(f'{v:7.1f}' for v in parts)} img/s")
    print(f"split / one pass (median)  : {np.median(parts) / np.median(one):.2f}x; max |difference| {diff:.2g}")


if __name__ == "__main__":
    main()
