"""`afv index build --engine ray` from start to end: embed the missing shards, assemble as they come.

The caller spools the source's listing into shards (`listing.spool`) and opens (or creates) the index
first: its pins (model, statistics, projection) are what the workers check their model against and what
names the shards' sketches. Shards already on disk for the same listing and sketch are not embedded
again, and Ray is not started when none is missing. Each shard is added to the index as soon as every
shard before it is on disk (`assemble.ShardAssembler`), while Ray embeds the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from service.bulk.assemble import Outcomes, ShardAssembler
from service.bulk.ray_engine import RayOptions, Workers, connect, embed_shards
from service.bulk.shards import Shard, ShardPlan, pending_shards, sketch_id, write_shard
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
    plan: ShardPlan,
    *,
    model: str | None,
    shards_dir: Path,
    options: RayOptions = RayOptions(),
    progress: bool = True,
) -> BulkReport:
    """Embed a listing cut into shards (`listing.spool`) on Ray into `shards_dir` (resuming), adding each
    shard to `mi`'s index, in listing order, as soon as the shards before it are in.

    `model` is what each worker loads (a run folder every worker can read; None: the bundled model):
    it must be the model `mi` was opened with."""
    sketch = sketch_id(mi.index.pins)
    shards_dir.mkdir(parents=True, exist_ok=True)
    todo = pending_shards(shards_dir, plan, sketch)
    workers = None
    with ThreadPoolExecutor(1, thread_name_prefix="ray-stop") as later:  # Ray stops while the index is built
        with _bar(plan.total, "adding shards", progress) as bar, mi.index.bulk():
            assembler = ShardAssembler(mi.index, shards_dir, plan, on_rows=bar.update)
            for k in sorted(set(range(plan.count)) - set(todo)):  # those a killed run finished
                assembler.ready(k)
            if todo:
                workers = _embed(mi, plan, todo, model, shards_dir, sketch, options, progress, later.submit, assembler)
            if not assembler.done:
                raise BulkBuildError(f"shard {assembler.next} was not made; run the build again")
    return BulkReport(assembler.outcomes, plan.count, len(todo), workers)


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
    assembler: ShardAssembler,
) -> Workers:
    """Embed the shards `todo` on Ray, write each one and hand it to `assembler`; BulkBuildError if the
    Ray job stops."""

    def on_shard(k: int, shard: Shard) -> None:
        write_shard(shards_dir, k, plan, sketch, shard)
        assembler.ready(k)

    todo_images = sum(plan.counts[k] for k in todo)
    with connect(options.address, run_stop=run_stop) as ray, _bar(todo_images, "embedding (ray)", progress) as bar:
        try:
            return embed_shards(
                ray,
                plan,
                todo,
                model=model,
                pins=mi.index.pins,
                resolution=mi.embedder.resolution,
                reduced=mi.decode_fit is not None,
                options=options,
                on_shard=on_shard,
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
