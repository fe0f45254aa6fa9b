"""Linear and k-nearest-neighbour probes of a metric's embedding on a labelled split/class/*.jpg set.

* Data: ``ROOT/<split>/<class>/*`` in a folder or .tar(.gz) (e.g. CIFAR-10's train/ and test/).
  `--limit`s take a seeded, class-stratified random subset (not the first N files, which would be
  the first classes only).
* Embedding: the metric's features (`metrics.Metric.embed_fn`). Features wider than `dim` (AFVs:
  P = 67k values for the `cpu` preset, 4.2M for `paper`) are streamed through the index's seeded
  sparse Johnson–Lindenstrauss sketch (`model.sketch.SparseSketch`, the `exact` projection
  mode) to `dim` values, so 50k AFVs never have to be held in memory; Euclidean distances are kept
  to within a few per cent. Pixels (3,072) and pooled features stay un-projected at the default dim.
* Linear probe: multinomial logistic regression (torch, full-batch L-BFGS, scikit-learn's C
  convention) on standardised features; C is picked from a small grid on a seeded 10 % hold-out of the
  training set, then refit on all.
* k-NN probe: the training features in the project's FAISS index (`index.faiss_index`, planned by
  `plan_index`: exact flat search below 50k vectors), k = 10, majority vote; a tie goes to the tied
  class met first (nearest). SSIM has no embedding: its k-NN is brute force over all pairs and it
  has no linear probe.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model import fisher
from model.data import ImageDecodeError, decode_image, image_to_uint8, iter_records, uint8_to_model
from model.evaluation.metrics import Metric
from model.evaluation.ssim import ssim_cross

log = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)
MAX_ITER = 150  # L-BFGS iterations of the linear probe (each ≤ 1.25 loss evaluations on average)


@dataclass
class LabelledSet:
    """N×3×R×R uint8 images, their N integer labels and the class names (sorted)."""

    x: torch.Tensor
    y: np.ndarray
    classes: list[str]


def _records_by_class(path, split: str) -> dict[str, list]:
    by_class: dict[str, list] = defaultdict(list)
    for rec in iter_records(path, split):
        parts = rec.name.split("/")
        if len(parts) >= 3:  # split/class/file
            by_class[parts[-2]].append(rec)
    if not by_class:
        raise ValueError(f"no images under {split}/<class>/ in {path}")
    return by_class


def load_labelled(
    path, split: str, resolution: int, limit: int | None = None, seed: int = 0, classes: list[str] | None = None
) -> LabelledSet:
    """Load `split` of a split/class/* collection; `limit` → a seeded class-stratified subset."""
    by_class = _records_by_class(path, split)
    classes = classes or sorted(by_class)
    rng = np.random.default_rng(seed)
    per_class = None if limit is None else max(1, -(-limit // len(classes)))
    arrays, labels = [], []
    for label, name in enumerate(classes):
        recs = by_class.get(name, [])
        if per_class is not None and len(recs) > per_class:
            recs = [recs[i] for i in sorted(rng.choice(len(recs), per_class, replace=False))]
        for rec in recs:
            try:
                arrays.append(image_to_uint8(decode_image(rec.data), resolution))
                labels.append(label)
            except ImageDecodeError as e:
                log.warning("skipping %s: %s", rec.name, e)
    return LabelledSet(torch.from_numpy(np.stack(arrays)), np.asarray(labels, np.int64), classes)


# -- features -----------------------------------------------------------------------------------


def _sketch(in_dim: int, dim: int, seed: int):
    from model.sketch import SparseSketch

    return None if in_dim <= dim else SparseSketch(in_dim, dim, seed)


def embed(metric: Metric, x: torch.Tensor, dim: int = 4096, seed: int = 0) -> np.ndarray:
    """N×F features of `metric` (sketched to `dim` if F > dim), float32, streamed in batches."""
    out, sketch = None, None
    i = 0
    for f in metric.iter_embed(x):
        if out is None:
            sketch = _sketch(f.shape[1], dim, seed)
            out = np.empty((x.shape[0], f.shape[1] if sketch is None else dim), np.float32)
        f = f if sketch is None else sketch(f)
        out[i : i + f.shape[0]] = f.numpy()
        i += f.shape[0]
    if out is None:
        raise ValueError(f"{metric.name}: no images to embed")
    return out


@dataclass(frozen=True)
class Variant:
    """An AFV configuration: the normalisation and the Fisher floor `FisherStats.eps_rel`."""

    normalization: str
    eps_rel: float

    @property
    def label(self) -> str:
        return f"{self.normalization}, eps_rel={self.eps_rel:g}"


def afv_variants(
    ext, x: torch.Tensor, variants: list[Variant], dim: int = 4096, seed: int = 0
) -> dict[Variant, np.ndarray]:
    """Sketched AFVs of `x` for several (normalisation, eps_rel) at the price of one gradient pass."""
    inv_std = {
        e: fisher.FisherStats(ext.stats.mean, ext.stats.var, ext.stats.n_samples, e).inv_std()
        for e in {v.eps_rel for v in variants}
    }
    sketch = _sketch(ext.dim, dim, seed)
    width = ext.dim if sketch is None else dim
    out = {v: np.empty((x.shape[0], width), np.float32) for v in variants}
    for i, grads in _grad_batches(ext, x):
        for v in variants:
            f = fisher.normalize(fisher.fisher_vectors(grads, ext.stats, inv_std[v.eps_rel]), v.normalization)
            f = f if sketch is None else sketch(f.float())
            out[v][i : i + f.shape[0]] = f.cpu().numpy()
    return out


def _grad_batches(ext, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for i in range(0, x.shape[0], ext.batch_size):
        xm = uint8_to_model(x[i : i + ext.batch_size].to(ext.device))
        yield i, fisher.per_sample_grads(ext.d, xm)


# -- probes -------------------------------------------------------------------------------------


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float, max_iter: int = 150
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS (float32, torch).

    Minimises mean cross-entropy + ‖W‖² / (2·C·n): the same optimum as scikit-learn's
    `LogisticRegression(C=c)`, with a fixed iteration budget (sklearn's solver can take minutes on
    nearly separable, wide features). Returns W (d×classes) and b (classes).
    """
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )
    reg = 1.0 / (2.0 * c * x.shape[0])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + reg * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _standardise(xtr: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    return [torch.from_numpy(((a - mu) / sd).astype(np.float32)) for a in (xtr, *others)]


def _accuracy(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, c: float, max_iter: int = MAX_ITER
) -> float:
    a, b = _standardise(xtr, xte)
    w, bias = fit_logistic(a, torch.from_numpy(ytr), int(ytr.max()) + 1, c, max_iter)
    return float(((b @ w + bias).argmax(1).numpy() == yte).mean())


def linear_probe(
    xtr: np.ndarray,
    ytr: np.ndarray,
    xte: np.ndarray,
    yte: np.ndarray,
    c_grid: tuple[float, ...] = C_GRID,
    seed: int = 0,
    max_iter: int = MAX_ITER,
) -> dict:
    """Logistic-regression test accuracy; C chosen on a seeded, stratified 10 % hold-out of train."""
    c = c_grid[0]
    if len(c_grid) > 1:
        fit_i, val_i = _holdout(ytr, seed)
        scores = {c: _accuracy(xtr[fit_i], ytr[fit_i], xtr[val_i], ytr[val_i], c, max_iter) for c in c_grid}
        c = max(scores, key=lambda k: (scores[k], -k))
    return {"accuracy": _accuracy(xtr, ytr, xte, yte, c, max_iter), "C": c}


def _holdout(y: np.ndarray, seed: int, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices: (fit, validation)."""
    rng = np.random.default_rng(seed)
    val = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[: max(1, round(frac * np.sum(y == c)))] for c in np.unique(y)]
    )
    return np.setdiff1d(np.arange(len(y)), val), np.sort(val)


def majority_vote(neighbour_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """nq×k labels (nearest first; -1 = missing) → nq predictions; ties go to the nearest tied class."""
    preds = np.empty(len(neighbour_labels), np.int64)
    for q, row in enumerate(neighbour_labels):
        row = row[row >= 0]
        counts = np.bincount(row, minlength=n_classes)
        tied = set(np.flatnonzero(counts == counts.max()))
        preds[q] = next(int(c) for c in row if c in tied) if len(row) else -1
    return preds


def knn_probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, k: int = 10) -> dict:
    """k-NN majority-vote accuracy: exact Euclidean neighbours among the training features (FAISS Flat)."""
    import faiss

    index = faiss.IndexFlatL2(xtr.shape[1])
    index.add(np.ascontiguousarray(xtr, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(xte, dtype=np.float32), k)
    labels = np.where(ids >= 0, ytr[np.clip(ids, 0, None)], -1)
    return {"accuracy": float(np.mean(majority_vote(labels, int(ytr.max()) + 1) == yte)), "k": k, "index": "Flat"}


def knn_probe_ssim(
    train: LabelledSet, test: LabelledSet, k: int = 10, max_queries: int | None = None, seed: int = 0
) -> dict:
    """k-NN majority-vote accuracy under SSIM: brute force, every query against every train image.

    SSIM has no embedding, so this costs |queries|·|train| SSIM evaluations (≈ 12k pairs/s on one
    CPU core at 32 px): `max_queries` caps the queries at a seeded class-stratified test subset.
    """
    q = np.arange(len(test.y))
    if max_queries is not None and max_queries < len(q):
        q = np.sort(_holdout(test.y, seed, max_queries / len(q))[1])
    labels = np.empty((len(q), k), np.int64)
    for i in range(0, len(q), 64):
        sim = ssim_cross(test.x[q[i : i + 64]], train.x)
        labels[i : i + 64] = train.y[sim.topk(k, dim=1).indices.numpy()]
    acc = float(np.mean(majority_vote(labels, len(train.classes)) == test.y[q]))
    return {"accuracy": acc, "k": k, "index": "brute-force SSIM", "n_queries": len(q)}


def probe_features(
    name: str,
    ftr: np.ndarray,
    fte: np.ndarray,
    train: LabelledSet,
    test: LabelledSet,
    k: int = 10,
    seed: int = 0,
    c_grid: tuple[float, ...] = C_GRID,
    max_iter: int = MAX_ITER,
) -> dict:
    """Both probes on precomputed features."""
    t0 = time.perf_counter()
    lin = linear_probe(ftr, train.y, fte, test.y, c_grid, seed, max_iter)
    row = {
        "metric": name,
        "dim": int(ftr.shape[1]),
        "linear": lin["accuracy"],
        "C": lin["C"],
        "knn": knn_probe(ftr, train.y, fte, test.y, k)["accuracy"],
    }
    row["probe_s"] = round(time.perf_counter() - t0, 1)
    log.info("%s: linear %.4f (C=%g), %d-NN %.4f", name, row["linear"], row["C"], k, row["knn"])
    return row


def run_probe(
    metric: Metric,
    train: LabelledSet,
    test: LabelledSet,
    *,
    k: int = 10,
    dim: int = 4096,
    seed: int = 0,
    variants: list[Variant] | None = None,
    ssim_queries: int | None = None,
    c_grid: tuple[float, ...] = C_GRID,
    max_iter: int = MAX_ITER,
) -> list[dict]:
    """Probe rows of one metric (one row per AFV variant for the AFV metrics)."""
    t0 = time.perf_counter()
    if metric.name == "ssim":
        res = knn_probe_ssim(train, test, k, ssim_queries, seed)
        row = {"metric": "ssim", "dim": None, "linear": None, "knn": res["accuracy"], "knn_queries": res["n_queries"]}
        return [{**row, "features_s": 0.0, "probe_s": round(time.perf_counter() - t0, 1)}]
    if metric.name in ("afv", "afv-random") and getattr(metric.extractor, "readout", "global") == "global":
        from model.extract import AFVExtractor

        ext = metric.extractor
        assert isinstance(ext, AFVExtractor)  # the afv metrics load one (model.evaluation.metrics.load_extractors)
        variants = variants or [Variant(ext.normalization, ext.stats.eps_rel)]
        vtr = afv_variants(ext, train.x, variants, dim, seed)
        vte = afv_variants(ext, test.x, variants, dim, seed)
        feat_s = round(time.perf_counter() - t0, 1)
        return [
            {
                **probe_features(metric.name, vtr[v], vte[v], train, test, k, seed, c_grid, max_iter),
                "normalization": v.normalization,
                "eps_rel": v.eps_rel,
                "features_s": feat_s,
            }
            for v in variants
        ]
    ftr, fte = embed(metric, train.x, dim, seed), embed(metric, test.x, dim, seed)
    feat_s = round(time.perf_counter() - t0, 1)
    return [{**probe_features(metric.name, ftr, fte, train, test, k, seed, c_grid, max_iter), "features_s": feat_s}]
