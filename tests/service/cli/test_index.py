"""`afv index build/add/remove/stats` and `afv search --json` through typer's test runner."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

import service.cli
from service.cli import options
from service.cli.index import parse_size


@pytest.fixture
def app(monkeypatch, extractor):
    monkeypatch.setattr(options, "load_model", lambda model, device="auto", **kw: extractor)
    return service.cli.app


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
    assert len(results) == 3 and results[0]["metadata"]["path"] == images[3][0]
    assert results[0]["metadata"]["collection"] == "imgs" and str(tmp_path) not in json.dumps(results)
    assert results[0]["distance"] <= results[1]["distance"]
    assert run(app, ["index", "remove", str(results[0]["id"]), "--index", str(tmp_path / "idx")]).exit_code == 0
    assert run(app, ["index", "remove", "999", "--index", str(tmp_path / "idx")]).exit_code == 1
    stats = json.loads(run(app, ["index", "stats", "--index", str(tmp_path / "idx")]).stdout)
    assert stats["count"] == 11 and stats["dim"] == 64 and stats["kind"] == "flat"


def _flat_collection(folder, images, n: int):
    """n fixture images as 0.jpg … plus one unreadable broken.jpg, in `folder`."""
    folder.mkdir()
    for i, (_, data) in enumerate(images[:n]):
        (folder / f"{i}.jpg").write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"nope")
    return folder


def test_add_prints_ids_in_batches_and_reports_unreadable_files(tmp_path, app, images):
    src = _flat_collection(tmp_path / "imgs", images, 4)
    run = CliRunner().invoke
    assert (
        run(app, ["index", "build", str(src / "0.jpg"), "--index", str(tmp_path / "idx"), "--dim", "32"]).exit_code == 0
    )
    res = run(app, ["index", "add", str(src), "--index", str(tmp_path / "idx")])
    assert res.exit_code == 1
    lines = dict(reversed(line.split("\t")[1:]) for line in res.stdout.splitlines())
    assert lines == {"0.jpg": "duplicate", "1.jpg": "added", "2.jpg": "added", "3.jpg": "added"}
    assert "broken.jpg" in res.output and "could not be read" in res.output
    stats = json.loads(run(app, ["index", "stats", "--index", str(tmp_path / "idx")]).stdout)
    assert stats["count"] == 4


def test_add_needs_an_existing_index(tmp_path, app, images):
    (tmp_path / "a.jpg").write_bytes(images[0][1])
    res = CliRunner().invoke(app, ["index", "add", str(tmp_path / "a.jpg"), "--index", str(tmp_path / "none")])
    assert res.exit_code == 1 and "no AFV index" in res.output


def test_build_refuses_options_an_existing_index_would_ignore(tmp_path, app, images):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(images[0][1])
    run = CliRunner().invoke
    args = ["index", "build", str(tmp_path / "imgs"), "--index", str(tmp_path / "idx")]
    assert run(app, [*args, "--dim", "32"]).exit_code == 0
    res = run(app, [*args, "--dim", "64"])
    assert res.exit_code == 1 and "dim 32" in res.output
    assert run(app, [*args, "--dim", "32"]).exit_code == 0


def test_parse_size():
    assert parse_size("256MB") == 256 * 2**20 and parse_size("1GiB") == 2**30
    with pytest.raises(typer.BadParameter):
        parse_size("lots")


def test_decode_workers_default_to_a_share_of_the_cores_for_large_jobs_on_larger_machines():
    from service.cli.index import PIPELINE_MIN_IMAGES, decode_workers

    assert decode_workers(3, 10) == 3 and decode_workers(-1, None) == 0
    assert decode_workers(None, PIPELINE_MIN_IMAGES - 1, cores=16) == 0
    assert decode_workers(None, PIPELINE_MIN_IMAGES, cores=16) == 4 and decode_workers(None, None, cores=8) == 2
    assert decode_workers(None, 10**6, cores=2) == 0


def test_build_with_decode_workers_indexes_the_same_images(tmp_path, app, images):
    src = _flat_collection(tmp_path / "imgs", images, 10)
    res = CliRunner().invoke(app, ["index", "build", str(src), "--index", str(tmp_path / "idx"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "added 10, already indexed 0, unreadable 1" in res.output
