"""`afv distance` and `afv set-distance`: distances as JSON, clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_distance_of_an_image_to_itself_is_zero(tiny_run, cifar_dir):
    img = str(cifar_dir / "cat" / "0000.jpg")
    res = runner.invoke(app, ["distance", img, img, "--model", str(tiny_run), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["distance"] == 0.0 and "layers" in out


def test_set_distance_prints_json(tiny_run, cifar_dir):
    res = runner.invoke(
        app,
        [
            "set-distance",
            str(cifar_dir / "cat"),
            str(cifar_dir / "ship"),
            "--model",
            str(tiny_run),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["distance"] > 0 and out["n_a"] == out["n_b"] == 30


def test_a_missing_model_gives_a_clear_error_not_a_traceback(tmp_path, cifar_dir):
    img = str(cifar_dir / "cat" / "0000.jpg")
    res = runner.invoke(app, ["distance", img, img, "--model", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 1
    assert "no model.pt or last.pt" in res.output
    assert "Traceback" not in res.output


def test_a_non_image_gives_a_clear_error(tiny_run, tmp_path, cifar_dir):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = runner.invoke(
        app, ["distance", str(bad), str(cifar_dir / "cat" / "0000.jpg"), "--model", str(tiny_run), "--device", "cpu"]
    )
    assert res.exit_code == 1 and "not a readable image" in res.output
