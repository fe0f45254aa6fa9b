"""`afv eval` end to end on the tiny preset and the committed fixtures."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_2afc_reports_each_dir_and_the_mean(tiny_run, bapps_dir):
    d = str(bapps_dir / "2afc")
    out = _json(
        runner.invoke(
            app,
            [
                "eval",
                "2afc",
                d,
                d,
                "--model",
                str(tiny_run),
                "--device",
                "cpu",
                "--metric",
                "afv",
                "--metric",
                "l2",
                "--json",
            ],
        )
    )
    assert [r["metric"] for r in out["results"]] == ["afv", "afv", "l2", "l2"]
    assert set(out["mean"]) == {"afv", "l2"} and out["mean"]["l2"] > 0.9
    assert all(0 <= r["score"] <= 1 and r["n"] == 30 for r in out["results"])


def test_jnd_prints_a_table_for_all_metrics(tiny_run, bapps_dir):
    res = runner.invoke(app, ["eval", "jnd", str(bapps_dir / "jnd"), "--model", str(tiny_run), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for name in ("afv", "l2", "ssim", "phash", "dpool", "afv-random"):
        assert name in res.stdout


def test_probe_runs_every_metric(tiny_run, cifar_dir, tmp_path):
    out = _json(
        runner.invoke(
            app,
            [
                "eval",
                "probe",
                "--data",
                str(cifar_dir.parent),
                "--train-split",
                "cifar10",
                "--test-split",
                "cifar10",
                "--train-limit",
                "40",
                "--test-limit",
                "20",
                "--model",
                str(tiny_run),
                "--device",
                "cpu",
                "--dim",
                "512",
                "--C",
                "0.1",
                "--normalization",
                "none",
                "--normalization",
                "l2",
                "--out",
                str(tmp_path / "p.json"),
                "--json",
            ],
        )
    )
    rows = {(r["metric"], r.get("normalization")): r for r in out["rows"]}
    assert set(rows) == {
        ("afv", "none"),
        ("afv", "l2"),
        ("l2", None),
        ("ssim", None),
        ("phash", None),
        ("dpool", None),
        ("afv-random", "none"),
        ("afv-random", "l2"),
    }
    assert rows[("phash", None)]["dim"] == 64
    assert rows[("ssim", None)]["linear"] is None and rows[("afv", "l2")]["dim"] == 512
    assert all(0 <= r["knn"] <= 1 for r in out["rows"]) and (tmp_path / "p.json").is_file()


def test_class_distances_writes_csv_and_png(tiny_run, cifar_dir, tmp_path):
    out = _json(
        runner.invoke(
            app,
            [
                "eval",
                "class-distances",
                "--data",
                str(cifar_dir.parent),
                "--split",
                "cifar10",
                "--limit",
                "40",
                "--model",
                str(tiny_run),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "m"),
                "--json",
            ],
        )
    )
    assert len(out["classes"]) == 10 and (tmp_path / "m.csv").is_file() and (tmp_path / "m.png").is_file()


def test_bad_layout_and_unknown_metric_are_clear_errors(bapps_dir):
    res = runner.invoke(app, ["eval", "2afc", str(bapps_dir / "jnd"), "--metric", "l2"])
    assert res.exit_code == 1 and "missing folder" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["eval", "jnd", str(bapps_dir / "jnd"), "--metric", "lpips"])
    assert res.exit_code == 1 and "unknown metric" in res.output


def _val_split(cifar_dir, root, per_class: int = 3):
    """A separate test archive layout: ROOT/val/<class>/* (as Tiny ImageNet's val archive)."""
    for d in sorted(p for p in cifar_dir.iterdir() if p.is_dir()):
        (root / "val" / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[-per_class:]:
            (root / "val" / d.name / f.name).write_bytes(f.read_bytes())
    return root


def test_probe_reads_the_test_split_from_test_data(cifar_dir, tmp_path):
    val = _val_split(cifar_dir, tmp_path / "valdata")
    out = _json(
        runner.invoke(
            app,
            [
                "eval",
                "probe",
                "--data",
                str(cifar_dir.parent),
                "--train-split",
                "cifar10",
                "--test-data",
                str(val),
                "--test-split",
                "val",
                "--train-limit",
                "40",
                "--metric",
                "l2",
                "--C",
                "0.1",
                "--json",
            ],
        )
    )
    assert out["n_test"] == 30 and out["test_data"] == str(val) and out["rows"][0]["metric"] == "l2"


def test_copies_prints_json_per_edit_and_a_table(cifar_dir, tmp_path):
    args = [
        "eval",
        "copies",
        str(cifar_dir),
        "--metric",
        "l2",
        "--metric",
        "phash",
        "--metric",
        "ssim",
        "--edit",
        "jpeg-q40",
        "--edit",
        "hflip",
        "--queries",
        "12",
        "--ssim-queries",
        "4",
        "--limit",
        "60",
    ]
    out = _json(
        runner.invoke(app, [*args, "--json", "--out", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")])
    )
    assert {"n_collection", "n_queries", "pixel_size", "rows"} <= set(out) and out["n_collection"] == 60
    assert [r["metric"] for r in out["rows"]] == ["l2", "phash", "ssim"] and out["pixel_size"] == 32
    for r in out["rows"]:
        assert set(r["edits"]) == {"jpeg-q40", "hflip"} and set(r["mean"]) == {"recall@1", "recall@10"}
    assert out["rows"][0]["edits"]["jpeg-q40"]["recall@1"] > 0.9 and out["rows"][2]["n_queries"] == 4
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == out["rows"] and (tmp_path / "c.png").is_file()
    res = runner.invoke(app, args[:-2])
    assert res.exit_code == 0 and "recall@10" in res.stdout and "brute force on 4 queries" in res.stdout


def test_ranking_prints_json_per_family_and_pair(cifar_dir, tmp_path):
    out = _json(
        runner.invoke(
            app,
            [
                "eval",
                "ranking",
                str(cifar_dir),
                "--metric",
                "l2",
                "--family",
                "noise",
                "--family",
                "jpeg",
                "--images",
                "10",
                "--json",
                "--plot",
                str(tmp_path / "r.png"),
            ],
        )
    )
    fam = out["rows"][0]["families"]
    assert set(fam) == {"noise", "jpeg"} and fam["noise"]["mean"] == 1.0 and len(fam["jpeg"]["pairs"]) == 6
    assert {"weak", "strong", "fraction"} == set(fam["noise"]["pairs"][0]) and (tmp_path / "r.png").is_file()


def test_unknown_edit_and_family_list_the_choices(cifar_dir):
    res = runner.invoke(app, ["eval", "copies", str(cifar_dir), "--metric", "l2", "--edit", "sepia"])
    assert res.exit_code == 1 and "unknown edit 'sepia'" in res.output and "jpeg-q40" in res.output
    res = runner.invoke(app, ["eval", "ranking", str(cifar_dir), "--metric", "l2", "--family", "sepia"])
    assert res.exit_code == 1 and "unknown edit family 'sepia'" in res.output and "noise" in res.output


def test_copies_and_ranking_run_the_afv_metric_sketched(tiny_run, cifar_dir):
    model = ["--model", str(tiny_run), "--device", "cpu", "--metric", "afv"]
    out = _json(
        runner.invoke(
            app,
            [
                "eval",
                "copies",
                str(cifar_dir),
                *model,
                "--edit",
                "jpeg-q40",
                "--queries",
                "6",
                "--limit",
                "30",
                "--dim",
                "256",
                "--json",
            ],
        )
    )
    row = out["rows"][0]
    assert row["metric"] == "afv" and row["dim"] == 256 and row["resolution"] == 32
    assert 0 <= row["edits"]["jpeg-q40"]["recall@1"] <= 1
    out = _json(
        runner.invoke(app, ["eval", "ranking", str(cifar_dir), *model, "--family", "noise", "--images", "6", "--json"])
    )
    assert 0 <= out["rows"][0]["families"]["noise"]["mean"] <= 1


def test_the_table_names_read_outs_that_differ_only_at_their_ends_in_full(tiny_run, cifar_dir):
    args = ["eval", "copies", str(cifar_dir), "--model", str(tiny_run), "--device", "cpu", "--metric", "afv"]
    args += ["--readout", "pyramid-2:power", "--readout", "pyramid-2+grey:power", "--edit", "grayscale"]
    res = runner.invoke(app, [*args, "--queries", "4", "--limit", "20", "--dim", "64"])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.output.splitlines() if "afv:" in line)
    assert header.split() == ["afv:pyramid-2:power", "afv:pyramid-2+grey:power"]


def test_readout_variants_are_scored_side_by_side(tiny_run, bapps_dir):
    d = str(bapps_dir / "2afc")
    out = _json(
        runner.invoke(
            app,
            [
                "eval",
                "2afc",
                d,
                "--model",
                str(tiny_run),
                "--device",
                "cpu",
                "--metric",
                "afv",
                "--readout",
                "global",
                "--readout",
                "pyramid-1-2:power",
                "--json",
            ],
        )
    )
    assert [r["metric"] for r in out["results"]] == ["afv:global", "afv:pyramid-1-2:power"]
    assert all(0.5 < r["score"] <= 1 and r["n"] == 30 for r in out["results"])  # weak vs strong: above chance


def test_a_bad_readout_is_a_clear_error(tiny_run, bapps_dir):
    for spec, message in (("pyramid-3", "powers of two"), ("global:sqrt", "unknown normalization")):
        res = runner.invoke(
            app,
            [
                "eval",
                "2afc",
                str(bapps_dir / "2afc"),
                "--model",
                str(tiny_run),
                "--device",
                "cpu",
                "--metric",
                "afv",
                "--readout",
                spec,
            ],
        )
        assert res.exit_code == 1 and message in res.output, res.output
