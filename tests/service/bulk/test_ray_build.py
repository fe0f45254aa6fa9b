"""`afv index build --engine ray` on a real (local) Ray against `--engine local` on the same 302 images.

Ray starts once for the module (~10-15 s here) and runs one build: the build resumes a killed earlier
run, which left three whole shards (made here by the same stages, in-process), one truncated shard and
one temp file of an interrupted write. The CLI uses the module's Ray and leaves it running; the
fixture shuts it down.
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
from service.bulk.shards import Shard, ShardPlan, read_shard, shard_path, sketch_id, write_shard
from service.bulk.sources import list_source
from service.bulk.stages import DecodeChunk, Sketcher, chunk_row
from service.model_index import ModelIndex

pytestmark = pytest.mark.slow  # ~45 s on 2 busy cores, most of it Ray starting its processes

CIFAR = Path(__file__).parents[2] / "fixtures" / "cifar10"
SHARD = 64  # 302 images: shards 0-3 full, shard 4 of 46
LEFT_WHOLE = (0, 2, 4)  # what the killed run finished


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
    b = {"src": src, "model": tiny_model_dir, "local": root / "local", "ray": root / "ray"}
    b["local_out"] = _run("index", "build", str(src), "--index", str(b["local"]), "--model", str(tiny_model_dir))
    b["killed_run"] = _leave_a_killed_run(b)
    b["ray_out"] = _build_ray(b)
    return b


def _leave_a_killed_run(b: dict) -> dict[str, int]:
    """The index and the shards a killed `--engine ray` run leaves: some whole, one cut short, one temp
    file; returns the whole ones' modification times."""
    with ModelIndex.create(b["ray"], load_embedder(b["model"], device="cpu")) as mi:
        pins = mi.index.pins
    plan, folder = ShardPlan.of(list_source(str(b["src"])), SHARD), b["ray"] / "embeddings"
    sketcher = Sketcher(str(b["model"]), pins, batch_size=32)
    for k in (*LEFT_WHOLE, 1):
        rows = DecodeChunk(32)(chunk_row(k, k * SHARD, plan.entries_of(k)))
        batch = {c: np.stack([r[c] for r in rows]) for c in rows[0]}
        write_shard(folder, k, plan, sketch_id(pins), Shard.from_rows(sketcher(batch)))
    data = shard_path(folder, 1).read_bytes()
    shard_path(folder, 1).write_bytes(data[: len(data) // 2])  # as a writer without atomic rename would
    (folder / ".shard-000003.parquet.k1ll3d.tmp").write_bytes(data[:1000])  # an atomic write, interrupted
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet")}


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
    assert "broken.jpg" in builds["ray_out"]
    local, local_vectors = _contents(builds["local"])
    ray, ray_vectors = _contents(builds["ray"])
    assert {s: {k: v for k, v in r.items() if k != "added_at"} for s, r in ray.items()} == {
        s: {k: v for k, v in r.items() if k != "added_at"} for s, r in local.items()
    }
    assert sorted(ray_vectors) == sorted(local_vectors) and len(ray_vectors) == 300
    a, b = (np.stack([v[i] for i in sorted(local_vectors)]) for v in (local_vectors, ray_vectors))
    assert np.allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())  # float32 sums in another order


def test_the_ray_build_answers_searches_as_the_local_one(builds):
    _, vectors = _contents(builds["local"])
    queries = np.stack([vectors[i] for i in range(1, 301, 15)]) * 1.01  # near, not on, indexed items
    with AFVIndex.open(builds["local"], read_only=True) as a, AFVIndex.open(builds["ray"], read_only=True) as b:
        assert [[h.id for h in hits] for hits in a.search(queries, k=10)] == [
            [h.id for h in hits] for hits in b.search(queries, k=10)
        ]
        assert a.stats()["kind"] == b.stats()["kind"] == "flat"


def test_a_killed_run_resumes_redoing_only_the_cut_and_missing_shards(builds):
    assert "embedding shards: 2 made on 1 worker(s)" in builds["ray_out"] and "3 already done" in builds["ray_out"]
    folder = builds["ray"] / "embeddings"
    now = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet")}
    assert {name: now[name] for name in builds["killed_run"] if name != "shard-000001.parquet"} == {
        f"shard-{k:06d}.parquet": builds["killed_run"][f"shard-{k:06d}.parquet"] for k in LEFT_WHOLE
    }
    assert len(now) == 5 and not list(folder.glob("*.tmp"))
    assert len(read_shard(shard_path(folder, 1)).records) == SHARD


def test_a_second_run_skips_every_shard_and_adds_nothing(builds):
    folder = builds["ray"] / "embeddings"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet")}
    out = _build_ray(builds)
    assert "embedding shards: 0 made, 5 already done, 5 in all" in out
    assert "added 0, already indexed 301, unreadable 1; index holds 300 images" in out
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet")} == before


def test_the_ray_built_index_opens_with_its_model_and_takes_local_adds(builds, tmp_path):
    with ModelIndex.open(builds["ray"], load_embedder(builds["model"], device="cpu"), read_only=True) as mi:
        assert mi.index.pins == AFVIndex.read_pins(builds["local"])
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "new.png")
    model = ["--model", str(builds["model"])]
    out = _run("index", "add", str(tmp_path / "new.png"), "--index", str(builds["ray"]), *model)
    assert out.startswith("301\tadded")
    _run("index", "remove", "301", "--index", str(builds["ray"]))
