"""`afv index shard` and the argument checks of `afv serve --shards`, through typer's test runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from index import AFVIndex
from index.sharding import LAYOUT_FILE, shard_of
from service.cli import app

PINS = {"model_hash": "a" * 64, "stats_hash": "b" * 64, "model_name": "test", "projection": {"mode": "exact"}}


@pytest.fixture
def source(tmp_path):
    xb = np.random.default_rng(0).random((40, 16), dtype=np.float32)
    with AFVIndex.create(tmp_path / "src", dim=16, pins=PINS) as idx:
        ids = [r.id for r in idx.add_embedded(xb, [{"sha256": f"{i:064x}"} for i in range(40)])]
    return tmp_path / "src", ids


def test_shard_writes_servable_shards_and_lists_them(source, tmp_path):
    src, ids = source
    res = CliRunner().invoke(app, ["index", "shard", str(src), "--shards", "3", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    layout = json.loads((tmp_path / "out" / LAYOUT_FILE).read_text())
    assert [s["name"] for s in layout["shards"]] == ["shard-000", "shard-001", "shard-002"] and layout["count"] == 40
    for k, entry in enumerate(layout["shards"]):
        assert f"shard-{k:03d}\t{entry['count']} images" in res.stdout
        with AFVIndex.open(tmp_path / "out" / entry["name"], read_only=True) as shard:
            held = [r.id for batch, _ in shard.iter_items() for r in batch]
            assert held == [i for i in ids if shard_of([i], 3)[0] == k]
    assert "afv serve --shards" in res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--shards", "0"], "at least 1"),
        (["--shards", "2", "--out", "{tmp}/full"], "not empty"),
        (["--shards", "2", "--out", "{src}/inside"], "inside the index"),
    ],
)
def test_shard_refuses_bad_input_with_one_line(source, tmp_path, args, message):
    src, _ = source
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    args = [a.format(tmp=tmp_path, src=src) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    res = CliRunner().invoke(app, ["index", "shard", str(src), *args])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert (tmp_path / "full" / "keep").read_text() == "x"


def test_shard_of_a_missing_index_fails_cleanly(tmp_path):
    res = CliRunner().invoke(
        app, ["index", "shard", str(tmp_path / "none"), "--shards", "2", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1 and "no AFV index" in res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--shards", "http://a:1,http://b:1", "--index", "x"], "--index"),
        (["--shards", "http://a:1", "--read-only"], "--read-only"),
        (["--shards", "a:1,b:1"], "not an http(s) URL"),
        (["--shards", "http://a:1,http://a:1"], "listed twice"),
        (["--shards", " , "], "at least one shard URL"),
    ],
)
def test_serve_shards_refuses_what_a_router_cannot_use(args, message):
    res = CliRunner().invoke(app, ["serve", *args])
    assert res.exit_code == 1 and message in res.output, res.output
