"""Probes and set distances on seeded data: vote rules, exact references, stratified loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.evaluation import probe, setdist


def test_majority_vote_breaks_ties_by_the_nearest_tied_class():
    labels = np.array([[2, 1, 1, 2, 0], [3, 3, 0, 0, 0], [-1, -1, 4, -1, -1]])
    assert probe.majority_vote(labels, 5).tolist() == [2, 0, 4]


def test_knn_probe_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    ytr, yte = rng.integers(0, 3, 200), rng.integers(0, 3, 50)
    d = ((xte[:, None] - xtr[None]) ** 2).sum(-1)
    ref = probe.majority_vote(ytr[np.argsort(d, axis=1, kind="stable")[:, :5]], 3)
    assert probe.knn_probe(xtr, ytr, xte, yte, k=5)["accuracy"] == pytest.approx(np.mean(ref == yte))


def test_linear_probe_separates_separable_classes_and_fails_on_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    centers = rng.normal(size=(4, 16)) * 3
    x = (rng.normal(size=(400, 16)) + centers[y]).astype(np.float32)
    assert probe.linear_probe(x[:300], y[:300], x[300:], y[300:])["accuracy"] > 0.95
    noise = rng.normal(size=(400, 16)).astype(np.float32)
    assert probe.linear_probe(noise[:300], y[:300], noise[300:], y[300:])["accuracy"] < 0.45


def test_fit_logistic_reaches_sklearns_optimum():
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    x = (rng.normal(size=(120, 5)) + np.eye(3, 5)[y]).astype(np.float32)
    w, b = probe.fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, c=0.5)
    ref = LogisticRegression(C=0.5, tol=1e-8, max_iter=2000).fit(x, y)
    ours = torch.softmax(torch.from_numpy(x) @ w + b, 1).numpy()
    assert np.allclose(ours, ref.predict_proba(x), atol=2e-3)


def test_load_labelled_takes_a_stratified_subset(cifar_dir):
    data = probe.load_labelled(cifar_dir.parent, "cifar10", 32, limit=50, seed=0)
    assert len(data.classes) == 10 and np.bincount(data.y).tolist() == [5] * 10
    again = probe.load_labelled(cifar_dir.parent, "cifar10", 32, limit=50, seed=0)
    assert torch.equal(data.x, again.x)


def test_afv_variants_match_the_extractor(tiny_run, cifar_images):
    from model.loading import load_embedder

    ext = load_embedder(tiny_run, device="cpu", normalization="l2")
    x = cifar_images[:5]
    vs = [probe.Variant("l2", ext.stats.eps_rel), probe.Variant("none", 1e-1)]
    out = probe.afv_variants(ext, x, vs, dim=10**9)
    assert np.allclose(out[vs[0]], ext.afv(x).numpy(), atol=1e-5)
    assert not np.allclose(out[vs[1]], load_embedder(tiny_run, device="cpu").afv(x).numpy())


def test_class_distance_matrix_is_symmetric_with_zero_diagonal(tiny_run, cifar_images, tmp_path):
    from model.loading import load_embedder

    ext = load_embedder(tiny_run, device="cpu")
    names, d = setdist.distance_matrix(
        setdist.class_means(ext, {"a": cifar_images[:8], "b": cifar_images[30:38], "c": cifar_images[60:68]})
    )
    assert names == ["a", "b", "c"] and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    assert d[0, 1] == pytest.approx(ext.set_distance(cifar_images[:8], cifar_images[30:38]), rel=1e-5)
    setdist.write_csv(tmp_path / "m.csv", names, d)
    setdist.write_heatmap(tmp_path / "m.png", names, d, "t")
    assert (tmp_path / "m.csv").read_text().startswith("class,a,b,c") and (tmp_path / "m.png").stat().st_size > 0
