"""`afv index build/add/remove/stats` and `afv search --json` through typer's test runner."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from service.commands import index as cli


@pytest.fixture
def app(monkeypatch, extractor):
    monkeypatch.setattr(cli, "_load_model", lambda model: extractor)
    app = typer.Typer()
    app.add_typer(cli.index_app, name="index")
    app.command("search")(cli.search_command)
    return app


def test_build_resume_search_remove_stats(tmp_path, app, images):
    src = tmp_path / "imgs"
    for name, data in images[:12]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (src / "broken.jpg").write_bytes(b"nope")
    run = CliRunner().invoke
    res = run(app, ["index", "build", str(src), "--index", str(tmp_path / "idx"), "--dim", "64"])
    assert res.exit_code == 0, res.output
    assert "added 12" in res.output and "broken.jpg" in res.output
    res = run(app, ["index", "build", str(src), "--index", str(tmp_path / "idx")])
    assert "added 0, already indexed 12" in res.output
    query = src / images[3][0]
    res = run(app, ["search", str(query), "--index", str(tmp_path / "idx"), "--k", "3", "--json"])
    results = json.loads(res.stdout)["results"]
    assert len(results) == 3 and results[0]["metadata"]["path"] == str(query)
    assert results[0]["distance"] <= results[1]["distance"]
    assert run(app, ["index", "remove", str(results[0]["id"]), "--index", str(tmp_path / "idx")]).exit_code == 0
    assert run(app, ["index", "remove", "999", "--index", str(tmp_path / "idx")]).exit_code == 1
    stats = json.loads(run(app, ["index", "stats", "--index", str(tmp_path / "idx")]).stdout)
    assert stats["count"] == 11 and stats["dim"] == 64 and stats["kind"] == "flat"


def test_parse_size():
    assert cli.parse_size("256MB") == 256 * 2**20 and cli.parse_size("1GiB") == 2**30
    with pytest.raises(typer.BadParameter):
        cli.parse_size("lots")
