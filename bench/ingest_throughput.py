"""Indexing throughput against raw extraction: does `afv index build` keep up with its model?

Makes N distinct JPEG photos-like files (size×size), then, in one run:

* raw: the index sketch of the already decoded images, batch by batch (the model's own speed);
* the ingest pipeline (`service.ingest.ingest`, what `afv index build` runs) from the files: read,
  hash, dedupe, decode and resize, sketch, add to the index, with the reduced JPEG decode that new
  indexes pin (`model.data.decode_image(fit=...)`), decoding in one thread between model passes, in
  torch's number of threads between passes (`ingest(decode_ahead=False)`) and one batch ahead of the
  model (`decode_ahead=True`), in `--workers` processes ahead, and in one thread with the full decode
  of indexes made before that pin. It also says which way `ingest`'s defaults take for these files
  (by their mean size). Odd rounds (`--repeats`) run the pipeline runs in reverse order.

Every pipeline run is measured against the mean of two raw runs, one just before and one just after
it: on these shared machines the raw rate varied 2× within minutes (229-494 img/s), so one raw run per
round left the ratios drifting by more than the differences between the ways of decoding.

    .venv/bin/python bench/ingest_throughput.py                                  # bundled default model
    .venv/bin/python bench/ingest_throughput.py --readout global --images 1000   # the whole-image read-out
    .venv/bin/python bench/ingest_throughput.py --model RUN_DIR --size 512 --workers 1 --threads 1
    .venv/bin/python bench/ingest_throughput.py --images 1024 --repeats 3       # medians of 3 rounds
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_photos(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """n distinct size×size JPEGs: smooth random colour fields plus grain (decode cost like real photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        grain = rng.normal(0, 12, (size, size, 3))
        img = Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8))
        img.save(folder / f"{i:06d}.jpg", quality=90)


@dataclass
class Raw:
    """The sketch alone on pre-decoded images, and the CPU the pipeline needs beside it."""

    rate: float  # images/s
    cores: float  # cores the raw sketch keeps busy (its CPU seconds over its wall seconds)
    model_cpu_s: float  # CPU seconds per image of the sketch
    added_cpu_s: float  # CPU seconds per image of what the pipeline adds: read, hash, reduced decode (one thread)


def cpu_ceiling(cores: int, busy: float, model_s: float, added_s: float) -> float:
    """The best pipeline/raw share K cores allow if the pipeline added only A = `added_s` of CPU per image
    to the model's M = `model_s` (raw keeping C = `busy` cores busy): images/s ≤ K / (M + A) against raw's
    C / M, so the share ≤ K/C · M/(M + A)."""
    return min(1.0, cores / busy * model_s / (model_s + added_s))


def raw_rate(embedder, folder: Path, work: Path, tag: str = "") -> Raw:
    """The sketch alone on images decoded beforehand (its speed and CPU), and the CPU per image that the
    pipeline adds to it, timed in this thread."""
    from model.data import iter_records
    from service.ingest import FileDecoder
    from service.model_index import ModelIndex

    records = list(iter_records(folder))
    x = np.stack([FileDecoder(embedder.resolution)(rec.data, rec.name) for rec in records])
    with ModelIndex.create(work / f"raw{tag}", embedder) as mi:
        mi.sketch(x[: embedder.batch_size])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(x), embedder.batch_size):
            mi.sketch(x[i : i + embedder.batch_size])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Raw(len(x) / wall, cpu / wall, cpu / len(x), added_cpu_s(embedder, folder))


def added_cpu_s(embedder, folder: Path) -> float:
    """CPU seconds per file to read, hash and decode it (reduced, as new indexes pin), in one thread."""
    from service.ingest import FileDecoder

    decode, files = FileDecoder(embedder.resolution, reduced=True), sorted(folder.iterdir())
    c0 = time.process_time()
    for f in files:
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        decode(data, f.name)
    return (time.process_time() - c0) / len(files)


def pipeline_rate(
    embedder,
    folder: Path,
    work: Path,
    workers: int,
    reduced: bool = True,
    tag: str = "",
    decode_threads: int | None = 1,
    decode_ahead: bool | None = False,
) -> tuple[float, int]:
    """Images per second of the whole ingest pipeline from files (and how many it added); `reduced`:
    JPEGs decoded at a reduced DCT scale, as a new index pins (False: the full decode of older ones)."""
    from model.data import iter_records
    from service.ingest import FileDecoder, Item, ingest
    from service.model_index import ModelIndex

    name = f"pipeline-{workers}-{reduced}-{decode_threads}-{decode_ahead}{tag}"
    with ModelIndex.create(work / name, embedder) as mi:
        t0 = time.perf_counter()
        items = (Item(rec.data, rec.name, {"path": rec.name}, rec.name) for rec in iter_records(folder))
        decode = FileDecoder(embedder.resolution, reduced=reduced)
        n = sum(
            not o.duplicate and o.ok
            for _, o in ingest(
                mi.index,
                items,
                decode=decode,
                embed=mi.sketch,
                batch_size=embedder.batch_size,
                workers=workers,
                decode_threads=decode_threads,
                decode_ahead=decode_ahead,
            )
        )
        mi.index.save()
        return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="Run directory (default: the bundled model).")
    ap.add_argument("--readout", default=None, help="AFV read-out (default: the model's).")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=256, help="Side of the generated JPEGs, in pixels.")
    ap.add_argument("--workers", type=int, default=1, help="Decode processes for the pipelined run.")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or auto (images/s per GPU on a GPU machine).")
    ap.add_argument("--repeats", type=int, default=1, help="Rounds of all runs (medians printed).")
    args = ap.parse_args()

    import torch

    from model.loading import load_embedder
    from model.memory import keep_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `afv index build` runs
    embedder = load_embedder(args.model, device=args.device, readout=args.readout)
    with tempfile.TemporaryDirectory(prefix="afv-ingest-bench-") as tmp:
        work = Path(tmp)
        make_photos(work / "photos", args.images, args.size)
        mean_bytes = np.mean([f.stat().st_size for f in (work / "photos").iterdir()])
        rounds = [one_round(embedder, work, args.workers, r) for r in range(args.repeats)]
    print(
        f"model {embedder.name} ({getattr(embedder, 'readout', 'global')}), {args.images} JPEGs of "
        f"{args.size}x{args.size}, batch {embedder.batch_size}, device {embedder.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"`afv index build` decodes these files ({mean_bytes / 1024:.0f} KiB on average) {default_way(mean_bytes)}")
    print("each run against the mean of the raw runs just before and after it (raw varied 2x within minutes here)")
    print(f"{'run':<28} {'img/s':>8} {'raw':>8} {'vs raw':>7} {'added':>6}")
    cores = os.cpu_count() or 1
    for r, (_, rows) in enumerate(rounds):
        if args.repeats > 1:
            print(f"round {r + 1}")
        for row in rows:
            print(f"{row.name:<28} {row.rate:>8.1f} {row.raw:>8.1f} {row.share:>6.0%} {row.added:>6}")
    if args.repeats > 1:
        print("median over the rounds of each run's share of raw:")
        for i, row in enumerate(rounds[0][1]):
            print(f"{row.name:<28} {np.median([rows[i].share for _, rows in rounds]):>24.0%}")
    if embedder.device.type == "cpu":
        print_ceiling([raw for raws, _ in rounds for raw in raws], cores)


def print_ceiling(raws: list[Raw], cores: int) -> None:
    """What the pipeline could reach on these cores at best: the model's CPU per image against what
    reading, hashing and decoding add (medians over the rounds)."""
    m, a = (float(np.median([getattr(r, k) for r in raws])) for k in ("model_cpu_s", "added_cpu_s"))
    busy = float(np.median([r.cores for r in raws]))
    print(
        f"CPU ceiling on {cores} core(s): the sketch takes {m * 1e3:.2f} ms CPU per image at raw speed "
        f"({busy:.2f} cores busy); reading, hashing and the reduced decode add {a * 1e3:.2f} ms: a pipeline "
        f"with no overhead of its own would reach at most {cpu_ceiling(cores, busy, m, a):.0%} of raw"
    )


def default_way(mean_bytes: float) -> str:
    """How `ingest`'s defaults decode files of this mean size on this machine (`service.ingest.decode_alone`)."""
    from service.ingest import Item, decode_alone, usable_cores

    return "between passes" if decode_alone([Item(b"x" * int(mean_bytes))], usable_cores()) else "ahead"


@dataclass
class Row:
    """One pipeline run: its images/s, the raw rate around it (the mean of the raw runs just before and
    after), and how many images it added."""

    name: str
    rate: float
    raw: float
    added: int

    @property
    def share(self) -> float:
        return self.rate / self.raw


def one_round(embedder, work: Path, workers: int, r: int) -> tuple[list[Raw], list[Row]]:
    """The pipeline decoding in one thread between model passes, in torch's number of threads between
    passes and one batch ahead, in `workers` processes ahead, and in one thread with the full JPEG
    decode, with a raw run before the first and after each: (the raw runs, the rows in that order). Odd
    rounds run the pipeline runs in reverse order, so that no run always comes first or last."""
    import torch

    tag, photos, threads = f"-{r}", work / "photos", torch.get_num_threads()
    runs: list[tuple[str, dict]] = [("1 thread, between passes", {"workers": 0})]
    if threads > 1:
        runs.append((f"{threads} threads, between passes", {"workers": 0, "decode_threads": threads}))
        runs.append((f"{threads} threads, ahead", {"workers": 0, "decode_threads": threads, "decode_ahead": True}))
    if workers > 0:
        runs.append((f"{workers} process(es), ahead", {"workers": workers}))
    runs.append(("1 thread, full JPEG decode", {"workers": 0, "reduced": False}))
    raws = [raw_rate(embedder, photos, work, f"{tag}-0")]
    rows = {}
    for k, (name, how) in enumerate(runs[::-1] if r % 2 else runs, 1):
        rate, added = pipeline_rate(embedder, photos, work, tag=tag, **how)
        raws.append(raw_rate(embedder, photos, work, f"{tag}-{k}"))
        rows[name] = Row(name, rate, (raws[-2].rate + raws[-1].rate) / 2, added)
    return raws, [rows[name] for name, _ in runs]


if __name__ == "__main__":
    main()
