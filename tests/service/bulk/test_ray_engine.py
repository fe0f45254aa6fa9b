"""Connecting to Ray and sizing the worker pool, without starting Ray (tests/service/bulk/test_ray_build.py does)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

import service.cli
from service.bulk import ray_engine
from service.bulk.ray_engine import RayOptions, RayUnavailableError, Workers, connect, decode_chunks, plan_workers
from service.bulk.shards import ShardPlan
from service.bulk.sources import Entry


class FakeRay:
    """Records init/shutdown calls."""

    def __init__(self, running: bool = False):
        self.running, self.calls = running, []

    def is_initialized(self) -> bool:
        return self.running

    def init(self, address=None, **kw):
        self.running = True
        self.calls.append(("init", address, kw.get("num_cpus"), kw.get("include_dashboard")))

    def shutdown(self):
        self.running = False
        self.calls.append(("shutdown",))


@pytest.mark.parametrize("address", [None, "ray://head:10001"])
def test_connect_starts_ray_and_shuts_down_what_it_started(monkeypatch, address):
    fake = FakeRay()
    monkeypatch.setattr(ray_engine, "import_ray", lambda: fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(KeyError), connect(address):  # shut down on errors too
        assert fake.running
        raise KeyError("boom")
    assert not fake.running and fake.calls[-1] == ("shutdown",)
    init = fake.calls[0]
    assert init[1] == address and (init[2:] == (None, None) if address else init[2] >= 1 and init[3] is False)


def test_inside_a_ray_job_connect_joins_its_cluster(monkeypatch):
    fake = FakeRay()
    monkeypatch.setattr(ray_engine, "import_ray", lambda: fake)
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    with connect(None):
        pass
    assert fake.calls == [("init", "http://head:8265", None, None), ("shutdown",)]


def test_connect_hands_the_shutdown_to_run_stop_so_the_caller_can_go_on_meanwhile(monkeypatch):
    fake, handed = FakeRay(), []
    monkeypatch.setattr(ray_engine, "import_ray", lambda: fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with connect(None, run_stop=handed.append):
        pass
    assert fake.running and handed == [fake.shutdown]  # not stopped yet: run_stop decides when
    handed[0]()
    assert not fake.running


def test_connect_leaves_a_ray_it_did_not_start_running(monkeypatch):
    fake = FakeRay(running=True)
    monkeypatch.setattr(ray_engine, "import_ray", lambda: fake)
    with connect(None) as ray:
        assert ray is fake
    assert fake.running and fake.calls == []


def test_without_ray_the_build_names_the_extra_to_install(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayUnavailableError, match=r"pip install -e '\.\[ray\]'"):
        ray_engine.import_ray()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"x")
    args = ["index", "build", str(tmp_path / "src"), "--index", str(tmp_path / "idx"), "--engine", "ray"]
    res = CliRunner().invoke(service.cli.app, [*args, "--model", str(tiny_model_dir)])
    assert res.exit_code == 1 and "pip install -e '.[ray]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "idx").exists()


def test_ray_options_are_refused_with_the_local_engine_and_unknown_engines(tmp_path):
    args = ["index", "build", str(tmp_path), "--index", str(tmp_path / "idx")]
    res = CliRunner().invoke(service.cli.app, [*args, "--shard-size", "10", "--address", "auto"])
    assert res.exit_code == 1 and "--address, --shard-size apply to --engine ray" in res.output
    res = CliRunner().invoke(service.cli.app, [*args, "--engine", "spark"])
    assert res.exit_code == 1 and "unknown engine 'spark'" in res.output
    assert not (tmp_path / "idx").exists()


def test_the_pool_has_a_worker_per_gpu_else_one_per_four_cores_leaving_room_to_decode():
    assert plan_workers(RayOptions(), {"CPU": 32, "GPU": 4}) == Workers(4, 1.0, 1.0)
    assert plan_workers(RayOptions(gpus_per_worker=0.5), {"CPU": 32, "GPU": 4}) == Workers(8, 0.5, 1.0)
    assert plan_workers(RayOptions(), {"CPU": 2}) == Workers(1, 0.0, 1.5) and Workers(1, 0.0, 1.5).threads == 2
    assert plan_workers(RayOptions(), {"CPU": 16}) == Workers(4, 0.0, 3.5)  # 2 CPUs left: 4 decode tasks
    assert plan_workers(RayOptions(workers=2), {"CPU": 16}) == Workers(2, 0.0, 3.5)
    assert plan_workers(RayOptions(workers=3, cpus_per_worker=2), {"CPU": 16}) == Workers(3, 0.0, 2.0)


def test_decode_tasks_are_small_chunks_except_for_compressed_archives():
    files = [Entry(f"/f/{i}.jpg", f"{i}.jpg") for i in range(600)]
    members = [Entry("/a.tar.gz", f"{i}.jpg", member=f"{i}.jpg", sequential=True) for i in range(600)]
    chunks = decode_chunks(ShardPlan.of(files, 500), [0, 1])
    assert [(c["shard"], c["first"]) for c in chunks] == [(0, 0), (0, 256), (1, 500)]
    assert [(c["shard"], c["first"]) for c in decode_chunks(ShardPlan.of(members, 500), [1, 0])] == [(1, 500), (0, 0)]
