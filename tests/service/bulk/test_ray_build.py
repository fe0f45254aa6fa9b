"""`afv index build --engine ray` on a real (local) Ray against `--engine local` on the same 300+ images.

One Ray instance for the module (starting one takes ~10 s here); the CLI uses it and leaves it running,
and the fixture shuts it down. The builds are made once and checked by several tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import service.cli
from index import AFVIndex
from model.loading import load_embedder
from service.bulk.shards import read_shard
from service.model_index import ModelIndex

pytestmark = pytest.mark.slow  # ~40 s for the module, most of it Ray starting its processes

CIFAR = Path(__file__).parents[2] / "fixtures" / "cifar10"
SHARD = 64  # 302 images: shards 0-3 full, shard 4 of 46


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def builds(ray_session, tiny_model_dir, tmp_path_factory) -> dict:
    """The fixture images plus a repeated one and an unreadable one, built by both engines."""
    root = tmp_path_factory.mktemp("bulk-build")
    src = root / "photos"
    shutil.copytree(CIFAR, src)
    (src / "zz-copy.jpg").write_bytes((src / "cat" / "0003.jpg").read_bytes())
    (src / "broken.jpg").write_bytes(b"not an image")
    out = {"root": root, "src": src, "model": tiny_model_dir, "local": root / "local", "ray": root / "ray"}
    out["local_out"] = _run("index", "build", str(src), "--index", str(root / "local"), "--model", str(tiny_model_dir))
    out["ray_out"] = _build_ray(out)
    return out


def _run(*args: str) -> str:
    res = CliRunner().invoke(service.cli.app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def _build_ray(b: dict) -> str:
    args = ["index", "build", str(b["src"]), "--index", str(b["ray"]), "--model", str(b["model"])]
    return _run(*args, "--engine", "ray", "--shard-size", str(SHARD), "--batch-size", "32")


def _contents(index_dir: Path) -> tuple[dict[str, dict], dict[int, np.ndarray]]:
    with AFVIndex.open(index_dir, read_only=True) as idx:
        ids = list(range(1, idx.count + 1))
        records = {r["sha256"]: r for r in (idx.get(i) for i in ids) if r is not None}
        return records, idx.vectors(ids)


def test_the_ray_build_indexes_what_the_local_build_does(builds):
    summary = "added 300, already indexed 1, unreadable 1; index holds 300 images"
    assert summary in builds["local_out"] and summary in builds["ray_out"]
    assert "shards: 5 embedded on 1 worker(s)" in builds["ray_out"] and "broken.jpg" in builds["ray_out"]
    local, local_vectors = _contents(builds["local"])
    ray, ray_vectors = _contents(builds["ray"])
    drop = ("added_at",)
    assert {s: {k: v for k, v in r.items() if k not in drop} for s, r in ray.items()} == {
        s: {k: v for k, v in r.items() if k not in drop} for s, r in local.items()
    }
    assert sorted(ray_vectors) == sorted(local_vectors) and len(ray_vectors) == 300
    a, b = (np.stack([v[i] for i in sorted(local_vectors)]) for v in (local_vectors, ray_vectors))
    assert np.allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())  # float32 sums in another order


def test_the_ray_built_index_answers_searches_as_the_local_one(builds):
    _, vectors = _contents(builds["local"])
    queries = np.stack([vectors[i] for i in range(1, 301, 15)]) * 1.01  # near, not on, indexed items
    with AFVIndex.open(builds["local"], read_only=True) as a, AFVIndex.open(builds["ray"], read_only=True) as b:
        assert [[h.id for h in hits] for hits in a.search(queries, k=10)] == [
            [h.id for h in hits] for hits in b.search(queries, k=10)
        ]
        assert a.stats()["kind"] == b.stats()["kind"] == "flat"


def test_the_ray_built_index_opens_with_its_model_and_takes_local_adds(builds, tmp_path):
    with ModelIndex.open(builds["ray"], load_embedder(builds["model"], device="cpu"), read_only=True) as mi:
        assert mi.index.pins == AFVIndex.read_pins(builds["local"])
    new = tmp_path / "new.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(new)
    out = _run("index", "add", str(new), "--index", str(builds["ray"]), "--model", str(builds["model"]))
    assert out.startswith("301\tadded")
    _run("index", "remove", "301", "--index", str(builds["ray"]))


def test_a_second_run_skips_every_shard_and_adds_nothing(builds):
    shards = sorted((builds["ray"] / "shards").glob("shard-*.parquet"))
    before = [(p.name, p.stat().st_mtime_ns) for p in shards]
    out = _build_ray(builds)
    assert "shards: 0 embedded, 5 already done, 5 in all" in out
    assert "added 0, already indexed 301, unreadable 1; index holds 300 images" in out
    assert [(p.name, p.stat().st_mtime_ns) for p in shards] == before


def test_a_lost_shard_and_a_killed_write_are_redone(builds):
    shards = builds["ray"] / "shards"
    kept = {p.name: p.read_bytes() for p in shards.glob("shard-*.parquet")}
    (shards / "shard-000001.parquet").unlink()
    (shards / ".shard-000003.parquet.abc123.tmp").write_bytes(kept["shard-000003.parquet"][:1000])
    (shards / "shard-000003.parquet").unlink()
    out = _build_ray(builds)
    assert "shards: 2 embedded on 1 worker(s)" in out and "3 already done" in out
    assert "added 0, already indexed 301" in out and not list(shards.glob("*.tmp"))
    for name in ("shard-000001.parquet", "shard-000003.parquet"):
        again = read_shard(shards / name)
        (shards / f"old-{name}").write_bytes(kept[name])
        old = read_shard(shards / f"old-{name}")
        scale = np.abs(old.vectors).max()
        assert again.records == old.records and np.allclose(again.vectors, old.vectors, rtol=1e-5, atol=1e-6 * scale)
