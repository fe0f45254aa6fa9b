"""Copy detection: find the original of an edited copy in a collection by nearest-neighbour search.

For each metric the whole collection is embedded (preprocessing: `model.evaluation.images`), then for
seeded query images (one sample, reused for every edit) each edit of `model.evaluation.edits` is
applied to the *original decoded* image, the copy is preprocessed exactly as the collection, and its
distance to every collection image is computed exactly:

* Embedding metrics: squared Euclidean distances of the embeddings (exact, brute force, in chunks).
  Embeddings wider than `dim` (AFVs: 67k values for the `cpu` preset, millions for `paper`) are
  streamed through the index's seeded sparse Johnson–Lindenstrauss sketch
  (`model.sketch.SparseSketch`, as the search index and the probes do), so memory stays
  O(N × dim); distances are kept to within a few per cent. Pixel L2 at 32 px (3,072 values) is exact.
* SSIM has no embedding: 1 − SSIM of every copy against every collection image (brute force), on the
  first `ssim_queries` images of the query sample only.

With `mirror`, every copy is also searched as its mirror image (horizontal flip) and each collection
image keeps the nearer of its two distances: what the service's `/v1/search` does by default
(`mirror: true`), so mirrored copies are found whatever the metric's own symmetry.

recall@k of a copy is 1 when its original is among the k nearest collection images. Ties (pHash's
integer Hamming distances tie often) are split as under a random tie-break: with `less` images
strictly nearer than the original and `ties` others as near, recall@k = clip((k − less)/(ties + 1), 0, 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from model.data import image_to_uint8
from model.evaluation.edits import Edit
from model.evaluation.images import Images, resolution_of
from model.evaluation.metrics import Metric
from model.evaluation.probe import embed
from model.evaluation.ssim import ssim_cross

KS = (1, 10)
SSIM_QUERIES = 50
SSIM_FLOATS = 2**24  # values per SSIM intermediate (64 MiB): bounds brute-force memory at any image size


def recall_at(d: np.ndarray, true_idx: np.ndarray, ks: Sequence[int] = KS) -> dict[int, np.ndarray]:
    """Q×N distances and each query's true match → {k: Q recalls@k}, ties split as a random tie-break."""
    dt = d[np.arange(len(true_idx)), true_idx][:, None]
    less = (d < dt).sum(1)
    ties = (d == dt).sum(1) - 1
    return {k: np.clip((k - less) / (ties + 1), 0.0, 1.0) for k in ks}


def sq_distances(q: np.ndarray, db: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Q×N squared Euclidean distances of queries to database vectors (exact, float32, in chunks)."""
    qt = torch.from_numpy(q).float()
    qn = qt.pow(2).sum(1, keepdim=True)
    out = np.empty((q.shape[0], db.shape[0]), np.float32)
    for i in range(0, db.shape[0], chunk):
        b = torch.from_numpy(db[i : i + chunk]).float()
        out[:, i : i + chunk] = (qn + b.pow(2).sum(1)[None] - 2.0 * qt @ b.T).clamp_min(0).numpy()
    return out


def edited_queries(images: Images, idx: np.ndarray, edit: Edit, resolution: int, seed: int) -> torch.Tensor:
    """The edited copies of images `idx`, preprocessed as the collection: Q×3×R×R uint8."""
    return torch.from_numpy(
        np.stack([image_to_uint8(edit(images.decode(int(i)), seed, int(i)), resolution) for i in idx])
    )


def embed_collection(
    metric: Metric, images: Images, resolution: int, dim: int, seed: int, progress: bool = False
) -> np.ndarray:
    """N×F embeddings of the whole collection (sketched to `dim` if wider), decoded and embedded in blocks."""
    bar = tqdm(total=len(images), desc=f"{metric.name}: embedding collection", unit="img", disable=not progress)
    parts = []
    for x in images.blocks(resolution):
        parts.append(embed(metric, x, dim, seed))
        bar.update(x.shape[0])
    bar.close()
    return np.concatenate(parts)


def _summary(recalls: dict[str, dict[int, np.ndarray]]) -> tuple[dict, dict]:
    per_edit = {
        e: {f"recall@{k}": float(r.mean()) for k, r in rk.items()} | {"n": int(len(rk[KS[0]]))}
        for e, rk in recalls.items()
    }
    mean = {f"recall@{k}": float(np.mean([v[f"recall@{k}"] for v in per_edit.values()])) for k in KS}
    return per_edit, mean


def _embedding_recalls(
    metric: Metric,
    images: Images,
    edits: list[Edit],
    idx: np.ndarray,
    resolution: int,
    dim: int,
    seed: int,
    progress: bool,
    mirror: bool,
) -> tuple[dict, int]:
    db = embed_collection(metric, images, resolution, dim, seed, progress)
    out = {}
    for edit in tqdm(edits, desc=f"{metric.name}: queries", unit="edit", disable=not progress):
        x = edited_queries(images, idx, edit, resolution, seed)
        d = sq_distances(embed(metric, x, dim, seed), db)
        if mirror:
            d = np.minimum(d, sq_distances(embed(metric, x.flip(3), dim, seed), db))
        out[edit.name] = recall_at(d, idx)
    return out, int(db.shape[1])


def _ssim_recalls(
    images: Images, edits: list[Edit], idx: np.ndarray, resolution: int, seed: int, progress: bool, mirror: bool
) -> dict:
    queries = {e.name: edited_queries(images, idx, e, resolution, seed) for e in edits}
    sims: dict[str, list[np.ndarray]] = {name: [] for name in queries}
    bar = tqdm(total=len(images), desc="ssim: brute force", unit="img", disable=not progress)
    for x in images.blocks(resolution):
        chunk = max(1, SSIM_FLOATS // x[0].numel())
        for name, q in queries.items():
            s = ssim_cross(q, x, chunk_pairs=chunk).numpy()
            if mirror:
                s = np.maximum(s, ssim_cross(q.flip(3), x, chunk_pairs=chunk).numpy())
            sims[name].append(s)
        bar.update(x.shape[0])
    bar.close()
    return {name: recall_at(1.0 - np.concatenate(s, axis=1), idx) for name, s in sims.items()}


def run_copies(
    metric: Metric,
    images: Images,
    edits: list[Edit],
    idx: np.ndarray,
    *,
    pixel: int,
    dim: int = 4096,
    seed: int = 0,
    ssim_queries: int = SSIM_QUERIES,
    progress: bool = False,
    mirror: bool = False,
) -> dict:
    """One metric's copy-detection row: recall@1/@10 per edit and their mean over edits."""
    t0 = time.perf_counter()
    res = resolution_of(metric, pixel)
    if metric.has_embedding:
        recalls, width = _embedding_recalls(metric, images, edits, idx, res, dim, seed, progress, mirror)
    elif metric.name != "ssim":
        raise ValueError(f"metric {metric.name!r} has no embedding to search with")
    else:
        idx, width = idx[:ssim_queries], None
        recalls = _ssim_recalls(images, edits, idx, res, seed, progress, mirror)
    per_edit, mean = _summary(recalls)
    return {
        "metric": metric.name,
        "resolution": res,
        "dim": width,
        "n_queries": int(len(idx)),
        "mirror": mirror,
        "edits": per_edit,
        "mean": mean,
        "seconds": round(time.perf_counter() - t0, 1),
    }
