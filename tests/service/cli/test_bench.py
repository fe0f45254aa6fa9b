"""`afv bench extract|sketch`: timings of the extraction methods and of the projections against exact AFVs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def _extract_row(*extra: str) -> dict:
    """`afv bench extract` of the tiny preset, small and fast, as JSON: its one row."""
    base = ["bench", "extract", "--preset", "tiny", "--batch-size", "4", "--loop-images", "4", "--repeats", "1"]
    res = runner.invoke(app, [*base, "--device", "cpu", "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("[") :])[0]


def test_bench_extract_reports_the_loop_ours_split_and_whole_and_the_floor():
    row = _extract_row()
    rates = ("loop_img_s", "ours_img_s", "ours_one_pass_img_s", "floor_img_s", "floor_split_img_s")
    assert all(row[k] > 0 for k in rates)


def _sketch(*extra: str):
    fixtures = Path(__file__).resolve().parents[2] / "fixtures" / "cifar10"
    base = ["bench", "sketch", "--images", str(fixtures), "-n", "12", "--repeats", "1", "--device", "cpu"]
    return runner.invoke(app, [*base, *extra])


def test_bench_sketch_compares_each_projection_with_exact_afvs():
    res = _sketch("--preset", "tiny", "--stats-samples", "16", "--normalization", "none", "--dim", "256",
                  "--mode", "exact", "--mode", "sampled", "--samples", "800", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout[res.stdout.index("{") :])
    assert r["n_images"] == 12 and r["floor_img_s"] > 0 and r["exact_afv_img_s"] > 0
    assert set(r["configs"]) == {"exact", "sampled 800"}
    for c in r["configs"].values():
        assert c["img_s"] > 0 and 0.5 < c["ratio_mean"] < 1.5 and c["pearson"] > 0.5


def test_bench_sketch_names_projections_a_model_cannot_use():
    res = _sketch(
        "--preset", "tiny", "--stats-samples", "16", "--readout", "pyramid-2", "--mode", "fast", "--mode", "exact"
    )
    assert res.exit_code == 0, res.output
    assert "fast" in res.stdout and "n/a" in res.stdout and "pyramid-2" in res.stdout


def test_bench_sketch_refuses_model_and_preset_together(tmp_path):
    res = _sketch("--preset", "tiny", "--model", str(tmp_path))
    assert res.exit_code == 1 and "not both" in res.output


def test_bench_extract_in_bf16_reports_the_fp32_loop_and_floor_beside():
    row = _extract_row("--precision", "bf16")
    assert row["precision"] == "bf16"
    assert row["loop_fp32_img_s"] > 0 and row["floor_fp32_img_s"] > 0
    assert row["speedup_vs_fp32_loop"] == pytest.approx(row["ours_img_s"] / row["loop_fp32_img_s"])


def test_bench_sketch_in_bf16_measures_errors_against_fp32_exact_afvs():
    res = _sketch("--preset", "tiny", "--stats-samples", "16", "--dim", "256", "--mode", "exact",
                  "--precision", "bf16", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout[res.stdout.index("{") :])
    assert r["precision"] == "bf16" and r["floor_fp32_img_s"] > 0 and r["exact_afv_fp32_img_s"] > 0
    exact = r["configs"]["exact"]
    assert 0 < exact["rel_error_mean"] < 0.25 and exact["pearson"] > 0.9  # the sketch, in bf16, against fp32


def test_bench_commands_refuse_an_unknown_precision():
    res = runner.invoke(app, ["bench", "extract", "--preset", "tiny", "--precision", "bf32"])
    assert res.exit_code == 1 and "unknown precision 'bf32'" in res.output
    res = _sketch("--preset", "tiny", "--stats-samples", "16", "--precision", "fp8")
    assert res.exit_code == 1 and "unknown precision 'fp8'" in res.output


def test_bench_extract_in_mixed_precision_times_only_ours_differently():
    row = _extract_row("--precision", "mixed")
    assert row["precision"] == "mixed" and row["ours_img_s"] > 0
    assert "loop_fp32_img_s" not in row  # the loop and floor have no per-sample products: fp32 already
