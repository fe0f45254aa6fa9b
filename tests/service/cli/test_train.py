"""`afv export` (train, sample and reconstruct per method: tests/test_methods.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_export_writes_a_small_loadable_model_folder(tiny_run, tmp_path, cifar_dir):
    out = tmp_path / "exported"
    res = runner.invoke(app, ["export", "--model", str(tiny_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {"model.pt", "fisher.pt", "metrics.csv", "samples.png"} <= {p.name for p in out.iterdir()}
    img = str(cifar_dir / "cat" / "0000.jpg")
    other = str(cifar_dir / "dog" / "0000.jpg")
    runs = [
        runner.invoke(app, ["distance", img, other, "--model", str(m), "--device", "cpu", "--json"])
        for m in (tiny_run, out)
    ]
    a, b = (json.loads(r.stdout.strip().splitlines()[-1])["distance"] for r in runs)
    assert a == b > 0


def test_export_ships_the_read_out_statistics_cached_for_the_weights(tiny_run, tmp_path):
    from model.loading import load_embedder

    load_embedder(tiny_run, device="cpu", readout="pyramid-1-4")  # estimated into the cache, not the run
    assert not (tiny_run / "fisher-pyramid-1-4.pt").exists()
    out = tmp_path / "exported"
    res = runner.invoke(app, ["export", "--model", str(tiny_run), "--out", str(out), "--readout", "pyramid-1-4"])
    assert res.exit_code == 0, res.output
    assert (out / "fisher-pyramid-1-4.pt").is_file()
