"""Docker files agree with the app: same entry command, port, env names, volume and health check."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from service.cli.serve import serve_command
from service.settings import Settings

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _default(param: str):
    default = inspect.signature(serve_command).parameters[param].default
    return getattr(default, "default", default)  # typer.Option(...) or a plain default


@pytest.mark.parametrize("name", ["afv", "afv-gpu"])
def test_compose_service_publishes_the_serve_port_and_checks_readyz(name):
    svc = COMPOSE["services"][name]
    port = _default("port")
    assert f"{port}:{port}" in svc["ports"]
    check = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check


@pytest.mark.parametrize("name", ["afv", "afv-gpu"])
def test_compose_keeps_the_index_in_a_named_volume_at_the_data_dir(name):
    svc = COMPOSE["services"][name]
    data_dir = svc["environment"]["AFV_DATA_DIR"]
    volume, target = svc["volumes"][0].split(":")
    assert target == data_dir and volume in COMPOSE["volumes"]
    assert Settings(data_dir=data_dir).resolved_index_dir.parent == Path(data_dir)


def test_compose_environment_names_are_settings_fields():
    fields = {f"AFV_{name.upper()}" for name in Settings.model_fields}
    for svc in COMPOSE["services"].values():
        assert set(svc["environment"]) <= fields


def test_gpu_profile_requests_a_gpu():
    svc = COMPOSE["services"]["afv-gpu"]
    assert svc["profiles"] == ["gpu"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_run_afv_serve_on_the_published_port(dockerfile):
    text = (ROOT / "docker" / dockerfile).read_text()
    port = str(_default("port"))
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M).group(1)
    assert '"afv", "serve"' in cmd and f'"--port", "{port}"' in cmd
    assert f"EXPOSE {port}" in text and "/readyz" in text and "torch==2.13.0" in text
