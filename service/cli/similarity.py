"""`afv distance|set-distance`: how far apart two images, or two image sets, are for a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli import options as opts  # opts.load_model, looked up per call: tests swap it
from service.cli.options import DeviceOpt, EmbeddingOpt, JsonOpt, ModelOpt, ReadoutOpt, fail, load_images


def distance(
    image_a: Path,
    image_b: Path,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    embedding: EmbeddingOpt = None,
    readout: ReadoutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Distance between two images (Fisher distance for AFV models), with each block's share and, for
    spatial read-outs, each image cell's share."""
    ext = opts.load_model(model, device, embedding=embedding, readout=readout)
    a, b = (load_images(p, ext.resolution)[0] for p in (image_a, image_b))
    report = ext.distance(a, b).to_dict()
    if json_out:
        typer.echo(json.dumps({**report, "method": ext.kind}))
        return
    typer.echo(f"{'Fisher' if ext.kind == 'afv' else ext.kind} distance: {report['distance']:.6g}")
    for name, share in report["layers"].items():
        typer.echo(f"  {name:<10} {share:7.1%}  {'#' * round(share * 40)}")
    for level, grid in (report.get("regions") or {}).items():
        typer.echo(f"  image cells {level} (share of the squared distance):")
        for row in grid:
            typer.echo("    " + " ".join(f"{v:6.1%}" for v in row))


def set_distance(
    dir_a: Path,
    dir_b: Path,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    metric: Annotated[
        str,
        typer.Option(
            help="fisher: ‖mean AFV(A) − mean AFV(B)‖ (or the model's own mean-vector distance); "
            "gfmn-moments: GFMN's moment-matching loss on the model's features."
        ),
    ] = "fisher",
    json_out: JsonOpt = False,
) -> None:
    """Distance between two image sets: Fisher (mean AFVs) or GFMN feature moments."""
    from model.gfmn import MOMENTS

    if metric not in ("fisher", "gfmn-moments"):
        fail(f"unknown set metric {metric!r}; choose fisher or gfmn-moments")
    embedding = MOMENTS if metric == "gfmn-moments" else None  # the run's feature network's activations
    ext = opts.load_model(model, device, embedding=embedding)
    xa, xb = (load_images(p, ext.resolution) for p in (dir_a, dir_b))
    d = ext.set_distance(xa, xb)
    label = "Fisher set distance" if metric == "fisher" and ext.kind == "afv" else f"{ext.kind} set distance"
    typer.echo(
        json.dumps({"distance": d, "metric": metric, "method": ext.kind, "n_a": xa.shape[0], "n_b": xb.shape[0]})
        if json_out
        else f"{label}: {d:.6g} ({xa.shape[0]} vs {xb.shape[0]} images)"
    )
