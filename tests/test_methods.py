"""Every training method's checkpoint loads through the one embedder interface: CLI, index, service, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model.checkpoint import read_checkpoint
from model.evaluation.metrics import get_metric
from model.loading import load_embedder
from service.cli import app
from service.model_index import BuildOptions, ModelIndex
from tests.service.conftest import API_KEY, png, start_server, stop_server, test_settings

METHODS = ["afv", "bigan", "bigbigan", "gfmn"]
KIND = {"afv": "afv", "bigan": "bigan", "bigbigan": "bigbigan", "gfmn": "afv"}  # gfmn on AFV features → AFVs


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_a_checkpoint_the_embedder_loads(method_runs, cifar_images, method):
    run = method_runs[method]
    assert read_checkpoint(run / "model.pt").get("method", "afv") == method
    emb = load_embedder(run, device="cpu")
    assert emb.kind == KIND[method]
    v = emb.embed(cifar_images[:6])
    assert v.shape == (6, emb.dim) and torch.isfinite(v).all()
    assert emb.distance(cifar_images[0], cifar_images[0]).distance == pytest.approx(0.0, abs=1e-6)
    assert emb.distance(cifar_images[0], cifar_images[1]).distance > 0


def test_gfmn_run_on_afv_features_gives_afvs_with_its_own_fisher_statistics(method_runs):
    ebm, gfmn = load_embedder(method_runs["afv"], device="cpu"), load_embedder(method_runs["gfmn"], device="cpu")
    assert gfmn.model_hash == ebm.model_hash  # the same discriminator …
    assert gfmn.stats_hash != ebm.stats_hash  # … with Fisher information from the GFMN sampler
    assert (method_runs["gfmn"] / "fisher.pt").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_builds_an_index_that_finds_its_own_images(method_runs, cifar_images, tmp_path, method):
    emb = load_embedder(method_runs[method], device="cpu")
    with ModelIndex.create(tmp_path / "idx", emb, BuildOptions(dim=64)) as mi:
        x = cifar_images[::25][:12]
        added = mi.index.add_embedded(
            mi.sketch(x), [{"name": f"img{i}", "sha256": f"{i:064x}", "size": 1} for i in range(len(x))]
        )
        hits = mi.index.search(mi.sketch(x), k=1)
        assert [h[0].id for h in hits] == [a.id for a in added]
        assert all(h[0].distance == pytest.approx(0.0, abs=1e-3) for h in hits)
        assert mi.index.stats()["count"] == len(x)


def test_small_embeddings_are_indexed_without_projection(method_runs, tmp_path):
    emb = load_embedder(method_runs["bigan"], device="cpu")
    with ModelIndex.create(tmp_path / "idx", emb, BuildOptions(dim=1024)) as mi:
        assert mi.index.dim == emb.dim == 32 and mi.projector.mode == "identity"


@pytest.mark.parametrize("method", ["bigan", "gfmn"])
def test_service_serves_each_method_without_special_cases(method_runs, tmp_path, method):
    settings = test_settings(tmp_path, model=method_runs[method])
    server, thread, url = start_server(settings)
    try:
        import httpx

        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            ready = c.get("/readyz").json()
            assert ready["method"] == KIND[method] and ready["dim"] > 0
            d = c.post("/v1/distance", files={"image_a": ("a.png", png(0)), "image_b": ("b.png", png(1))}).json()
            assert d["distance"] > 0 and sum(d["layers"].values()) == pytest.approx(1.0)
            ids = [c.post("/v1/images", files={"image": (f"{i}.png", png(i))}).json()["id"] for i in range(4)]
            hits = c.post("/v1/search", files={"image": png(2)}, data={"k": "2"}).json()["results"]
            assert hits[0]["id"] == ids[2]
    finally:
        stop_server(server, thread)
    index_dir = settings.resolved_index_dir  # one index per served model (and read-out)
    assert index_dir.is_dir() and index_dir.name == f"index-{method_runs[method].name}-global"


def test_http_set_distance_is_the_embedders_own_for_gfmn_moments(tiny_run, tmp_path):
    """The route takes set distances from the embedder: for moments that includes the variance term."""
    import httpx

    from model.data import decode_image

    emb = load_embedder(tiny_run, device="cpu", embedding="moments")
    a, b = [png(i) for i in range(3)], [png(i) for i in range(3, 7)]
    xa, xb = (torch.from_numpy(np.stack([emb.preprocess(decode_image(p)) for p in ps])) for ps in (a, b))
    server, thread, url = start_server(test_settings(tmp_path, model=tiny_run, embedding="moments", readout=None))
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            files = [("images_a", p) for p in a] + [("images_b", p) for p in b]
            got = c.post("/v1/set-distance", files=files).json()
    finally:
        stop_server(server, thread)
    assert got["n_a"] == 3 and got["n_b"] == 4
    assert got["distance"] == pytest.approx(emb.set_distance(xa, xb), rel=1e-4)


@pytest.mark.parametrize(
    "metric,method", [("bigan", "bigan"), ("bigbigan", "bigbigan"), ("gfmn-moments", "afv"), ("gfmn-moments", "bigan")]
)
def test_eval_metrics_for_the_other_representations(method_runs, cifar_images, metric, method):
    m = get_metric(metric, method_runs[method], device="cpu")
    d = m.distance(cifar_images[:4], cifar_images[4:8])
    assert d.shape == (4,) and (d > 0).all()
    assert np.allclose(m.distance(cifar_images[:4], cifar_images[:4]), 0.0, atol=1e-5)
    assert next(m.iter_embed(cifar_images[:3])).shape[0] == 3


def test_metric_on_the_wrong_kind_of_model_says_which_to_use(method_runs):
    with pytest.raises(ValueError, match="--metric bigan"):
        get_metric("afv", method_runs["bigan"], device="cpu")
    with pytest.raises(ValueError, match="needs --model"):
        get_metric("bigbigan", None, device="cpu")


def test_cli_distance_and_moment_set_distance_on_each_method(method_runs, cifar_dir):
    runner = CliRunner()
    a, b = cifar_dir / "cat" / "0000.jpg", cifar_dir / "dog" / "0000.jpg"
    r = runner.invoke(
        app, ["distance", str(a), str(b), "--model", str(method_runs["bigbigan"]), "--embedding", "z+hidden", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["method"] == "bigbigan" and set(out["layers"]) == {"z", "hidden"}
    r = runner.invoke(
        app,
        [
            "set-distance",
            str(cifar_dir / "cat"),
            str(cifar_dir / "dog"),
            "--model",
            str(method_runs["gfmn"]),
            "--metric",
            "gfmn-moments",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["distance"] > 0
    r = runner.invoke(app, ["distance", str(a), str(b), "--model", str(method_runs["afv"]), "--embedding", "z"])
    assert r.exit_code == 1 and "--embedding applies to bigan/bigbigan" in r.output


def test_cli_sample_writes_a_truncated_grid(method_runs, tmp_path):
    out = tmp_path / "grid.png"
    r = CliRunner().invoke(
        app, ["sample", "--model", str(method_runs["bigbigan"]), "--out", str(out), "--n", "8", "--truncation", "0.5"]
    )
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 0
    folder = tmp_path / "samples"
    r = CliRunner().invoke(app, ["sample", "--model", str(method_runs["gfmn"]), "--out", str(folder), "--n", "5"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in folder.iterdir()) == [f"sample_{i:05d}.png" for i in range(5)]


def test_resuming_a_run_with_another_method_is_refused(method_runs, cifar_dir):
    from model.train import TrainConfig, train

    cfg = TrainConfig(
        data=str(cifar_dir), out=str(method_runs["bigan"]), preset="tiny", method="bigbigan", steps=30, device="cpu"
    )
    with pytest.raises(ValueError, match="'bigan' run"):
        train(cfg, progress=False)


def test_eval_2afc_scores_each_encoder_output_on_the_fixture(method_runs):
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "bapps" / "2afc"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "2afc",
            str(fixture),
            "--metric",
            "bigbigan",
            "--embedding",
            "z",
            "--embedding",
            "hidden",
            "--model",
            str(method_runs["bigbigan"]),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["results"]
    names = {row["metric"] for row in rows}
    assert names == {"bigbigan", "bigbigan:hidden"}
    assert all(0.0 <= row["score"] <= 1.0 for row in rows)


@pytest.mark.parametrize("method", ["bigan", "gfmn"])
def test_export_keeps_what_each_method_needs(method_runs, cifar_images, tmp_path, method):
    out = tmp_path / f"{method}-export"
    r = CliRunner().invoke(app, ["export", "--model", str(method_runs[method]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    a, b = load_embedder(method_runs[method], device="cpu"), load_embedder(out, device="cpu")
    assert (a.kind, a.model_hash, a.stats_hash) == (b.kind, b.model_hash, b.stats_hash)
    assert torch.allclose(a.embed(cifar_images[:3]), b.embed(cifar_images[:3]))


def test_cli_reconstruct_draws_images_over_their_reconstructions(method_runs, cifar_dir, tmp_path):
    out = tmp_path / "rec.png"
    r = CliRunner().invoke(
        app,
        ["reconstruct", str(cifar_dir / "cat"), "--model", str(method_runs["bigan"]), "--out", str(out), "--n", "8"],
    )
    assert r.exit_code == 0, r.output
    assert "mean squared error" in r.output and out.stat().st_size > 0
    r = CliRunner().invoke(app, ["reconstruct", str(cifar_dir / "cat"), "--model", str(method_runs["afv"])])
    assert r.exit_code == 1 and "only bigan/bigbigan runs have an encoder" in r.output
