"""The search web page, end to end in headless Chromium: upload an image, see it as its own top match."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import CIFAR, start_server, stop_server, test_settings

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).parents[1] / "artifacts"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    settings = test_settings(tmp_path_factory.mktemp("ui-data"), demo_collection=CIFAR)
    server, thread, url = start_server(settings)
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/v1/index/stats").json()["count"] < 300:  # demo seeding runs in background
        assert time.monotonic() < deadline, "demo collection was not indexed in time"
        time.sleep(0.5)
    yield url
    stop_server(server, thread)


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--window-size=1200,900",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_uploading_an_indexed_image_shows_it_first_at_distance_zero(demo_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    query = CIFAR / "ship" / "0003.jpg"
    browser.get(demo_server + "/")
    browser.find_element(By.ID, "file").send_keys(str(query))
    WebDriverWait(browser, 60).until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, "#grid .hit")))
    hits = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")
    assert len(hits) == 12
    # ≈ 0: batched (demo seeding) and single-image passes differ only by float rounding
    first, second = (float(h.find_element(By.CLASS_NAME, "d").text) for h in hits[:2])
    assert first < 1e-3 * second
    assert "ship/0003.jpg" in hits[0].text
    WebDriverWait(browser, 20).until(
        lambda b: b.execute_script(
            "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "ui-search.png"))


def test_clicking_a_result_searches_with_it(demo_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(demo_server + "/")
    browser.find_element(By.ID, "file").send_keys(str(CIFAR / "cat" / "0000.jpg"))
    WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#grid .hit")) == 12)
    second = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")[1]
    clicked_id = second.get_attribute("data-id")
    second.click()
    WebDriverWait(browser, 60).until(
        lambda b: (
            b.execute_script("const h = document.querySelector('#grid .hit'); return h && h.dataset.id") == clicked_id
        )
    )
    top, nxt = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")[:2]
    assert float(top.find_element(By.CLASS_NAME, "d").text) < 1e-3 * float(nxt.find_element(By.CLASS_NAME, "d").text)


def test_the_image_file_endpoint_serves_demo_images_and_404s_unknown_ids(demo_server):
    ok = httpx.get(f"{demo_server}/v1/images/1/file")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    missing = httpx.get(f"{demo_server}/v1/images/999999/file")
    assert missing.status_code == 404 and missing.json()["error"]["code"]
