"""`afv eval 2afc|jnd|probe|class-distances|copies|ranking`: the AFV paper's claims, checked on the user's data.

Every command runs the trained AFV metric and its baselines (`--metric`, repeatable; default all of
afv, l2, ssim, phash, dpool, afv-random) in one run, so each number has its comparison beside it. The other
GAN representation learners score with `--metric bigan|bigbigan --model RUN_DIR` (their own runs) and
`--metric gfmn-moments` (the feature moments of the model's trunk). `copies` (reverse image search of
edited copies) and `ranking` (is a stronger edit farther?) use the seeded edits of `model.evaluation.edits`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from model.evaluation.edits import EDITS, FAMILIES
from model.evaluation.metrics import DEFAULT_METRICS, METRICS
from service.cli.options import DeviceOpt, JsonOpt, ModelOpt, fail

log = logging.getLogger(__name__)

eval_app = typer.Typer(
    help="Evaluate the metric: BAPPS 2AFC / JND, probes, class distances, copy detection, distortion ranking.",
    no_args_is_help=True,
)

MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        help=f"Metric(s) to score, repeatable: {' | '.join(METRICS)} (default: "
        f"{', '.join(DEFAULT_METRICS)}; bigan/bigbigan need --model of such a run).",
    ),
]
EmbeddingsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--embedding", help="bigan/bigbigan encoder output(s) to score, repeatable: z | hidden | z+hidden (default z)."
    ),
]
NormOpt = Annotated[
    str | None, typer.Option("--normalization", help="AFV normalisation none | l2 | power (default: the model's).")
]
ReadoutsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--readout",
        help="AFV read-out(s) to compare, repeatable: global | pyramid-1-2-4 | …, optionally with a "
        "normalisation, e.g. pyramid-1-2-4:power (default: the model's own). Each is scored as metric afv:READOUT.",
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Also write the report as JSON here.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a figure (PNG) here.")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Only images under this top-level folder.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Seeded random subset of this many images.")]
PixelOpt = Annotated[
    int | None,
    typer.Option(
        "--pixel-size",
        help="Common size of the pixel metrics l2/ssim/phash (default: the images' own size "
        "if they are all one square size ≤ 64 px, else 64).",
    ),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bars on stderr (default: when stderr is a terminal)."),
]


def _metrics(
    names: list[str] | None,
    model: Path | None,
    device: str,
    normalization: str | None,
    embeddings: list[str] | None = None,
    readouts: list[str] | None = None,
) -> list:
    """Build the requested metrics, loading the trained model once (afv and dpool share it)."""
    metrics = _base_metrics(names, model, device, normalization, embeddings)
    if not readouts:
        return metrics
    out = []
    for m in metrics:
        out += _readout_variants(m, model, readouts) if m.name == "afv" else [m]
    return out


def _readout_variants(afv, model: Path | None, readouts: list[str]) -> list:
    """The afv metric once per requested read-out (and normalisation), named afv:SPEC."""
    import copy

    from model.evaluation.metrics import get_metric
    from model.extract import default_run_dir
    from model.fisher import NORMALIZATIONS
    from model.pyramid import with_readout

    run = Path(model) if model is not None else default_run_dir()
    variants = []
    for spec in readouts:
        readout, _, norm = spec.partition(":")
        if norm and norm not in NORMALIZATIONS:
            fail(f"unknown normalization {norm!r} in --readout {spec!r}; choose one of {', '.join(NORMALIZATIONS)}")
        base = copy.copy(getattr(afv.extractor, "base", afv.extractor))
        base.normalization = norm or afv.extractor.normalization
        try:
            ext = with_readout(base, readout, run)
        except ValueError as e:
            fail(str(e))
        m = get_metric("afv", extractor=ext)
        m.name = f"afv:{spec}"
        variants.append(m)
    return variants


def _base_metrics(
    names: list[str] | None,
    model: Path | None,
    device: str,
    normalization: str | None,
    embeddings: list[str] | None = None,
) -> list:
    from model.checkpoint import CheckpointError
    from model.evaluation.metrics import get_metrics

    try:
        return get_metrics(
            names or list(DEFAULT_METRICS), model, device=device, normalization=normalization, embeddings=embeddings
        )
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))


def _table(rows: list[dict], dirs: list[str], key: str) -> str:
    """Metric × directory table with a mean column (as the BAPPS paper's tables)."""
    names = list(dict.fromkeys(r["metric"] for r in rows))
    short = [Path(d).name or d for d in dirs]
    w = max(12, *(len(n) + 1 for n in names))
    lines = [f"{'metric':<{w}}" + "".join(f"{s[:14]:>15}" for s in short) + f"{'mean':>15}"]
    for n in names:
        vals = [next(r[key] for r in rows if r["metric"] == n and r["dir"] == d) for d in dirs]
        lines.append(f"{n:<{w}}" + "".join(f"{v:>15.4f}" for v in vals) + f"{np.mean(vals):>15.4f}")
    return "\n".join(lines)


def _bapps(
    kind: str,
    dirs: list[Path],
    metric: list[str] | None,
    model,
    device,
    normalization,
    json_out: bool,
    embedding: list[str] | None = None,
    readout: list[str] | None = None,
) -> None:
    from model.evaluation import bapps

    tasks: dict[str, tuple[Callable[[Path], Any], Callable[..., dict], str]] = {
        "2afc": (bapps.load_2afc, bapps.evaluate_2afc, "score"),
        "jnd": (bapps.load_jnd, bapps.evaluate_jnd, "map"),
    }
    load, run, key = tasks[kind]
    try:
        sets = [load(d) for d in dirs]
    except (bapps.BAPPSLayoutError, ValueError) as e:
        fail(str(e))
    rows = [run(m, s) for m in _metrics(metric, model, device, normalization, embedding, readout) for s in sets]
    names = list(dict.fromkeys(r["metric"] for r in rows))
    means = {n: float(np.mean([r[key] for r in rows if r["metric"] == n])) for n in names}
    if json_out:
        typer.echo(json.dumps({"task": kind, "results": rows, "mean": means}))
        return
    counts = ", ".join(f"{s.root}: {len(s)}" for s in sets)
    typer.echo(f"BAPPS {'2AFC score' if kind == '2afc' else 'JND mAP'} ({counts})")
    typer.echo(_table(rows, [str(s.root) for s in sets], key))
    if kind == "2afc":
        typer.echo(
            "human agreement (p²+(1−p)²): " + ", ".join(f"{r['human']:.4f}" for r in rows if r["metric"] == names[0])
        )


@eval_app.command("2afc")
def two_afc(
    dirs: Annotated[list[Path], typer.Argument(help="BAPPS 2AFC folder(s): ref/ p0/ p1/ judge/.")],
    model: ModelOpt = None,
    metric: MetricOpt = None,
    device: DeviceOpt = "auto",
    normalization: NormOpt = None,
    embedding: EmbeddingsOpt = None,
    readout: ReadoutsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """BAPPS 2AFC score of each metric on each folder, and their mean."""
    _bapps("2afc", dirs, metric, model, device, normalization, json_out, embedding, readout)


@eval_app.command("jnd")
def jnd(
    dirs: Annotated[list[Path], typer.Argument(help="BAPPS JND folder(s): p0/ p1/ same/.")],
    model: ModelOpt = None,
    metric: MetricOpt = None,
    device: DeviceOpt = "auto",
    normalization: NormOpt = None,
    embedding: EmbeddingsOpt = None,
    readout: ReadoutsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """BAPPS JND mAP of each metric's distance as a same/different detector."""
    _bapps("jnd", dirs, metric, model, device, normalization, json_out, embedding, readout)


def _variants(ext, norms: list[str] | None, eps: list[float] | None):
    from model.evaluation.probe import Variant

    return [Variant(n, e) for n in (norms or [ext.normalization]) for e in (eps or [ext.stats.eps_rel])]


@eval_app.command("probe")
def probe(
    data: Annotated[Path, typer.Option(help="Folder or .tar(.gz) with SPLIT/CLASS/* images.")],
    test_data: Annotated[
        Path | None,
        typer.Option(
            help="Folder or .tar(.gz) holding the test split, if not --data (e.g. Tiny ImageNet's val archive)."
        ),
    ] = None,
    model: ModelOpt = None,
    metric: MetricOpt = None,
    device: DeviceOpt = "auto",
    embedding: EmbeddingsOpt = None,
    readout: ReadoutsOpt = None,
    train_split: Annotated[str, typer.Option(help="Training split folder.")] = "train",
    test_split: Annotated[str, typer.Option(help="Test split folder.")] = "test",
    train_limit: Annotated[int | None, typer.Option(help="Class-stratified subset of train.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Class-stratified subset of test.")] = None,
    k: Annotated[int, typer.Option(help="Neighbours in the k-NN vote.")] = 10,
    dim: Annotated[int, typer.Option(help="Sketch wider features (AFVs) to this many values.")] = 4096,
    normalization: Annotated[
        list[str] | None, typer.Option(help="AFV normalisation(s) to compare, repeatable (default: the model's).")
    ] = None,
    eps_rel: Annotated[
        list[float] | None,
        typer.Option(help="Fisher floor(s) FisherStats.eps_rel to compare, repeatable (default: the stored one)."),
    ] = None,
    c: Annotated[
        list[float] | None,
        typer.Option("--C", help="Logistic-regression C (repeatable: picked on a 10% train hold-out)."),
    ] = None,
    max_iter: Annotated[int, typer.Option(help="L-BFGS iterations of the linear probe.")] = 150,
    ssim_queries: Annotated[
        int | None, typer.Option(help="SSIM k-NN is brute force: score it on this many (stratified) test images.")
    ] = 500,
    seed: int = 0,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option(help="Also write the rows as JSON here.")] = None,
) -> None:
    """Linear-probe and k-NN accuracy (train split → test split) of each metric's embedding."""
    from model.evaluation.probe import C_GRID, load_labelled, run_probe

    metrics = _metrics(metric, model, device, None, embedding, readout)
    res = next((m.resolution for m in metrics if m.resolution), 32)
    try:
        train = load_labelled(data, train_split, res, train_limit, seed)
        test = load_labelled(test_data or data, test_split, res, test_limit, seed, classes=train.classes)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    log.info("probe: %d train / %d test images, %d classes", len(train.y), len(test.y), len(train.classes))
    rows = []
    for m in metrics:
        vs = _variants(m.extractor, normalization, eps_rel) if m.name.startswith("afv") else None
        rows += run_probe(
            m,
            train,
            test,
            k=k,
            dim=dim,
            seed=seed,
            variants=vs,
            ssim_queries=ssim_queries,
            c_grid=tuple(c or C_GRID),
            max_iter=max_iter,
        )
    report = {
        "data": str(data),
        "test_data": str(test_data or data),
        "model": _model_label(model),
        "n_train": len(train.y),
        "n_test": len(test.y),
        "k": k,
        "rows": rows,
    }
    _write_json(out, report)
    if json_out:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"probe: {report['n_train']} train / {report['n_test']} test images, k={k}")
    w = max(12, *(len(r["metric"]) for r in rows))
    typer.echo(f"{'metric':<{w}} {'variant':<24} {'dim':>6} {'linear':>8} {'kNN':>8}")
    for r in rows:
        var = f"{r['normalization']}, eps={r['eps_rel']:g}" if "normalization" in r else ""
        lin = "n/a" if r["linear"] is None else f"{r['linear']:.2%}"
        note = f"  (k-NN on {r['knn_queries']} test images)" if "knn_queries" in r else ""
        typer.echo(f"{r['metric']:<{w}} {var:<24} {r['dim'] or '-':>6} {lin:>8} {r['knn']:>8.2%}{note}")


@eval_app.command("class-distances")
def class_distances(
    data: Annotated[Path, typer.Option(help="Folder or .tar(.gz) with [SPLIT/]CLASS/* images.")],
    out: Annotated[Path, typer.Option(help="Output path prefix: writes OUT.csv and OUT.png.")],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    normalization: NormOpt = None,
    split: Annotated[str, typer.Option(help="Split folder ('' = classes at the top level).")] = "test",
    limit: Annotated[int | None, typer.Option(help="Class-stratified subset size.")] = None,
    seed: int = 0,
    json_out: JsonOpt = False,
) -> None:
    """Class-by-class Fisher set-distance matrix (CSV + heat map), e.g. over CIFAR-10's test classes."""
    from model.evaluation import setdist
    from model.evaluation.probe import load_labelled

    ext = _metrics(["afv"], model, device, normalization)[0].extractor
    try:
        data_set = (
            load_labelled(data, split, ext.resolution, limit, seed)
            if split
            else _top_level_classes(data, ext.resolution, limit, seed)
        )
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    per_class = {c: data_set.x[data_set.y == i] for i, c in enumerate(data_set.classes)}
    names, d = setdist.distance_matrix(setdist.class_means(ext, per_class))
    prefix = out.with_suffix("") if out.suffix in (".csv", ".png") else out
    setdist.write_csv(prefix.with_name(prefix.name + ".csv"), names, d)
    setdist.write_heatmap(
        prefix.with_name(prefix.name + ".png"),
        names,
        d,
        f"Fisher distance between class means ({ext.name}, {len(data_set.y)} images)",
    )
    pairs = setdist.nearest_pairs(names, d)
    if json_out:
        typer.echo(json.dumps({"classes": names, "distances": d.tolist(), "nearest": [list(p) for p in pairs]}))
        return
    typer.echo(f"wrote {prefix}.csv and {prefix}.png")
    for a, b, v in pairs:
        typer.echo(f"  {a:<12} nearest {b:<12} {v:.4g}")


def _top_level_classes(data: Path, resolution: int, limit: int | None, seed: int):
    """CLASS/* at the top of a folder: read it as a split named after the folder."""
    from model.evaluation.probe import load_labelled

    return load_labelled(data.parent, data.name, resolution, limit, seed)


def _model_label(model: Path | None) -> str | None:
    """The model a report's model metrics come from: its folder's name (the bundled default's if none)."""
    from model.extract import default_run_dir

    run = model or default_run_dir()
    return Path(run).name if run else None


def _write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))


def _read_images(path: Path, split: str | None, limit: int | None, seed: int):
    from model.evaluation.images import read_images

    try:
        return read_images(path, split, limit, seed)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))


def _select(registry: dict, names: list[str] | None, what: str) -> dict:
    from model.evaluation.edits import select

    try:
        return select(registry, names, what)
    except ValueError as e:
        fail(str(e))


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _grid(labels: list[str], rows: list[dict], value) -> str:
    """Label × metric table: `value(row, label)` in each cell."""
    w = max(14, *(len(s) + 1 for s in labels))
    cols = [max(14, len(r["metric"]) + 2) for r in rows]  # whole names: read-outs differ only in their ends
    lines = [f"{'':<{w}}" + "".join(f"{r['metric']:>{c}}" for r, c in zip(rows, cols))]
    lines += [f"{lab:<{w}}" + "".join(f"{value(r, lab):>{c}.3f}" for r, c in zip(rows, cols)) for lab in labels]
    return "\n".join(lines)


@eval_app.command("copies")
def copies(
    collection: Annotated[Path, typer.Argument(help="Folder or .tar(.gz) of images to search in.")],
    model: ModelOpt = None,
    metric: MetricOpt = None,
    device: DeviceOpt = "auto",
    normalization: NormOpt = None,
    readout: ReadoutsOpt = None,
    edit: Annotated[
        list[str] | None,
        typer.Option("--edit", help=f"Edit(s) to apply to the queries, repeatable (default: all): {', '.join(EDITS)}."),
    ] = None,
    queries: Annotated[int, typer.Option(min=1, help="Seeded query images (the same ones for every edit).")] = 200,
    ssim_queries: Annotated[
        int, typer.Option(min=1, help="SSIM search is brute force: only this many of the queries per edit.")
    ] = 50,
    split: SplitOpt = None,
    limit: LimitOpt = None,
    pixel_size: PixelOpt = None,
    dim: Annotated[
        int,
        typer.Option(
            min=1,
            help="Embeddings wider than this (AFVs) are projected to this many "
            "values by the index's seeded sparse JL sketch.",
        ),
    ] = 4096,
    mirror: Annotated[
        bool,
        typer.Option(
            "--mirror/--no-mirror",
            help="Also search each copy's mirror image and keep the nearer distance, as "
            "/v1/search does by default (for every metric alike).",
        ),
    ] = False,
    seed: int = 0,
    json_out: JsonOpt = False,
    out: OutOpt = None,
    plot: PlotOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Copy detection: recall@1/@10 of finding each query's original from an edited copy, per edit and metric."""
    from model.evaluation.copies import run_copies
    from model.evaluation.images import pixel_size as common_size
    from model.evaluation.images import sample

    edits = list(_select(EDITS, edit, "edit").values())
    metrics = _metrics(metric, model, device, normalization, readouts=readout)
    images = _read_images(collection, split, limit, seed)
    pixel = common_size(images.sizes, pixel_size)
    idx = sample(len(images), queries, seed)
    rows = [
        run_copies(
            m,
            images,
            edits,
            idx,
            pixel=pixel,
            dim=dim,
            seed=seed,
            ssim_queries=ssim_queries,
            progress=_progress(progress),
            mirror=mirror,
        )
        for m in metrics
    ]
    report = {
        "task": "copies",
        "collection": str(collection),
        "model": _model_label(model),
        "n_collection": len(images),
        "mirror": mirror,
        "n_queries": int(len(idx)),
        "pixel_size": pixel,
        "seed": seed,
        "rows": rows,
    }
    _write_json(out, report)
    if plot:
        from model.evaluation.editplots import copies_bars

        capped = "".join(f", {r['metric']}: {r['n_queries']}" for r in rows if r["n_queries"] < len(idx))
        copies_bars(plot, rows, f"copy detection: recall@1, {len(images)} images, {len(idx)} queries per edit{capped}")
    if json_out:
        typer.echo(json.dumps(report))
        return
    typer.echo(
        f"copy detection in {collection} ({len(images)} images, {len(idx)} queries per edit, "
        f"pixel metrics at {pixel} px)"
    )
    labels = [e.name for e in edits] + ["mean"]
    for key in ("recall@1", "recall@10"):
        typer.echo(f"\n{key}")
        typer.echo(_grid(labels, rows, lambda r, lab, key=key: (r["mean"] if lab == "mean" else r["edits"][lab])[key]))
    for r in rows:
        notes = [f"{r['seconds']} s"] + (
            [f"brute force on {r['n_queries']} queries per edit"] if r["dim"] is None else [f"{r['dim']}-d embedding"]
        )
        typer.echo(f"{r['metric']}: {', '.join(notes)}")


@eval_app.command("ranking")
def ranking(
    data: Annotated[Path, typer.Argument(help="Folder or .tar(.gz) of images.")],
    model: ModelOpt = None,
    metric: MetricOpt = None,
    device: DeviceOpt = "auto",
    normalization: NormOpt = None,
    readout: ReadoutsOpt = None,
    family: Annotated[
        list[str] | None,
        typer.Option("--family", help=f"Edit famil(ies) to rank, repeatable (default: all): {', '.join(FAMILIES)}."),
    ] = None,
    images: Annotated[int, typer.Option("--images", min=1, help="Seeded images to edit.")] = 200,
    split: SplitOpt = None,
    pixel_size: PixelOpt = None,
    seed: int = 0,
    json_out: JsonOpt = False,
    out: OutOpt = None,
    plot: PlotOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Distortion ranking: fraction of images where a weaker edit is nearer than a stronger one, per family."""
    from model.evaluation.images import pixel_size as common_size
    from model.evaluation.images import sample
    from model.evaluation.ranking import run_ranking

    fams = _select(FAMILIES, family, "edit family")
    metrics = _metrics(metric, model, device, normalization, readouts=readout)
    coll = _read_images(data, split, None, seed)
    idx = sample(len(coll), images, seed)
    pixel = common_size([coll.sizes[i] for i in idx], pixel_size)
    rows = [run_ranking(m, coll, fams, idx, pixel=pixel, seed=seed, progress=_progress(progress)) for m in metrics]
    report = {
        "task": "ranking",
        "data": str(data),
        "model": _model_label(model),
        "n_images": int(len(idx)),
        "pixel_size": pixel,
        "seed": seed,
        "rows": rows,
    }
    _write_json(out, report)
    if plot:
        from model.evaluation.editplots import ranking_heatmap

        ranking_heatmap(plot, rows, f"distortion ranking: pairs ordered weak < strong, {len(idx)} images")
    if json_out:
        typer.echo(json.dumps(report))
        return
    typer.echo(
        f"distortion ranking on {data} ({len(idx)} images, pixel metrics at {pixel} px): "
        "fraction of (weak, strong) pairs with d(x, weak) < d(x, strong)"
    )
    typer.echo(
        _grid(list(fams) + ["mean"], rows, lambda r, lab: r["mean"] if lab == "mean" else r["families"][lab]["mean"])
    )
    typer.echo("time: " + ", ".join(f"{r['metric']} {r['seconds']} s" for r in rows))


@eval_app.command("summary")
def summary(
    reports: Annotated[list[Path], typer.Argument(help="JSON reports written by afv eval … --out.")],
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Column label of each report, in order (default: its data folder's name)."),
    ] = None,
) -> None:
    """One markdown table of several benchmark reports: a row per metric variant, columns per benchmark."""
    from model.evaluation.summary import markdown, summarise

    if label and len(label) != len(reports):
        fail(f"give one --label per report ({len(reports)}), got {len(label)}")
    try:
        loaded = [json.loads(p.read_text()) for p in reports]
        labels: list[str | None] | None = list(label) if label else None
        columns, table = summarise(loaded, labels)
    except (OSError, ValueError, KeyError) as e:
        fail(str(e))
    typer.echo(markdown(columns, table))
