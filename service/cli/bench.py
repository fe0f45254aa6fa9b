"""`afv bench extract|index`: feature-extraction speed, and the index's recall, size, build time and queries/s."""

from __future__ import annotations

import json
import time
from typing import Annotated

import faiss
import numpy as np
import typer

from index.faiss_index import VectorIndex, exact_rerank, plan_index
from service.cli.index import parse_size
from service.cli.options import DeviceOpt, JsonOpt, fail

bench_app = typer.Typer(help="Benchmarks (not part of the test suite).", no_args_is_help=True)


@bench_app.command("extract")
def bench_extract_cmd(
    preset: Annotated[list[str], typer.Option(help="Preset(s) to time.")] = ["tiny", "cpu", "paper", "paper64"],  # noqa: B006 (typer reads, never mutates)
    batch_size: int = 32,
    device: DeviceOpt = "auto",
    repeats: int = 3,
    loop_images: Annotated[int, typer.Option(help="Images timed in the batch-1 loop.")] = 32,
    json_out: JsonOpt = False,
) -> None:
    """Time (a) the batch-1 autograd loop, (b) our extractor, (c) the batched-gradient floor."""
    from model.bench import bench_extract
    from model.extract import resolve_device
    from model.presets import get_preset

    try:
        dev, presets = resolve_device(device), [get_preset(p) for p in preset]
    except ValueError as e:
        fail(str(e))
    rows = [bench_extract(p, batch_size, dev, repeats, loop_images) for p in presets]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'preset':<8} {'device':<6} {'params':>9} {'(a) loop':>10} {'(b) ours':>10} "
        f"{'(c) floor':>10} {'a/b':>6} {'b/c':>6}   images/s, batch {batch_size}; "
        "a/b = speed-up over the loop, b/c = time relative to the floor"
    )
    for r in rows:
        typer.echo(
            f"{r['preset']:<8} {r['device']:<6} {r['params']:>9} {r['loop_img_s']:>10.1f} "
            f"{r['ours_img_s']:>10.1f} {r['floor_img_s']:>10.1f} {r['speedup_vs_loop']:>5.2f}x "
            f"{r['slowdown_vs_floor']:>5.2f}x"
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
