"""`afv index build --engine ray` from start to end: list, shard, embed the missing shards, assemble.

The caller lists the source and opens (or creates) the index first: its pins (model, statistics,
projection) are what the workers check their model against and what names the shards' sketches. Shards
already on disk for the same listing and sketch are not embedded again, and Ray is not started when
none is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from service.bulk.assemble import Outcomes, assemble
from service.bulk.ray_engine import RayOptions, Workers, connect, embed_shards
from service.bulk.shards import ShardPlan, pending_shards, sketch_id, write_shard
from service.bulk.sources import Entry
from service.model_index import ModelIndex

DEFAULT_SHARD_SIZE = 10_000
EMBEDDINGS_DIR = "embeddings"  # the shards' default folder, inside the index folder


class BulkBuildError(RuntimeError):
    """The Ray job stopped (a worker's error, a node lost beyond Ray's retries); a re-run resumes it."""


@dataclass
class BulkReport:
    """What a bulk build did: the images' outcomes, and the shards it made or found done."""

    outcomes: Outcomes
    shards: int
    made: int
    workers: Workers | None  # None: every shard was on disk already, Ray was not started


def build_with_ray(
    mi: ModelIndex,
    entries: list[Entry],
    *,
    model: str | None,
    shards_dir: Path,
    options: RayOptions = RayOptions(),
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> BulkReport:
    """Embed a source's `entries` (`list_source`) on Ray into shards in `shards_dir` (resuming), then add
    them all to `mi`'s index.

    `model` is what each worker loads (a run folder every worker can read; None: the bundled model):
    it must be the model `mi` was opened with."""
    if shard_size < 1:
        raise ValueError(f"the shard size must be positive, got {shard_size}")
    plan = ShardPlan(entries, shard_size)
    sketch = sketch_id(mi.index.pins)
    shards_dir.mkdir(parents=True, exist_ok=True)
    todo = pending_shards(shards_dir, plan, sketch)
    workers = None
    with ThreadPoolExecutor(1, thread_name_prefix="ray-stop") as later:  # Ray stops while the index is built
        if todo:
            workers = _embed(mi, plan, todo, model, shards_dir, sketch, options, progress, later.submit)
        with _bar(len(plan.entries), "adding shards", progress) as bar:
            outcomes = assemble(mi.index, shards_dir, plan, sketch, on_rows=bar.update)
    return BulkReport(outcomes, plan.count, len(todo), workers)


def _embed(
    mi: ModelIndex,
    plan: ShardPlan,
    todo: list[int],
    model: str | None,
    shards_dir: Path,
    sketch: str,
    options: RayOptions,
    progress: bool,
    run_stop: Callable[[Callable[[], None]], object],
) -> Workers:
    """Embed the shards `todo` on Ray and write them; BulkBuildError if the Ray job stops."""
    todo_images = sum(len(plan.entries_of(k)) for k in todo)
    with connect(options.address, run_stop=run_stop) as ray, _bar(todo_images, "embedding (ray)", progress) as bar:
        try:
            return embed_shards(
                ray,
                plan,
                todo,
                model=model,
                pins=mi.index.pins,
                resolution=mi.embedder.resolution,
                options=options,
                on_shard=lambda k, shard: write_shard(shards_dir, k, plan, sketch, shard),
                on_rows=bar.update,
            )
        except Exception as e:
            if not isinstance(e, ray.exceptions.RayError) and not type(e).__module__.startswith("ray."):
                raise
            left = len(pending_shards(shards_dir, plan, sketch))
            raise BulkBuildError(
                f"the Ray job stopped: {_last_line(e)}; {plan.count - left} of {plan.count} shards are done "
                "(a re-run resumes from there)"
            ) from e


def _last_line(e: Exception) -> str:
    """A Ray error's cause: the last line of its message (the rest is the worker's traceback)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", smoothing=0.1, disable=not enabled)
