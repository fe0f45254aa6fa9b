"""The service's loaded resources: embedder, index, micro-batcher and JND threshold, created once.

The embedder is whatever `model.loading.load_embedder` makes of the model folder (AFVs by default;
BiGAN/BigBiGAN encoders and GFMN runs alike): nothing below depends on the method.

All model work (extractor AFVs, index sketches) goes through one `MicroBatcher` and thus one worker
thread: the extractor's hooks allow one batch at a time. Index reads and writes run in a threadpool
(the index has its own lock). Routes call the async methods here and never touch torch or FAISS.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from index import AFVIndex, AFVIndexError, InvalidInputError
from index.collection import AddResult, Hit
from model.embedder import Embedder
from model.loading import load_embedder
from service import jnd
from service.batching import MicroBatcher
from service.errors import APIError, not_found
from service.metrics import Metrics
from service.schemas import JNDThreshold
from service.settings import Settings

log = logging.getLogger(__name__)

RECORD_FIELDS = ("id", "name", "sha256", "size", "added_at")


class Engine:
    """Extractor + index + batcher, with async entry points for the routes."""

    def __init__(self, extractor: Embedder, index: AFVIndex, settings: Settings, metrics: Metrics):
        self.extractor, self.index, self.settings, self.metrics = extractor, index, settings, metrics
        self.batcher = MicroBatcher(
            {"afv": self._afv_batch, "embed": self._embed_batch},
            max_batch=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            observer=metrics,
        )
        self.jnd: JNDThreshold | None = None
        metrics.track_index_size(lambda: index.count)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> Engine:
        """Load the model and open (or create) the index. Blocking: call from a thread."""
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        extractor = load_embedder(
            settings.model, device=settings.device, embedding=settings.embedding, readout=settings.readout
        )
        index_dir = settings.resolved_index_dir
        index_dir.mkdir(parents=True, exist_ok=True)
        index = AFVIndex.open_or_create(index_dir, extractor)
        log.info(
            "model %s (%s %s, dim %d) on %s; index %s with %d images",
            extractor.name,
            extractor.kind,
            extractor.model_hash[:12],
            extractor.dim,
            extractor.device,
            index_dir,
            index.count,
        )
        return cls(extractor, index, settings, metrics)

    async def start(self) -> None:
        await self.batcher.start()
        self.jnd = await self.batcher.run_in_worker(self._initial_jnd)

    async def stop(self) -> None:
        await self.batcher.stop()
        await run_in_threadpool(self.index.close)

    # -- model work (worker thread) ------------------------------------------------------------

    def _afv_batch(self, x: np.ndarray) -> np.ndarray:
        return self.extractor.embed(torch.from_numpy(x)).detach().float().cpu().numpy()

    def _embed_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.embed(torch.from_numpy(x)), dtype=np.float32)

    async def afv(self, x: np.ndarray) -> np.ndarray:
        """n×3×R×R uint8 → n×P AFVs (float32), batched with concurrent requests."""
        return await self.batcher.submit("afv", x)

    async def embed(self, x: np.ndarray) -> np.ndarray:
        """n×3×R×R uint8 → n×d index sketches (float32), batched with concurrent requests."""
        return await self.batcher.submit("embed", x)

    # -- JND -----------------------------------------------------------------------------------

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
            await run_in_threadpool(jnd.save, self.settings.jnd_file, self.jnd, self.extractor.model_hash)
        return self.jnd

    # -- index ---------------------------------------------------------------------------------

    async def _index_call(self, fn, *args, **kwargs):
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except InvalidInputError as e:
            raise APIError(422, "invalid_input", str(e)) from None
        except AFVIndexError as e:
            log.error("index error: %s", e)
            raise APIError(503, "index_unavailable", str(e)) from None

    async def add(self, vectors: np.ndarray, records: list[dict]) -> list[AddResult]:
        return await self._index_call(self.index.add_embedded, vectors, records)

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
            raise not_found(f"image {image_id}")
        return rec

    async def delete(self, image_id: int) -> None:
        if not await self._index_call(self.index.delete, image_id):
            raise not_found(f"image {image_id}")

    async def vector_of(self, image_id: int) -> np.ndarray:
        """The stored sketch of an indexed image (404 if unknown)."""
        found = await self._index_call(self.index.store.vectors, [image_id])
        if image_id not in found:
            raise not_found(f"image {image_id}")
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


def parse_id(raw: str) -> int:
    """Path/JSON id → int; anything else is an unknown id (404), not a validation error."""
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise not_found(f"image {raw!r}") from None
    if value < 0 or value >= 2**63:
        raise not_found(f"image {raw!r}")
    return value


def split_record(rec: dict) -> tuple[dict, dict]:
    """Index record → (record fields, user metadata)."""
    return ({k: rec.get(k) for k in RECORD_FIELDS}, {k: v for k, v in rec.items() if k not in RECORD_FIELDS})
