"""The engine's model threads: several answer concurrent requests exactly as one does, in worker processes too."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from service import model_processes
from tests.service.conftest import start_server, stop_server, test_settings
from tests.service.test_e2e import b64, png


def _answers(url: str) -> tuple[list[float], list[list[float]]]:
    """Eight distances and eight index sketches, requested 16 at a time (so passes overlap)."""

    def distance(i: int) -> float:
        body = {"image_a": b64(png(i)), "image_b": b64(png(i + 8))}
        return httpx.post(f"{url}/v1/distance", json=body, timeout=60).json()["distance"]

    def sketch(i: int) -> list[float]:
        return httpx.post(f"{url}/v1/embed", files={"image": png(i)}, timeout=60).json()["vector"]

    with ThreadPoolExecutor(16) as pool:
        distances = pool.map(distance, range(8))
        sketches = pool.map(sketch, range(8))
        return list(distances), list(sketches)


def _served_answers(settings, metric: str) -> tuple[list[float], list[list[float]]]:
    """`_answers` from a server started with `settings`, whose /metrics shows the line `metric`."""
    server, thread, url = start_server(settings)
    try:
        assert metric in httpx.get(f"{url}/metrics").text
        return _answers(url)
    finally:
        stop_server(server, thread)


def test_two_model_threads_answer_as_one_does(live, tmp_path):
    two = _served_answers(test_settings(tmp_path, model_workers=2), "afv_model_threads 2.0")
    one = _answers(live.url)
    assert two[0] == pytest.approx(one[0], rel=1e-4)
    for a, b in zip(two[1], one[1]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


@pytest.mark.gpu
def test_on_gpu_the_server_answers_as_on_the_cpu(live, tmp_path, gpu):
    """On the GPU the server runs one model thread, no processes and whole batches: the CPU server's answers."""
    server, thread, url = start_server(test_settings(tmp_path, device=str(gpu)))
    try:
        assert httpx.get(f"{url}/readyz").json()["device"].startswith(gpu.type)
        on_gpu = _answers(url)
    finally:
        stop_server(server, thread)
    on_cpu = _answers(live.url)
    assert on_gpu[0] == pytest.approx(on_cpu[0], rel=1e-3)
    for a, b in zip(on_gpu[1], on_cpu[1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())


def _model_processes(besides: frozenset[int] = frozenset()) -> list:
    """The live model processes of this test process, other than those with the pids `besides`."""
    children = multiprocessing.active_children()
    return [p for p in children if p.name.startswith("afv-model-process") and p.pid not in besides]


@pytest.mark.skipif(not model_processes.available(torch.device("cpu")), reason="model processes need Linux (fork)")
def test_passes_in_model_processes_answer_as_model_threads_do(live, tmp_path):
    settings = test_settings(tmp_path, model_workers=2, model_processes=True)
    in_processes = _served_answers(settings, "afv_model_processes 2.0")
    settings = test_settings(tmp_path, model_workers=2, model_processes=False)
    in_threads = _served_answers(settings, "afv_model_processes 0.0")
    assert in_processes[0] == pytest.approx(in_threads[0], rel=1e-4)
    for a, b in zip(in_processes[1], in_threads[1]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


@pytest.mark.skipif(not model_processes.available(torch.device("cpu")), reason="model processes need Linux (fork)")
def test_killed_model_processes_are_replaced_and_the_server_answers_as_before(tmp_path):
    others = frozenset(p.pid for p in _model_processes())  # other servers' (the session's live server)
    server, thread, url = start_server(test_settings(tmp_path, model_workers=1, model_processes=True))
    body = {"image_a": b64(png(1)), "image_b": b64(png(2))}
    try:
        before = httpx.post(f"{url}/v1/distance", json=body, timeout=60).json()["distance"]
        (worker,) = _model_processes(others)
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(5)
        after = httpx.post(f"{url}/v1/distance", json=body, timeout=60)
        assert after.status_code == 200 and after.json()["distance"] == pytest.approx(before, rel=1e-5)
        assert len(_model_processes(others | {worker.pid})) == 1
        assert "afv_model_process_restarts 1.0" in httpx.get(f"{url}/metrics").text
    finally:
        stop_server(server, thread)
    assert _model_processes(others) == []  # stopped with the server


def _kernel_choices() -> int:
    from model import fisher, pyramid, sampled

    return len(fisher._conv_choice) + len(pyramid._cell_choice) + len(sampled._kernel_choice)


def test_after_the_warm_up_serving_times_no_kernels(tmp_path):
    from model import fisher, pyramid, sampled

    for choices in (fisher._conv_choice, pyramid._cell_choice, sampled._kernel_choice):
        choices.clear()  # as in a fresh server process
    settings = test_settings(tmp_path, warm_up=True, model_processes=False, model_workers=2)
    server, thread, url = start_server(settings)
    try:
        made = _kernel_choices()
        assert made > 0
        _answers(url)  # batches of any size up to the largest, on both model threads
        assert _kernel_choices() == made
    finally:
        stop_server(server, thread)


def test_a_set_distance_streamed_in_batches_is_the_models_set_distance(tmp_path):
    from model.loading import load_embedder
    from tests.service.conftest import cifar

    settings = test_settings(tmp_path, batch_max_size=4)  # 7 and 5 images: several AFV batches per set
    server, thread, url = start_server(settings)
    try:
        files = [("images_a", png(i)) for i in range(7)] + [("images_b", png(i)) for i in range(7, 12)]
        served = httpx.post(f"{url}/v1/set-distance", files=files, timeout=60).json()
    finally:
        stop_server(server, thread)
    ext = load_embedder(None, device="cpu", readout="global")
    x = torch.from_numpy(np.stack([ext.preprocess(cifar(i)) for i in range(12)]))
    assert served["n_a"] == 7 and served["n_b"] == 5
    assert served["distance"] == pytest.approx(ext.set_distance(x[:7], x[7:]), rel=1e-4)


def test_a_batch_smaller_than_a_2afc_triplet_still_answers_it(tmp_path):
    server, thread, url = start_server(test_settings(tmp_path, batch_max_size=2))
    try:
        files = {"ref": png(0), "p0": png(0), "p1": png(5)}
        r = httpx.post(f"{url}/v1/2afc", files=files, timeout=60)
    finally:
        stop_server(server, thread)
    assert r.status_code == 200 and r.json()["choice"] == 0 and r.json()["d0"] == pytest.approx(0, abs=1e-3)
