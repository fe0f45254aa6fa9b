"""`afv index build|add|remove|stats` and `afv search`: build and query an AFV index from the shell."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import typer
from tqdm import tqdm

from index import AFVIndex, AFVIndexError
from model.data import IMAGE_SUFFIXES, ImageDecodeError, ImageRecord, decode_image, iter_records

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


def _load_model(model: Path | None):
    from model.loading import load_embedder

    return load_embedder(model, device="auto")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _count(path: Path) -> int | None:
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return None


def _batches(records: Iterator[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    batch: list[ImageRecord] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _record_path(root: Path, name: str) -> str:
    return str(root / name) if root.is_dir() else (f"{root}::{name}" if root.name != name else str(root))


def _add_batch(idx: AFVIndex, batch: list[ImageRecord], root: Path, skipped: list) -> tuple[int, int]:
    """Embed and add the batch's new images; returns (added, already present)."""
    shas = [hashlib.sha256(r.data).hexdigest() for r in batch]
    known = idx.store_known(shas)
    present = sum(sha in known for sha in shas)
    arrays, recs = [], []
    for rec, sha in zip(batch, shas):
        if sha in known:
            continue
        try:
            arrays.append(idx.extractor.preprocess(decode_image(rec.data)))
        except ImageDecodeError as e:
            skipped.append((rec.name, str(e)))
            continue
        known.add(sha)  # a repeat inside the batch is a duplicate, not a second embedding
        path = _record_path(root, rec.name)
        recs.append({"name": rec.name, "sha256": sha, "size": len(rec.data), "metadata": {"path": path}})
    if arrays:
        idx.add_embedded(idx.embed(torch.from_numpy(np.stack(arrays))), recs)
    return len(recs), present


@index_app.command("build")
def build(
    images: Path = typer.Argument(..., help="Folder of images or .tar/.tar.gz archive."),
    index: Path = typer.Option(..., "--index", help="Index folder (created, or resumed)."),
    model: Path | None = typer.Option(None, "--model", help="Run directory of a trained model."),
    memory_budget: str = typer.Option("256MB", "--memory-budget", help="RAM for the vectors."),
    mode: str = typer.Option(
        "auto",
        "--mode",
        help="Projection: auto (= exact; identity for small embeddings) | exact | fast (Kronecker, opt-in).",
    ),
    dim: int = typer.Option(1024, "--dim", help="Sketch dimension."),
    kind: str = typer.Option("auto", "--kind", help="auto | flat | ivfpq | opq-ivfpq."),
) -> None:
    """Embed a collection into an index; resumable (images whose content is indexed are skipped)."""
    try:
        idx = AFVIndex.open_or_create(
            index, _load_model(model), dim=dim, mode=mode, kind=kind, memory_budget=parse_size(memory_budget)
        )
        added, present, skipped = _build(idx, images)
    except (AFVIndexError, FileNotFoundError, ValueError) as e:
        _fail(e)
    typer.echo(f"added {added}, already indexed {present}, unreadable {len(skipped)}; index holds {idx.count} images")
    for name, why in skipped:
        typer.echo(f"  skipped {name}: {why}", err=True)
    idx.close()


def _build(idx: AFVIndex, images: Path) -> tuple[int, int, list]:
    added = present = 0
    skipped: list[tuple[str, str]] = []
    with tqdm(total=_count(images), desc="indexing", unit="img") as bar:
        for batch in _batches(iter_records(images), idx.extractor.batch_size):
            a, p = _add_batch(idx, batch, images, skipped)
            added, present = added + a, present + p
            bar.update(len(batch))
            bar.set_postfix(added=added, skipped=len(skipped))
    idx.save()  # retrains IVF-PQ if the collection outgrew a flat index
    return added, present, skipped


@index_app.command("add")
def add(
    images: list[Path] = typer.Argument(..., help="Image files (or folders/archives) to add."),
    index: Path = typer.Option(..., "--index"),
    model: Path | None = typer.Option(None, "--model"),
) -> None:
    """Add images to an existing index; prints the id of each."""
    try:
        idx = AFVIndex.open(index, _load_model(model))
        for path in images:
            for rec in iter_records(path):
                res = idx.add_images([(rec.data, {"path": _record_path(path, rec.name)})], name=rec.name)[0]
                typer.echo(f"{res.id}\t{'duplicate' if res.duplicate else 'added'}\t{rec.name}")
        idx.close()
    except (AFVIndexError, FileNotFoundError, ValueError) as e:
        _fail(e)


@index_app.command("remove")
def remove(
    id: int = typer.Argument(..., help="Id of the image to remove."), index: Path = typer.Option(..., "--index")
) -> None:
    """Remove one image by id."""
    try:
        with AFVIndex.open(index, None) as idx:
            if not idx.delete(id):
                _fail(KeyError(f"no image with id {id}"))
    except AFVIndexError as e:
        _fail(e)
    typer.echo(f"removed {id}")


@index_app.command("stats")
def stats(index: Path = typer.Option(..., "--index")) -> None:
    """Print the index's size, structure and model as JSON."""
    try:
        with AFVIndex.open(index, None, read_only=True) as idx:
            typer.echo(json.dumps(idx.stats(), indent=2))
    except AFVIndexError as e:
        _fail(e)


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
        ex = _load_model(model)
        with AFVIndex.open(index, ex, read_only=True) as idx:
            x = torch.from_numpy(ex.preprocess(decode_image(image.read_bytes())))[None]
            hits = idx.search(idx.embed(x), k=k, rerank=rerank)[0]
    except (AFVIndexError, ImageDecodeError, OSError) as e:
        _fail(e)
    results = [{"id": h.id, "distance": h.distance, "metadata": h.metadata} for h in hits]
    if as_json:
        typer.echo(json.dumps({"results": results}))
        return
    for r in results:
        typer.echo(f"{r['id']:>8}  {r['distance']:12.4f}  {r['metadata'].get('path', r['metadata'].get('name'))}")
