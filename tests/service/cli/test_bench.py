"""`afv bench extract`: timings of the three extraction methods."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_bench_extract_reports_all_three_methods(tmp_path):
    res = runner.invoke(
        app,
        [
            "bench",
            "extract",
            "--preset",
            "tiny",
            "--batch-size",
            "4",
            "--loop-images",
            "4",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout[res.stdout.index("[") :])[0]
    assert row["loop_img_s"] > 0 and row["ours_img_s"] > 0 and row["floor_img_s"] > 0
