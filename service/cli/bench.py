"""`afv bench extract|sketch|index`: feature-extraction speed, the projections' speed and distance
fidelity against exact AFVs, and the index's recall, size, build time and queries/s."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import faiss
import numpy as np
import typer

from index.faiss_index import VectorIndex, exact_rerank, plan_index
from service.cli.index import parse_size
from service.cli.options import (
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    ReadoutOpt,
    fail,
    load_images,
    load_model,
    precision_of,
)

bench_app = typer.Typer(help="Benchmarks (not part of the test suite).", no_args_is_help=True)


@bench_app.command("extract")
def bench_extract_cmd(
    preset: Annotated[list[str], typer.Option(help="Preset(s) to time.")] = ["tiny", "cpu", "paper", "paper64"],  # noqa: B006 (typer reads, never mutates)
    batch_size: int = 32,
    device: DeviceOpt = "auto",
    repeats: int = 3,
    loop_images: Annotated[int, typer.Option(help="Images timed in the batch-1 loop.")] = 32,
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Time (a) the batch-1 autograd loop, (b) our extractor (split across threads on CPU, and in one pass),
    (c) the batched-gradient floor (in one pass, and split)."""
    from model.bench import bench_extract
    from model.extract import resolve_device
    from model.presets import get_preset

    try:
        dev, presets = resolve_device(device), [get_preset(p) for p in preset]
    except ValueError as e:
        fail(str(e))
    arithmetic = precision_of(precision)
    rows = [bench_extract(p, batch_size, dev, repeats, loop_images, arithmetic) for p in presets]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'preset':<8} {'device':<6} {'params':>9} {'(a) loop':>10} {'(b) ours':>10} {'(b1) 1 pass':>11} "
        f"{'(c) floor':>10} {'(c2) split':>10} {'a/b':>6} {'b/c':>6}   images/s, batch {batch_size}"
    )
    for r in rows:
        typer.echo(
            f"{r['preset']:<8} {r['device']:<6} {r['params']:>9} {r['loop_img_s']:>10.1f} "
            f"{r['ours_img_s']:>10.1f} {r['ours_one_pass_img_s']:>11.1f} {r['floor_img_s']:>10.1f} "
            f"{r['floor_split_img_s']:>10.1f} {r['speedup_vs_loop']:>5.2f}x {r['slowdown_vs_floor']:>5.2f}x"
        )
    typer.echo(
        f"(b) the batch split into {rows[0]['parts'] if rows else 1} part(s), one per torch thread, each on one "
        "thread (CPU); (b1) one pass with intra-op threads; (c) one summed backward, (c2) the same split. "
        "a/b = speed-up over the loop, b/c = time relative to the floor."
    )
    if arithmetic == "mixed":
        typer.echo("mixed: (b) with the backward's input gradients and the products in bfloat16; (a) and (c) in fp32.")
    if arithmetic == "bf16":
        typer.echo(f"all of the above in {arithmetic}; in fp32, the authors' arithmetic:")
        for r in rows:
            typer.echo(
                f"{r['preset']:<8} (a) loop {r['loop_fp32_img_s']:.1f}, (c) floor {r['floor_fp32_img_s']:.1f} img/s; "
                f"(b) in {arithmetic} is {r['speedup_vs_fp32_loop']:.2f}x the fp32 loop"
            )


def _sketch_configs(modes: list[str], samples: list[int]) -> dict[str, dict]:
    """Projection configs to compare: each mode once, 'sampled' once per sample size."""
    configs: dict[str, dict] = {}
    for mode in modes:
        if mode == "sampled":
            configs.update({f"sampled {n}": {"mode": "sampled", "samples": n} for n in samples})
        else:
            configs[mode] = {"mode": mode}
    return configs


def _untrained_with_stats(preset: str, device: str, normalization: str, readout: str | None, n: int):
    """An untrained preset's extractor with Fisher statistics from n generator samples (speed benchmarks)."""
    import torch

    from model.extract import AFVExtractor, resolve_device
    from model.pyramid import PyramidAFVExtractor, estimate_pyramid_stats, parse_readout

    ex = AFVExtractor.untrained(preset, resolve_device(device), normalization, batch_size=32, fisher_samples=n)
    spec = parse_readout(readout)
    if spec.is_plain:
        return ex
    with torch.no_grad():
        return PyramidAFVExtractor(ex, spec, estimate_pyramid_stats(ex.d, ex.g, spec, n, batch_size=min(n, 32)))


@bench_app.command("sketch")
def bench_sketch_cmd(
    images: Annotated[Path, typer.Option("--images", help="Folder or .tar(.gz) of images to measure on.")],
    model: ModelOpt = None,
    preset: Annotated[
        str | None, typer.Option(help="Instead of --model: an untrained preset (speed; statistics of --stats-samples).")
    ] = None,
    readout: ReadoutOpt = None,
    normalization: Annotated[str | None, typer.Option(help="none | l2 | power (default: the model's).")] = None,
    mode: Annotated[list[str], typer.Option(help="Projection mode(s).")] = ["exact", "sampled", "fast"],  # noqa: B006
    samples: Annotated[list[int], typer.Option(help="Sample sizes of the sampled mode.")] = [4096, 8192, 16384],  # noqa: B006
    n: Annotated[int, typer.Option("-n", help="Images (pairwise distances of all of them are compared).")] = 96,
    dim: int = 1024,
    stats_samples: int = 256,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    repeats: int = 3,
    json_out: JsonOpt = False,
) -> None:
    """Each projection's images/s (vs the batched-gradient floor and exact AFVs) and distance error vs exact AFVs."""
    from model.bench import bench_sketch

    if preset is not None and model is not None:
        fail("give --model or --preset, not both")
    try:
        ex = (
            _untrained_with_stats(preset, device, normalization or "power", readout, stats_samples)
            if preset is not None
            else load_model(model, device, normalization=normalization, readout=readout, batch_size=32)
        )
        ex.set_precision(precision_of(precision))
    except ValueError as e:
        fail(str(e))
    if getattr(ex, "kind", None) != "afv":
        fail(f"projections are benchmarked against exact AFVs; this is a '{ex.kind}' model")
    x = load_images(images, ex.resolution)[:n]
    r = bench_sketch(ex, x, _sketch_configs(mode, samples), d=dim, repeats=repeats)
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return
    typer.echo(
        f"{ex.name} ({r['afv_dim']:,} AFV values, {ex.normalization}), {r['n_images']} images, d={dim}: "
        f"floor {r['floor_img_s']:.1f} img/s, exact AFVs {r['exact_afv_img_s']:.1f} img/s"
        + (f" in {r['precision']}" if r["precision"] != "fp32" else "")
    )
    if r["precision"] == "bf16":
        typer.echo(
            f"in fp32: floor {r['floor_fp32_img_s']:.1f} img/s, exact AFVs {r['exact_afv_fp32_img_s']:.1f} img/s "
            "(errors below are against fp32 exact AFVs)"
        )
    typer.echo(
        f"{'projection':<14} {'img/s':>8} {'vs floor':>9} {'vs exact':>9} {'pearson':>8} {'mean err':>9} "
        f"{'max err':>8} {'mean ratio':>10}   (vs floor: time / floor time; errors: |d/d_exact - 1|)"
    )
    for label, c in r["configs"].items():
        if "error" in c:
            typer.echo(f"{label:<14} n/a: {c['error']}")
            continue
        typer.echo(
            f"{label:<14} {c['img_s']:>8.1f} {c['time_vs_floor']:>8.2f}x {c['speedup_vs_exact_afv']:>8.2f}x "
            f"{c['pearson']:>8.4f} {c['rel_error_mean']:>8.2%} {c['rel_error_max']:>8.2%} {c['ratio_mean']:>10.4f}"
        )


def synthetic(n: int, d: int, seed: int, n_clusters: int = 1000, latent: int = 32) -> np.ndarray:
    """Clustered vectors on a low-dimensional manifold (like sketches of images), n×d float32."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(12345).normal(size=(latent, d)).astype(np.float32) / np.sqrt(latent)
    centers = np.random.default_rng(54321).normal(size=(n_clusters, latent)).astype(np.float32) * 2
    out = np.empty((n, d), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        z = centers[rng.integers(0, n_clusters, m)] + rng.normal(size=(m, latent)).astype(np.float32)
        out[i : i + m] = z @ basis + 0.05 * rng.normal(size=(m, d)).astype(np.float32)
    return out


def _recall(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, gt)]))


def bench_one(n: int, d: int, n_queries: int, budget: int, k: int = 10) -> dict:
    """Build the auto-chosen index for n synthetic vectors and measure it against exact search."""
    xb, xq = synthetic(n, d, seed=1), synthetic(n_queries, d, seed=2)
    gt = faiss.IndexFlatL2(d)
    gt.add(xb)
    _, I_gt = gt.search(xq, k)
    del gt
    plan = plan_index(n, d, budget)
    t0 = time.perf_counter()
    train = xb[np.random.default_rng(0).permutation(n)[: max(plan.min_train, 20_000)]]
    vindex = VectorIndex.build(plan, None if plan.kind == "flat" else train)
    vindex.add(xb, np.arange(n))
    build_s = time.perf_counter() - t0
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        t0 = time.perf_counter()
        _, I = vindex.search(xq, k)
        qps = n_queries / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, cand = vindex.search(xq, 10 * k)
        _, I_rr = exact_rerank(xq, cand, {int(i): xb[i] for i in np.unique(cand) if i >= 0}, k)
        qps_rr = n_queries / (time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    return {
        "n": n,
        "kind": plan.factory,
        "bytes_per_vector": plan.bytes_per_vector,
        "compression": 4 * d / plan.bytes_per_vector,
        "build_s": build_s,
        "recall@10": _recall(I, I_gt, k),
        "qps": qps,
        "recall@10_rerank": _recall(I_rr, I_gt, k),
        "qps_rerank": qps_rr,
    }


@bench_app.command("index")
def bench_index(
    sizes: str = typer.Option("10000,100000,1000000", help="Comma-separated collection sizes."),
    dim: int = typer.Option(1024, "--dim", help="Sketch dimension."),
    queries: int = typer.Option(1000, help="Number of queries."),
    memory_budget: str = typer.Option("256MB", "--memory-budget"),
) -> None:
    """Benchmark the compressed index on synthetic clustered sketches and print a table."""
    budget = parse_size(memory_budget)
    typer.echo(
        f"d={dim}, {queries} queries, memory budget {budget / 2**20:.0f} MiB; "
        "qps single-threaded; rerank = exact re-rank of 10·k PQ candidates"
    )
    head = (
        f"{'n':>9} {'index':>22} {'B/vec':>6} {'×':>5} {'build s':>8} {'R@10':>6} {'qps':>8} "
        f"{'R@10 rr':>8} {'qps rr':>7}"
    )
    typer.echo(head)
    for n in (int(s) for s in sizes.split(",")):
        r = bench_one(n, dim, queries, budget)
        typer.echo(
            f"{r['n']:>9} {r['kind']:>22} {r['bytes_per_vector']:>6} {r['compression']:>5.0f} "
            f"{r['build_s']:>8.1f} {r['recall@10']:>6.3f} {r['qps']:>8.0f} "
            f"{r['recall@10_rerank']:>8.3f} {r['qps_rerank']:>7.0f}"
        )
