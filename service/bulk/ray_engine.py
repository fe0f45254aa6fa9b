"""The Ray Data pipeline of a bulk build: decode tasks on CPUs, a pool of model workers, shards back.

    chunks of the listing ─flat_map(DecodeChunk), CPU tasks─▶ rows with pixels
        ─map_batches(Sketcher), an actor pool: the model loaded once per worker, its GPU if it has one─▶
    rows with sketches ─▶ the driver gathers them into shards and writes each one whole (`shards`)

Ray is imported here only, when `--engine ray` runs. With no address (and no $RAY_ADDRESS) a local Ray
instance is started with this machine's CPUs and shut down afterwards; with `--address auto` (inside a
cluster) or `ray://HOST:PORT` (from outside) an existing cluster is used. A Ray already initialised in this process
(a notebook, the tests) is used as it is and left running.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from service.bulk.shards import Shard, ShardCollector, ShardPlan
from service.bulk.stages import DecodeChunk, Sketcher, chunk_row

INSTALL_HINT = "pip install -e '.[ray]'"
DECODE_CPUS = 0.5  # per decode task: decoding is a small share of the work beside the model
CORES_PER_CPU_WORKER = 4  # CPU-only clusters: one model worker per 4 cores, its batches split across them
READ_CHUNK = 256  # images per decode task (compressed archives: up to a shard, read in one pass)
WAVE_IMAGES = 1_000_000  # images per Ray Data run: bounds the chunk list held in the object store


class RayUnavailableError(RuntimeError):
    """Ray (or fsspec) is not installed."""


def import_ray() -> Any:
    """The `ray` module with Ray Data; RayUnavailableError naming the extra to install."""
    try:
        import fsspec  # noqa: F401  # sources are read through it
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayUnavailableError(f"--engine ray needs Ray Data and fsspec ({e}); install them: {INSTALL_HINT}") from e
    return ray


def _now(stop: Callable[[], None]) -> None:
    stop()


@contextmanager
def connect(address: str | None, *, run_stop: Callable[[Callable[[], None]], object] = _now) -> Iterator[Any]:
    """Ray, connected: to `address` (else $RAY_ADDRESS, which `ray job submit` sets), else to a new local
    instance with this machine's CPUs, shut down afterwards. A Ray this process already initialised is
    used as it is and left running.

    `run_stop` runs the shutdown (by default now; an executor's `submit` lets the caller go on while
    Ray's processes stop, a second or so)."""
    ray = import_ray()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and progress notes: the build has a bar
    if ray.is_initialized():
        yield ray
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
    try:
        yield ray
    finally:
        run_stop(ray.shutdown)


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray; None = chosen from the cluster's resources (`plan_workers`)."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    batch_size: int = 64
    precision: str = "fp32"


@dataclass(frozen=True)
class Workers:
    """The model worker pool: how many, and the GPUs, CPUs and torch threads of each."""

    count: int
    gpus: float
    cpus: float

    @property
    def threads(self) -> int:
        return max(1, math.ceil(self.cpus))


def plan_workers(options: RayOptions, cluster: dict[str, float]) -> Workers:
    """One worker per GPU when the cluster has GPUs (1 CPU each), else one per 4 cores with 3.5 of them,
    so that each 4 cores keep half a core for a decode task (on 2 cores: one worker of 1.5 CPUs, 2
    threads, beside one decode task). A worker splits each batch across its threads (`model.parallel`):
    on 2 cores one such worker embedded 85-89 img/s against 68-74 for two single-threaded workers."""
    cpus, gpus = float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0))
    per_gpu = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if per_gpu > 0:
        count = options.workers or max(1, int(gpus // per_gpu))
        return Workers(count, per_gpu, options.cpus_per_worker or 1.0)
    count = options.workers or max(1, int(cpus // CORES_PER_CPU_WORKER))
    fair = min(CORES_PER_CPU_WORKER - DECODE_CPUS, (cpus - DECODE_CPUS) / count)
    return Workers(count, 0.0, options.cpus_per_worker or max(1.0, fair))


def decode_chunks(plan: ShardPlan, todo: list[int]) -> list[dict]:
    """The decode tasks of the shards to make: READ_CHUNK images each, or a whole shard for members of a
    compressed archive (each task streams through the archive from its start)."""
    rows = []
    for k in todo:
        entries = plan.entries_of(k)
        step = plan.size if any(e.sequential for e in entries) else READ_CHUNK
        rows += [chunk_row(k, k * plan.size + i, entries[i : i + step]) for i in range(0, len(entries), step)]
    return rows


def waves(plan: ShardPlan, todo: list[int]) -> Iterator[list[int]]:
    """The shards to make, in runs of about WAVE_IMAGES images."""
    per_wave = max(1, WAVE_IMAGES // plan.size)
    for i in range(0, len(todo), per_wave):
        yield todo[i : i + per_wave]


def embed_shards(
    ray: Any,
    plan: ShardPlan,
    todo: list[int],
    *,
    model: str | None,
    pins: dict,
    resolution: int,
    reduced: bool = False,
    options: RayOptions,
    on_shard: Callable[[int, Shard], None],
    on_rows: Callable[[int], None] = lambda n: None,
) -> Workers:
    """Decode and sketch the shards `todo` on Ray; `on_shard(k, shard)` gets each one whole as it is done
    (in any order), `on_rows(n)` every n rows for a progress bar. Returns the worker pool it used."""
    from ray.data import ActorPoolStrategy, DataContext

    workers = plan_workers(options, ray.cluster_resources())
    DataContext.get_current().enable_progress_bars = False
    for wave in waves(plan, todo):
        collector, chunks = ShardCollector(plan, wave), decode_chunks(plan, wave)
        ds = (
            ray.data.from_items(chunks, override_num_blocks=len(chunks))  # one decode task per chunk
            .flat_map(DecodeChunk(resolution, reduced), num_cpus=DECODE_CPUS)
            .map_batches(
                Sketcher,
                fn_constructor_kwargs={
                    "model": model,
                    "pins": pins,
                    "batch_size": options.batch_size,
                    "threads": workers.threads,
                    "precision": options.precision,
                },
                batch_size=options.batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(size=workers.count),  # `concurrency=N`, which Ray 2.51 deprecated
                num_cpus=workers.cpus,
                num_gpus=workers.gpus or None,
            )
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for k, shard in collector.add(batch):
                on_shard(k, shard)
            on_rows(len(batch["pos"]))
        if collector.unfinished:
            raise RuntimeError(f"Ray returned shards {collector.unfinished[:5]} incomplete; run the build again")
    return workers
