"""`afv eval` end to end on the tiny preset and the committed fixtures."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from service.commands.eval import eval_app

runner = CliRunner()
app = typer.Typer()
app.add_typer(eval_app, name="eval")


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_2afc_reports_each_dir_and_the_mean(tiny_run, bapps_dir):
    d = str(bapps_dir / "2afc")
    out = _json(runner.invoke(app, ["eval", "2afc", d, d, "--model", str(tiny_run), "--device", "cpu",
                                    "--metric", "afv", "--metric", "l2", "--json"]))
    assert [r["metric"] for r in out["results"]] == ["afv", "afv", "l2", "l2"]
    assert set(out["mean"]) == {"afv", "l2"} and out["mean"]["l2"] > 0.9
    assert all(0 <= r["score"] <= 1 and r["n"] == 30 for r in out["results"])


def test_jnd_prints_a_table_for_all_metrics(tiny_run, bapps_dir):
    res = runner.invoke(app, ["eval", "jnd", str(bapps_dir / "jnd"), "--model", str(tiny_run), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for name in ("afv", "l2", "ssim", "dpool", "afv-random"):
        assert name in res.stdout


def test_probe_runs_every_metric(tiny_run, cifar_dir, tmp_path):
    out = _json(runner.invoke(app, [
        "eval", "probe", "--data", str(cifar_dir.parent), "--train-split", "cifar10", "--test-split", "cifar10",
        "--train-limit", "40", "--test-limit", "20", "--model", str(tiny_run), "--device", "cpu",
        "--dim", "512", "--C", "0.1", "--normalization", "none", "--normalization", "l2",
        "--out", str(tmp_path / "p.json"),
        "--json"]))
    rows = {(r["metric"], r.get("normalization")): r for r in out["rows"]}
    assert set(rows) == {("afv", "none"), ("afv", "l2"), ("l2", None), ("ssim", None), ("dpool", None),
                         ("afv-random", "none"), ("afv-random", "l2")}
    assert rows[("ssim", None)]["linear"] is None and rows[("afv", "l2")]["dim"] == 512
    assert all(0 <= r["knn"] <= 1 for r in out["rows"]) and (tmp_path / "p.json").is_file()


def test_class_distances_writes_csv_and_png(tiny_run, cifar_dir, tmp_path):
    out = _json(runner.invoke(app, ["eval", "class-distances", "--data", str(cifar_dir.parent),
                                    "--split", "cifar10", "--limit", "40", "--model", str(tiny_run),
                                    "--device", "cpu", "--out", str(tmp_path / "m"), "--json"]))
    assert len(out["classes"]) == 10 and (tmp_path / "m.csv").is_file() and (tmp_path / "m.png").is_file()


def test_bad_layout_and_unknown_metric_are_clear_errors(bapps_dir):
    res = runner.invoke(app, ["eval", "2afc", str(bapps_dir / "jnd"), "--metric", "l2"])
    assert res.exit_code == 2 and "missing folder" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["eval", "jnd", str(bapps_dir / "jnd"), "--metric", "lpips"])
    assert res.exit_code == 2 and "unknown metric" in res.output
