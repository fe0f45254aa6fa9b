"""The service's loaded resources (embedder + index) and what the routes ask of them, created once.

The embedder is whatever `model.loading.load_embedder` makes of the model folder (AFVs by default;
BiGAN/BigBiGAN encoders and GFMN runs alike): nothing below depends on the method.

Model work (AFVs, index sketches, and the distances of image pairs and 2AFC triplets, computed where
the pass runs so that only a few numbers per pair come back) is grouped by one `MicroBatcher`, so
concurrent requests share model passes; the embedder's own lock is the one lock around the model.
Before serving, the model runs once per batch-size bucket (`Settings.warm_up`), so that the timed kernel
choices are made before the model processes fork. Index reads and writes run in
threads (the index has its own lock). Images enter the index only through `service.ingest`.
Routes call the async methods here and never touch torch or FAISS. Errors raised here are domain
errors (index errors, `ItemNotFoundError`); `service.errors` maps them to HTTP in one place.

Index writes the storage refuses (`IndexWriteError`: disk full, I/O error) are recorded here until the
next successful write, for `/readyz` (`writable`, `write_error`) and `/metrics` (`afv_index_writes_failing`).
An index served read-only (`Settings.read_only`) is opened memory-mapped without a LOCK file; its
write routes are refused up front by `check_writable` (IndexReadOnlyError → 403 `read_only`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from anyio import to_thread

from durable import no_space
from index import AFVIndexError, Hit, IndexFullError, IndexReadOnlyError, IndexWriteError, ItemNotFoundError
from index.collection import DB_FILE
from model.embedder import DistanceReport, Embedder, SetStats
from model.fisher import bucket_sizes
from model.loading import load_embedder
from model.parallel import BatchSplitter, model_threads, set_thread_torch_threads, split_threads, threads_as
from service import jnd, model_processes
from service.batching import BatchFn, MicroBatcher
from service.ingest import Decode, Item, Outcome, ingest_batch
from service.metrics import Metrics
from service.model_index import ModelIndex
from service.model_processes import ModelProcesses
from service.schemas import JNDThreshold
from service.settings import Settings

log = logging.getLogger(__name__)

NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class StartupError(Exception):
    """The index cannot be served as configured (a one-line reason for the operator, no traceback)."""


def index_dir_problem(settings: Settings) -> str | None:
    """Why the configured index folder cannot be served (one line), or None: checked before the model loads."""
    index_dir = settings.resolved_index_dir
    if settings.read_only:
        if not (index_dir / DB_FILE).is_file():
            return f"no index to serve read-only in {index_dir} (build one first, e.g. with `afv index build`)"
        return None
    if not _writable(index_dir):
        return not_writable(index_dir)
    return None


def not_writable(index_dir: Path) -> str:
    """The one-line error for an index folder the server cannot write to."""
    return (
        f"the index folder {index_dir} is not writable; serve it read-only with `afv serve --read-only` "
        "(AFV_READ_ONLY=1), or choose a writable --index"
    )


def _writable(folder: Path) -> bool:
    """The folder (or its nearest existing parent, where it is to be created) and its files are writable."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    files = [f for f in existing.iterdir() if f.is_file()] if existing == folder and folder.is_dir() else []
    return all(os.access(p, os.W_OK) for p in [existing, *files])


@dataclass
class Resources:
    """What the service runs on: an embedder and the index it fills (real, or fakes in tests)."""

    embedder: Embedder
    index: ModelIndex

    @classmethod
    def load(cls, settings: Settings) -> Resources:
        """Load the model and open (or create) the index named by `settings`. Blocking: call from a thread.

        StartupError (one line) if the folder is not writable, or holds no index to serve read-only."""
        problem = index_dir_problem(settings)
        if problem is not None:
            raise StartupError(problem)
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        embedder = load_embedder(
            settings.model,
            device=settings.device,
            embedding=settings.embedding,
            readout=settings.readout,
            precision=settings.precision,
        )
        index_dir = settings.resolved_index_dir
        index = _open_index(index_dir, embedder, settings.read_only)
        log.info(
            "model %s (%s %s, dim %d) on %s; index %s with %d images",
            embedder.name,
            embedder.kind,
            embedder.model_hash[:12],
            embedder.dim,
            embedder.device,
            index_dir,
            index.index.count,
        )
        return cls(embedder, index)


def _open_index(index_dir: Path, embedder: Embedder, read_only: bool) -> ModelIndex:
    """Open the index read-only (memory-mapped, no LOCK file), or open or create it writable."""
    if read_only:
        return ModelIndex.open(index_dir, embedder, read_only=True)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        return ModelIndex.open_or_create(index_dir, embedder)
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            raise StartupError(not_writable(index_dir)) from e
        raise


class Engine:
    """Embedder + index + batcher, with async entry points for the routes."""

    def __init__(self, resources: Resources, settings: Settings, metrics: Metrics):
        self.resources, self.settings, self.metrics = resources, settings, metrics
        self.extractor, self.index = resources.embedder, resources.index.index
        self.decode_fit = resources.index.decode_fit  # what uploads are decoded for, as the index pins
        workers, threads = model_threads(settings.model_workers, self.extractor.device)
        self._threads_each = threads
        self._afv_replicas = BatchSplitter(self.extractor)  # one per model thread that needs one
        fns: dict[str, BatchFn] = {
            "afv": self._afv_batch,
            "pairs": self._pair_parts_batch,
            "triplets": self._triplet_batch,
            "embed": resources.index.sketch,
        }
        self.processes = self._model_processes(fns, workers, threads)
        procs = self.processes
        thread_init = (lambda: set_thread_torch_threads(threads)) if workers > 1 else None
        self.batcher = MicroBatcher(
            procs.batch_fns() if procs else fns,
            max_batch=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            observer=metrics,
            workers=workers,
            thread_init=procs.thread_init if procs else thread_init,
            thread_exit=procs.thread_exit if procs else None,
            images_per_row={"pairs": 2, "triplets": 3},
        )
        metrics.model_workers.set(workers)
        if procs is not None:
            metrics.track_model_processes(lambda: len(procs.pids), lambda: procs.restarts)
        self.jnd: JNDThreshold | None = None
        self.write_error: str | None = None  # why the last index write failed; None after a success
        metrics.track_index_size(lambda: self.index.count)

    def _model_processes(self, fns: dict[str, BatchFn], workers: int, torch_threads: int) -> ModelProcesses | None:
        """Worker processes for the model threads, where settings and platform allow (see service.model_processes)."""
        wanted = self.settings.model_processes
        if wanted is False or not model_processes.available(self.extractor.device):
            if wanted:
                log.warning("model processes need Linux and a CPU model; the model threads run the passes")
            return None
        r, n = self.extractor.resolution, self.settings.batch_max_size
        out_dim = max(self.extractor.dim, self.index.dim)
        in_bytes, out_bytes = n * 3 * r * r, n * out_dim * 4
        return ModelProcesses(fns, workers, in_bytes=in_bytes, out_bytes=out_bytes, torch_threads=torch_threads)

    async def start(self) -> None:
        if self.settings.warm_up:
            self._warm_up()  # before the fork: the model processes inherit its choices
        if self.processes is not None:
            self.processes.start()  # forked from the event loop's thread, see ModelProcesses
        await self.batcher.start()
        self.jnd = await self.batcher.run_in_worker(self._initial_jnd)

    async def stop(self) -> None:
        await self.batcher.stop()
        if self.processes is not None:
            self.processes.stop()
        try:
            await to_thread.run_sync(self.resources.index.close)
        except AFVIndexError as e:  # e.g. a full disk at the last checkpoint: the log keeps the ops
            log.error("closing the index: %s", e)

    # -- writes --------------------------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        return self.index.read_only

    def check_writable(self) -> None:
        """Refuse a write up front on an index served read-only (IndexReadOnlyError → 403 `read_only`)."""
        if self.read_only:
            raise IndexReadOnlyError(
                "this server serves its index read-only (--read-only / AFV_READ_ONLY); send writes to a writable one"
            )

    async def _write(self, fn, *args, **kwargs):
        """An index write; a storage failure is recorded (for /readyz and /metrics) and re-raised."""
        self.check_writable()
        try:
            result = await self._index_call(fn, *args, **kwargs)
        except IndexWriteError as e:
            self.write_error = str(e)
            self.metrics.write_failed(e.no_space)
            log.error("index write failed: %s", e)
            raise
        return result

    def _wrote(self) -> None:
        """A write reached the store: writes work (again)."""
        self.write_error = None
        self.metrics.write_succeeded()

    # -- model work (worker thread) ------------------------------------------------------------

    def _afv_batch(self, x: np.ndarray) -> np.ndarray:
        """One pass on the calling model thread's own replica of the extractor; in a model process, where
        torch runs single-threaded (`model.parallel.threads_after_fork`), split across its threads."""
        threads = split_threads(self.extractor.device) if self.processes is not None else 1
        parts = self._afv_replicas.map(lambda e, b: e.embed(b), torch.from_numpy(x), threads=threads)
        afvs = parts[0] if len(parts) == 1 else torch.cat(parts)
        return afvs.detach().float().cpu().numpy()

    def _pair_parts_batch(self, x: np.ndarray) -> np.ndarray:
        """n×2×3×R×R uint8 image pairs → their squared distances in parts (`Embedder.pair_parts`), computed
        beside the pass: the AFVs (4.3 MB an image for the bundled pyramid) never leave the model process."""
        v = self._afv_batch(x.reshape(-1, *x.shape[2:]))
        return self.extractor.pair_parts(v[0::2], v[1::2])

    def _triplet_batch(self, x: np.ndarray) -> np.ndarray:
        """n×3×3×R×R uint8 (ref, p0, p1) → n×2 squared distances ref–p0 and ref–p1 (sums of `pair_parts`)."""
        v = self._afv_batch(x.reshape(-1, *x.shape[2:]))
        return np.stack([self.extractor.pair_parts(v[0::3], v[k::3]).sum((1, 2)) for k in (1, 2)], axis=1)

    async def two_afc(self, triplets: np.ndarray) -> np.ndarray:
        """n×3×3×R×R uint8 (ref, p0, p1) → n×2 distances ref–p0, ref–p1, batched with concurrent requests."""
        return np.sqrt(await self.batcher.submit("triplets", triplets))

    async def distances(self, pairs: np.ndarray) -> list[DistanceReport]:
        """n×2×3×R×R uint8 image pairs → each pair's distance with its shares, batched with concurrent requests."""
        parts = await self.batcher.submit("pairs", pairs)
        return [self.extractor.report(p) for p in parts]

    def _warm_up(self) -> None:
        """Run each model function once per batch-size bucket, on seeded random images and with the thread
        settings its passes run with, so that the timed kernel choices (`fisher.fastest`) are made now. Forked
        model processes inherit them; each would otherwise time them itself during its first requests."""
        n, r = self.settings.batch_max_size, self.extractor.resolution
        x = np.random.default_rng(0).integers(0, 256, (n, 3, r, r), dtype=np.uint8)
        t0 = time.perf_counter()
        with threads_as(self._threads_each, forked=self.processes is not None):
            for fn in (self._afv_batch, self.resources.index.sketch):
                for size in bucket_sizes(n):
                    fn(x[:size])
        log.info("model warmed up for batches of 1 to %d images in %.1f s", n, time.perf_counter() - t0)

    async def set_stats(self, x: np.ndarray) -> SetStats:
        """A set's sums (`SetStats`) from its n×3×R×R uint8 images, one batch of AFVs at a time, added up off
        the event loop: memory O(batch × F), where the whole set's AFVs were 1.1 GB for 256 images of the
        bundled pyramid, and their float64 sums 1.3 s on the event loop."""
        stats = SetStats.empty(self.extractor.dim)
        step = self.settings.batch_max_size
        for i in range(0, len(x), step):
            v = await self.afv(x[i : i + step])
            await to_thread.run_sync(stats.add, v)
        return stats

    async def set_distance(self, xa: np.ndarray, xb: np.ndarray) -> float:
        """The model's distance between two image sets (n×3×R×R uint8 each), each streamed (`set_stats`)."""
        a, b = await asyncio.gather(self.set_stats(xa), self.set_stats(xb))
        return await to_thread.run_sync(self.extractor.stats_distance, a, b)

    async def afv(self, x: np.ndarray) -> np.ndarray:
        """n×3×R×R uint8 → n×P AFVs (float32), batched with concurrent requests."""
        return await self.batcher.submit("afv", x)

    async def embed(self, x: np.ndarray) -> np.ndarray:
        """n×3×R×R uint8 → n×d index sketches (float32), batched with concurrent requests."""
        return await self.batcher.submit("embed", x)

    # -- JND -----------------------------------------------------------------------------------

    @property
    def jnd_in_use(self) -> JNDThreshold:
        """The JND threshold (set by `start`; the routes only ever see a started engine, see `deps.get_engine`)."""
        assert self.jnd is not None, "the engine has not been started"
        return self.jnd

    def _initial_jnd(self) -> JNDThreshold:
        s, h = self.settings, self.extractor.model_hash
        if s.jnd_threshold is not None:
            return JNDThreshold(threshold=s.jnd_threshold, source="settings")
        saved = jnd.load(s.jnd_file, h)
        if saved is not None:
            return saved
        xa, xb, same = jnd.synthetic_pairs(self.extractor.resolution)
        d = np.linalg.norm(self._afv_batch(xa).astype(np.float64) - self._afv_batch(xb), axis=1)
        t, acc = jnd.fit_threshold(d, same)
        log.warning(
            "JND threshold %.4g fitted on synthetic noise pairs (not human judgments); "
            "calibrate it with POST /v1/jnd/calibrate",
            t,
        )
        return JNDThreshold(threshold=t, source="synthetic", n_pairs=len(d), accuracy=acc)

    async def calibrate_jnd(self, distances: np.ndarray, same: np.ndarray, save: bool) -> JNDThreshold:
        if save:
            self.check_writable()
        t, acc = jnd.fit_threshold(distances, same)
        self.jnd = JNDThreshold(threshold=t, source="calibrated", n_pairs=len(distances), accuracy=acc)
        if save:
            await to_thread.run_sync(self._save_jnd)
        return self.jnd

    def _save_jnd(self) -> None:
        """Persist the calibration; a storage failure is a write error (507 on a full disk), not a 500."""
        assert self.jnd is not None
        try:
            jnd.save(self.settings.jnd_file, self.jnd, self.extractor.model_hash)
        except OSError as e:
            error = IndexFullError if no_space(e) else IndexWriteError
            raise error(f"cannot save the JND calibration: {e.strerror or e}") from e

    # -- index ---------------------------------------------------------------------------------

    async def _index_call(self, fn, *args, **kwargs):
        return await to_thread.run_sync(partial(fn, *args, **kwargs))

    async def add_images(
        self, items: list[Item], decode: Decode, decode_errors: tuple[type[Exception], ...]
    ) -> list[Outcome]:
        """Ingest images (one batch; its sketches go through the micro-batcher with other requests)."""
        loop = asyncio.get_running_loop()

        def embed(x: np.ndarray) -> np.ndarray:  # runs in the ingest thread; the batcher lives on the loop
            return asyncio.run_coroutine_threadsafe(self.embed(x), loop).result()

        outcomes = await self._write(
            ingest_batch, self.index, items, decode=decode, embed=embed, decode_errors=decode_errors
        )
        if any(o.ok and not o.duplicate for o in outcomes):
            self._wrote()
        return outcomes

    async def search(self, vectors: np.ndarray, k: int, where: dict | None, rerank: bool) -> list[list[Hit]]:
        with self.metrics.stage("index_search"):
            return await self._index_call(self.index.search, vectors, k=k, where=where, rerank=rerank)

    async def search_images(self, x: np.ndarray, k: int, where: dict | None, rerank: bool, mirror: bool) -> list[Hit]:
        """Nearest indexed images to one preprocessed query image (1×3×R×R), and to its mirror image."""
        if mirror:
            x = np.concatenate([x, x[..., ::-1]])
        q = await self.embed(np.ascontiguousarray(x))
        with self.metrics.stage("index_search"):
            return await self._index_call(self.index.search_any, q, k=k, where=where, rerank=rerank)

    async def get(self, image_id: int) -> dict:
        rec = await self._index_call(self.index.get, image_id)
        if rec is None:
            raise ItemNotFoundError(f"image {image_id}")
        return rec

    async def delete(self, image_id: int) -> None:
        if not await self._write(self.index.delete, image_id):
            raise ItemNotFoundError(f"image {image_id}")
        self._wrote()

    async def vector_of(self, image_id: int) -> np.ndarray:
        """The stored sketch of an indexed image (404 if unknown)."""
        found = await self._index_call(self.index.vectors, [image_id])
        if image_id not in found:
            raise ItemNotFoundError(f"image {image_id}")
        return found[image_id][None, :]

    async def stats(self) -> dict:
        return await self._index_call(self.index.stats)

    async def seed_demo(self, folder: Path) -> None:
        """Index a demo collection into an empty index, once (runs in the background at start-up)."""
        from service.demo_seed import seed

        try:
            await seed(self, folder)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("indexing the demo collection failed")
