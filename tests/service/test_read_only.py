"""Serving an index read-only (#13 item 3): `afv serve --read-only` / AFV_READ_ONLY.

The index is built beforehand, its folder made read-only (0o555, files 0o444). Tests run as root in CI,
where mode bits do not stop writes, so the read-only file system is also simulated: taking the LOCK
file raises EROFS, as it does on a read-only mount. A writable start on such a folder fails with one
line that suggests --read-only.
"""

from __future__ import annotations

import base64
import errno
import os
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import index.collection as collection
import service.engine as engine_module
from service.app import create_app
from service.cli import app as cli
from service.engine import Resources, StartupError, index_dir_problem
from tests.service.conftest import API_KEY, fake_app, png, test_settings
from tests.service.fakes import FakeEmbedder

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _read_only_fs(index_dir: Path):
    raise OSError(errno.EROFS, "Read-only file system", str(index_dir / collection.LOCK_FILE))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[str]]:
    """An index of 3 images, closed, in a folder made read-only (without its LOCK file)."""
    data = tmp_path_factory.mktemp("afv-ro")
    client, _ = fake_app(data)
    with client as c:
        ids = [c.post("/v1/images", files={"image": png(i)}, headers=AUTH).json()["id"] for i in range(3)]
    folder = data / "index-fake"
    (folder / collection.LOCK_FILE).unlink()
    for f in folder.iterdir():
        f.chmod(0o444)
    folder.chmod(0o555)
    return folder, ids


@pytest.fixture
def read_only_client(built, tmp_path, monkeypatch):
    """The app started through `Resources.load` with read_only=True (the fake embedder stands in for the model)."""
    folder, _ = built
    monkeypatch.setattr(engine_module, "load_embedder", lambda *a, **kw: FakeEmbedder())
    monkeypatch.setattr(collection, "_lock", _read_only_fs)  # a read-only open must not take the lock
    settings = test_settings(tmp_path, index_dir=folder, read_only=True)
    with TestClient(create_app(settings)) as c:
        yield c


def test_reads_and_search_work_and_writes_answer_403(built, read_only_client):
    folder, ids = built
    before = _snapshot(folder)
    c = read_only_client
    ready = c.get("/readyz").json()
    assert ready["ready"] and ready["read_only"] is True and ready["writable"] is False
    assert c.get("/readyz", params={"writes": "true"}).json()["error"]["code"] == "read_only"
    assert all(c.get(f"/v1/images/{i}").status_code == 200 for i in ids)
    hits = c.post("/v1/search", files={"image": png(1)}, data={"k": "1"})
    assert hits.status_code == 200 and hits.json()["results"][0]["id"] == ids[1], hits.text
    stats = c.get("/v1/index/stats").json()
    assert stats["read_only"] is True and stats["mmapped"] is True and stats["count"] == 3

    image = base64.b64encode(png(7)).decode()
    pairs = [{"distance": 0.1, "same": 1}, {"distance": 2.0, "same": 0}]
    writes = [
        c.post("/v1/images", files={"image": png(7)}, headers=AUTH),
        c.post("/v1/images", files={"image": png(0)}, headers=AUTH),  # already indexed: still refused
        c.post("/v1/images:batch", json={"images": [image]}, headers=AUTH),
        c.delete(f"/v1/images/{ids[0]}", headers=AUTH),
        c.post("/v1/jnd/calibrate", json={"pairs": pairs, "save": True}, headers=AUTH),
    ]
    for r in writes:
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "read_only" and "read-only" in r.json()["error"]["message"]
    assert c.post("/v1/images", files={"image": png(7)}).status_code == 401  # the key is checked first
    assert c.post("/v1/jnd/calibrate", json={"pairs": pairs, "save": False}, headers=AUTH).status_code == 200
    assert c.get(f"/v1/images/{ids[0]}").status_code == 200
    assert not (folder / collection.LOCK_FILE).exists()
    assert _snapshot(folder) == before  # nothing written, nothing created


def test_read_only_needs_an_existing_index(tmp_path):
    settings = test_settings(tmp_path, index_dir=tmp_path / "nothing", read_only=True)
    with pytest.raises(StartupError, match="no index to serve read-only in .*nothing"):
        Resources.load(settings)


def _not_writable(monkeypatch) -> None:
    real = os.access
    monkeypatch.setattr(engine_module.os, "access", lambda p, mode: False if mode == os.W_OK else real(p, mode))


def test_a_not_writable_folder_without_read_only_is_one_line_naming_it(built, tmp_path, monkeypatch):
    folder, _ = built
    settings = test_settings(tmp_path, index_dir=folder)
    if os.access(folder, os.W_OK):  # root: mode bits do not count, simulate the read-only mount
        _not_writable(monkeypatch)
    problem = index_dir_problem(settings)
    assert problem is not None and str(folder) in problem and "--read-only" in problem and "\n" not in problem
    with pytest.raises(StartupError, match="--read-only"):
        Resources.load(settings)


def test_erofs_while_opening_is_the_same_one_line_error(built, tmp_path, monkeypatch):
    folder, _ = built
    monkeypatch.setattr(engine_module, "index_dir_problem", lambda settings: None)  # the pre-check passed
    monkeypatch.setattr(engine_module, "load_embedder", lambda *a, **kw: FakeEmbedder())
    monkeypatch.setattr(collection, "_lock", _read_only_fs)
    with pytest.raises(StartupError, match=f"{folder} is not writable.*--read-only"):
        Resources.load(test_settings(tmp_path, index_dir=folder))


def test_afv_serve_exits_1_with_one_line_and_serves_read_only_when_asked(built, monkeypatch):
    folder, _ = built
    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    monkeypatch.setattr(engine_module, "load_embedder", lambda *a, **kw: FakeEmbedder())  # what built the index
    if os.access(folder, os.W_OK):
        _not_writable(monkeypatch)
    res = CliRunner().invoke(cli, ["serve", "--index", str(folder)])
    assert res.exit_code == 1 and not served, res.output
    assert "is not writable" in res.stderr and "--read-only" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(cli, ["serve", "--index", str(folder.parent / "none"), "--read-only"])
    assert res.exit_code == 1 and "no index to serve read-only" in res.stderr and not served
    res = CliRunner().invoke(cli, ["serve", "--index", str(folder), "--read-only"])
    assert res.exit_code == 0 and len(served) == 1, res.output
    assert served[0].state.settings.read_only is True


def test_afv_serve_reports_an_unservable_index_in_one_line_before_binding(built, monkeypatch):
    folder, _ = built
    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    monkeypatch.setattr(engine_module, "load_embedder", lambda *a, **kw: FakeEmbedder())
    (folder / "meta.sqlite").write_bytes(b"not a database" * 100)
    for f in folder.glob("meta.sqlite-*"):
        f.unlink()
    res = CliRunner().invoke(cli, ["serve", "--index", str(folder), "--read-only"])
    assert res.exit_code == 1 and not served, res.output
    assert "cannot serve" in res.stderr and "unreadable" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
