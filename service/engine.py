"""The service's loaded resources (embedder + index) and what the routes ask of them, created once.

The embedder is whatever `model.loading.load_embedder` makes of the model folder (AFVs by default;
BiGAN/BigBiGAN encoders and GFMN runs alike): nothing below depends on the method.

Model work (AFVs, index sketches) is grouped by one `MicroBatcher`, so concurrent requests share model
passes; the embedder's own lock is the one lock around the model. Index reads and writes run in
threads (the index has its own lock). Images enter the index only through `service.ingest`.
Routes call the async methods here and never touch torch or FAISS. Errors raised here are domain
errors (index errors, `ItemNotFoundError`); `service.errors` maps them to HTTP in one place.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from anyio import to_thread

from index import Hit, ItemNotFoundError
from model.embedder import Embedder
from model.loading import load_embedder
from service import jnd
from service.batching import MicroBatcher
from service.ingest import Decode, Item, Outcome, ingest_batch
from service.metrics import Metrics
from service.model_index import ModelIndex
from service.schemas import JNDThreshold
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """What the service runs on: an embedder and the index it fills (real, or fakes in tests)."""

    embedder: Embedder
    index: ModelIndex

    @classmethod
    def load(cls, settings: Settings) -> Resources:
        """Load the model and open (or create) the index named by `settings`. Blocking: call from a thread."""
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        embedder = load_embedder(
            settings.model, device=settings.device, embedding=settings.embedding, readout=settings.readout
        )
        index_dir = settings.resolved_index_dir
        index_dir.mkdir(parents=True, exist_ok=True)
        index = ModelIndex.open_or_create(index_dir, embedder)
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


class Engine:
    """Embedder + index + batcher, with async entry points for the routes."""

    def __init__(self, resources: Resources, settings: Settings, metrics: Metrics):
        self.resources, self.settings, self.metrics = resources, settings, metrics
        self.extractor, self.index = resources.embedder, resources.index.index
        self.batcher = MicroBatcher(
            {"afv": self._afv_batch, "embed": resources.index.sketch},
            max_batch=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            observer=metrics,
        )
        self.jnd: JNDThreshold | None = None
        metrics.track_index_size(lambda: self.index.count)

    async def start(self) -> None:
        await self.batcher.start()
        self.jnd = await self.batcher.run_in_worker(self._initial_jnd)

    async def stop(self) -> None:
        await self.batcher.stop()
        await to_thread.run_sync(self.resources.index.close)

    # -- model work (worker thread) ------------------------------------------------------------

    def _afv_batch(self, x: np.ndarray) -> np.ndarray:
        return self.extractor.embed(torch.from_numpy(x)).detach().float().cpu().numpy()

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
        t, acc = jnd.fit_threshold(distances, same)
        self.jnd = JNDThreshold(threshold=t, source="calibrated", n_pairs=len(distances), accuracy=acc)
        if save:
            await to_thread.run_sync(jnd.save, self.settings.jnd_file, self.jnd, self.extractor.model_hash)
        return self.jnd

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

        return await self._index_call(
            ingest_batch, self.index, items, decode=decode, embed=embed, decode_errors=decode_errors
        )

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
        if not await self._index_call(self.index.delete, image_id):
            raise ItemNotFoundError(f"image {image_id}")

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
