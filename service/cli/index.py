"""`afv index build|add|remove|stats` and `afv search`: build and query an AFV index from the shell."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import typer
from tqdm import tqdm

from index import AFVIndex, AFVIndexError
from model.data import IMAGE_SUFFIXES, ImageDecodeError, decode_image, iter_records
from service.bulk.ray_engine import RayOptions
from service.bulk.sources import collection_metadata
from service.cli import options as opts  # opts.load_model, looked up per call: tests swap it
from service.cli.options import fail
from service.ingest import Item, ingest, model_decoder
from service.model_index import BuildOptions, ModelIndex

index_app = typer.Typer(help="Build and maintain a compressed AFV index.", no_args_is_help=True)

_UNITS = {
    "": 1,
    "B": 1,
    "K": 2**10,
    "KB": 2**10,
    "KIB": 2**10,
    "M": 2**20,
    "MB": 2**20,
    "MIB": 2**20,
    "G": 2**30,
    "GB": 2**30,
    "GIB": 2**30,
}


def parse_size(text: str) -> int:
    """'256MB', '1GiB', '1048576' → bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise typer.BadParameter(f"not a size: {text!r} (e.g. 256MB, 1GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _count(path: Path) -> int | None:
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return None


def _source(root: Path, name: str) -> str:
    """Where an image was read from, for messages on this machine (never stored)."""
    return str(root / name) if root.is_dir() else (f"{root}::{name}" if root.name != name else str(root))


def _items(path: Path) -> Iterator[Item]:
    """The images of a file, folder or archive as ingest items, with their place in the collection."""
    for rec in iter_records(path):
        meta = collection_metadata(path, rec.name, path.is_dir())
        yield Item(rec.data, rec.name, meta, source=_source(path, rec.name))


PIPELINE_MIN_IMAGES = 256  # below this, starting worker processes costs more than it saves


def decode_workers(requested: int | None, n_images: int | None, cores: int | None = None) -> int:
    """Worker processes for decoding: as asked, else a quarter of the cores (at most 4) on machines with
    more than 2 — on 2 cores the model gains more from the second core than decoding does (see
    bench/ingest_throughput.py) — and none for small jobs."""
    if requested is not None:
        return max(0, requested)
    cores = cores or os.cpu_count() or 2
    if cores <= 2 or (n_images is not None and n_images < PIPELINE_MIN_IMAGES):
        return 0
    return max(1, min(4, cores // 4))


def _share_cores(workers: int) -> None:
    """With decode workers, the model keeps the other cores (torch would otherwise use them all)."""
    if workers > 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - workers))


def _ingest(mi: ModelIndex, items: Iterator[Item], workers: int = 0):
    """The pipeline with the model called directly (no service micro-batcher), decoding in `workers`."""
    decode = model_decoder(mi.embedder, mi.decode_fit)
    return ingest(mi.index, items, decode=decode, embed=mi.sketch, batch_size=mi.embedder.batch_size, workers=workers)


ENGINES = ("local", "ray")


@index_app.command("build")
def build(
    images: str = typer.Argument(
        ...,
        help="Folder of images or .tar/.tar.gz archive; with --engine ray also a Parquet/CSV list (column path or "
        "url), a glob, or a URL (s3://, gs://: with their fsspec extra).",
    ),
    index: Path = typer.Option(..., "--index", help="Index folder (created, or resumed)."),
    model: Path | None = typer.Option(None, "--model", help="Run directory of a trained model."),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="RAM for the vectors (default 256MB)."),
    mode: str | None = typer.Option(
        None,
        "--mode",
        help="Projection: auto (sampled for AFVs of >= 262,144 values, else exact; identity for small embeddings) "
        "| exact | sampled | fast (legacy Kronecker, biased).",
    ),
    dim: int | None = typer.Option(None, "--dim", help="Sketch dimension (default 1024)."),
    kind: str | None = typer.Option(None, "--kind", help="auto | flat | ivfpq | opq-ivfpq (default auto)."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="local: processes decoding images while the model runs (default: a quarter of the cores, at most 4; "
        "none on 2 cores or for small jobs, where threads decode: small files one batch ahead of the model, large "
        "ones between its passes). ray: model workers (default: one per GPU, else one per 4 CPUs).",
    ),
    engine: str = typer.Option(
        "local", "--engine", help="local: this process | ray: Ray Data workers (docs/scale-out.md)."
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="ray: the cluster (auto from inside it, ray://HOST:PORT from outside); default: a local Ray "
        "instance with this machine's CPUs, shut down afterwards.",
    ),
    gpus_per_worker: float | None = typer.Option(
        None, "--gpus-per-worker", min=0, help="ray: GPUs per model worker (default 1 if the cluster has GPUs, else 0)."
    ),
    cpus_per_worker: float | None = typer.Option(
        None, "--cpus-per-worker", min=0.1, help="ray: CPUs (torch threads) per model worker (default: fitted)."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="ray: images per model pass in each worker (default 64)."
    ),
    shard_size: int | None = typer.Option(
        None, "--shard-size", min=1, help="ray: images per embedding shard (default 10000)."
    ),
    embeddings: Path | None = typer.Option(
        None,
        "--embeddings",
        help="ray: folder of the embedding shards (default INDEX/embeddings); re-runs skip finished ones.",
    ),
    precision: opts.PrecisionOpt = None,
) -> None:
    """Embed a collection into an index; resumable (images whose content is indexed are skipped).

    Options apply when the index is created; for an existing index they must match it (or be left out)."""
    budget = parse_size(memory_budget) if memory_budget is not None else None
    options = BuildOptions(dim=dim, mode=mode, kind=kind, memory_budget=budget)
    ray_only = {
        "--address": address,
        "--gpus-per-worker": gpus_per_worker,
        "--cpus-per-worker": cpus_per_worker,
        "--batch-size": batch_size,
        "--shard-size": shard_size,
        "--embeddings": embeddings,
    }
    if engine not in ENGINES:
        fail(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    arithmetic = opts.precision_of(precision)
    if engine == "ray":
        ray = RayOptions(
            address, workers, gpus_per_worker, cpus_per_worker, batch_size or RayOptions.batch_size, arithmetic
        )
        _build_on_ray(images, index, model, options, ray, shard_size, embeddings)
        return
    if given := [name for name, value in ray_only.items() if value is not None]:
        fail(f"{', '.join(given)} apply to --engine ray")
    try:
        with ModelIndex.open_or_create(index, opts.load_model(model, precision=arithmetic), options) as mi:
            added, present, skipped = _build(mi, Path(images), workers)
            count = mi.index.count
    except (AFVIndexError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    _report(added, present, skipped, count)


def _report(added: int, present: int, skipped: list[tuple[str, str]], count: int) -> None:
    typer.echo(f"added {added}, already indexed {present}, unreadable {len(skipped)}; index holds {count} images")
    for name, why in skipped:
        typer.echo(f"  skipped {name}: {why}", err=True)


def _build_on_ray(
    source: str,
    index: Path,
    model: Path | None,
    options: BuildOptions,
    ray: RayOptions,
    shard_size: int | None,
    embeddings: Path | None,
) -> None:
    """`--engine ray`: the index opened here (model on the CPU: the workers have the GPUs), the work on Ray."""
    from service.bulk.build import DEFAULT_SHARD_SIZE, EMBEDDINGS_DIR, BulkBuildError, build_with_ray
    from service.bulk.listing import spool
    from service.bulk.ray_engine import RayUnavailableError, import_ray
    from service.bulk.sources import iter_source

    worker_model = str(model.resolve()) if model is not None else None  # workers may start elsewhere
    shards_dir = embeddings or index / EMBEDDINGS_DIR
    try:
        import_ray()  # before anything is created
        entries = iter_source(source)  # a missing source stops here
        with tqdm(desc="listing", unit="img", smoothing=0.1) as bar:  # before the index: a bad list creates no index
            plan = spool(entries, shards_dir, shard_size or DEFAULT_SHARD_SIZE, on_entries=bar.update)
        with ModelIndex.open_or_create(index, opts.load_model(model, device="cpu"), options) as mi:
            report = build_with_ray(mi, plan, model=worker_model, shards_dir=shards_dir, options=ray)
            count = mi.index.count
    except (AFVIndexError, OSError, ValueError, ImportError, RayUnavailableError, BulkBuildError) as e:
        fail(str(e))
    done = report.shards - report.made
    pool = report.workers
    on = f" on {pool.count} worker(s) of {pool.gpus:g} GPU, {pool.cpus:g} CPU" if pool else ""
    typer.echo(f"embedding shards: {report.made} made{on}, {done} already done, {report.shards} in all")
    out = report.outcomes
    _report(out.added, out.present, out.skipped, count)


def _build(mi: ModelIndex, images: Path, workers: int | None = None) -> tuple[int, int, list]:
    added = present = 0
    skipped: list[tuple[str, str]] = []
    total = _count(images)
    workers = decode_workers(workers, total)
    _share_cores(workers)
    with tqdm(total=total, desc="indexing", unit="img", smoothing=0.1) as bar:  # rate and, for folders, ETA
        for item, outcome in _ingest(mi, _items(images), workers):
            if outcome.error is not None:
                skipped.append((item.name, str(outcome.error)))
            elif outcome.duplicate:
                present += 1
            else:
                added += 1
            bar.update(1)
            bar.set_postfix(added=added, skipped=len(skipped), refresh=False)
    mi.index.save()  # retrains IVF-PQ if the collection outgrew a flat index
    return added, present, skipped


@index_app.command("add")
def add(
    images: list[Path] = typer.Argument(..., help="Image files (or folders/archives) to add."),
    index: Path = typer.Option(..., "--index"),
    model: Path | None = typer.Option(None, "--model"),
) -> None:
    """Add images to an existing index (in batches); prints the id of each. Exit 1 if any was unreadable."""
    failed = 0
    try:
        with ModelIndex.open(index, opts.load_model(model)) as mi:
            for item, outcome in _ingest(mi, (it for path in images for it in _items(path))):
                if outcome.error is not None:
                    failed += 1
                    typer.echo(f"error\t{item.name}: {outcome.error}", err=True)
                    continue
                typer.echo(f"{outcome.id}\t{'duplicate' if outcome.duplicate else 'added'}\t{item.name}")
    except (AFVIndexError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if failed:
        fail(f"{failed} image(s) could not be read; the others were added")


@index_app.command("remove")
def remove(
    id: int = typer.Argument(..., help="Id of the image to remove."), index: Path = typer.Option(..., "--index")
) -> None:
    """Remove one image by id."""
    try:
        with AFVIndex.open(index) as idx:
            if not idx.delete(id):
                fail(f"no image with id {id}")
    except AFVIndexError as e:
        fail(str(e))
    typer.echo(f"removed {id}")


@index_app.command("stats")
def stats(index: Path = typer.Option(..., "--index")) -> None:
    """Print the index's size, structure and model as JSON."""
    try:
        with AFVIndex.open(index, read_only=True) as idx:
            typer.echo(json.dumps(idx.stats(), indent=2))
    except AFVIndexError as e:
        fail(str(e))


def search_command(
    image: Path = typer.Argument(..., help="Query image file."),
    index: Path = typer.Option(..., "--index"),
    k: int = typer.Option(10, "--k", min=1),
    model: Path | None = typer.Option(None, "--model"),
    rerank: bool = typer.Option(False, "--rerank", help="Exact re-rank of candidates."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON results."),
) -> None:
    """Find the k indexed images nearest to IMAGE in AFV space."""
    try:
        ex = opts.load_model(model)
        with ModelIndex.open(index, ex, read_only=True) as mi:
            x = ex.preprocess(decode_image(image.read_bytes(), fit=mi.decode_fit))[None]
            hits = mi.index.search(mi.sketch(x), k=k, rerank=rerank)[0]
    except (AFVIndexError, ImageDecodeError, OSError) as e:
        fail(str(e))
    results: list[dict[str, Any]] = [{"id": h.id, "distance": h.distance, "metadata": h.metadata} for h in hits]
    if as_json:
        typer.echo(json.dumps({"results": results}))
        return
    for r in results:
        meta = r["metadata"]
        place = "/".join(str(meta[k]) for k in ("collection", "path") if meta.get(k)) or meta.get("name")
        typer.echo(f"{r['id']:>8}  {r['distance']:12.4f}  {place}")
