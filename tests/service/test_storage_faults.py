"""A full disk and other storage failures over HTTP (#13 item 2): 507 `insufficient_storage` / 503
`index_unavailable` naming the cause, reported by /readyz and /metrics, and recovered from by the next
write without losing any acknowledged image.

The full disk is SQLite's own SQLITE_FULL: the database is capped at its current size with
`PRAGMA max_page_count`, then uncapped.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3

from index import AFVIndex
from tests.service.conftest import png


def _index(api) -> AFVIndex:
    return api.started.app.state.engine.index


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


def _fill_disk(api, full: bool) -> None:
    """Cap the database at its current size (full), or lift the cap."""
    db = _index(api).store.db
    pages = db.execute("PRAGMA page_count").fetchone()[0] if full else 1073741823
    db.execute(f"PRAGMA max_page_count = {pages}")


def _add(c, api, i: int, note: str = ""):
    meta = {"metadata": json.dumps({"note": note})}
    return c.post("/v1/images", files={"image": png(i)}, data=meta, headers=api.auth)


def _batch(c, api, start: int, n: int):
    images = [base64.b64encode(png(i)).decode() for i in range(start, start + n)]
    notes = [{"note": "x" * 4000} for _ in images]  # 48 kB: more than the free space of the capped pages
    return c.post("/v1/images:batch", json={"images": images, "metadata": notes}, headers=api.auth)


def test_full_disk_answers_507_reports_it_and_recovers(api):
    with api.client() as c:
        acked = [_add(c, api, i).json()["id"] for i in range(3)]
        _fill_disk(api, True)
        big = _batch(c, api, 10, 12)  # needs new pages: the capped database is full
        assert big.status_code == 507, big.text
        err = big.json()["error"]
        assert err["code"] == "insufficient_storage" and "database or disk is full" in err["message"]
        one = _add(c, api, 30, note="y" * 16_000)  # more than a capped page holds free
        assert one.status_code == 507 and "database or disk is full" in one.json()["error"]["message"]
        assert all(c.get(f"/v1/images/{i}").status_code == 200 for i in acked)

        ready = c.get("/readyz")
        assert ready.status_code == 200  # reads are still served ...
        assert ready.json()["writable"] is False and "full" in ready.json()["write_error"]
        probe = c.get("/readyz", params={"writes": "true"})  # ... but not writes
        assert probe.status_code == 503 and probe.json()["error"]["code"] == "writes_failing"
        metrics = c.get("/metrics").text
        assert _metric(metrics, "afv_index_writes_failing") == 1.0
        assert _metric(metrics, 'afv_index_write_failures_total{reason="no_space"}') >= 1.0
        assert c.post("/v1/search", files={"image": png(0)}).status_code == 200


def test_after_the_fault_writes_and_readiness_recover(api):
    _fill_disk(api, False)  # space is freed
    with api.client() as c:
        before = c.get("/v1/index/stats").json()["count"]
        r = _batch(c, api, 10, 12)  # the batch refused above goes through now
        assert r.status_code == 200 and r.json()["added"] == 12, r.text
        ready = c.get("/readyz").json()
        assert ready["writable"] is True and ready["write_error"] is None
        assert c.get("/readyz", params={"writes": "true"}).status_code == 200
        assert _metric(c.get("/metrics").text, "afv_index_writes_failing") == 0.0
        assert c.get("/v1/index/stats").json()["count"] == before + 12
        for i in range(3):  # every image acknowledged before the fault is still there
            again = _add(c, api, i)
            assert again.status_code == 201 and again.json()["duplicate"] is True
            assert c.get(f"/v1/images/{again.json()['id']}").status_code == 200


def test_other_storage_failures_answer_503_naming_the_cause(api, monkeypatch):
    store = _index(api).store

    def io_error(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    with api.client() as c:
        victim = _add(c, api, 40).json()["id"]
        monkeypatch.setattr(store, "add", io_error)
        monkeypatch.setattr(store, "delete", io_error)
        r = _add(c, api, 41)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "index_unavailable" and "disk I/O error" in r.json()["error"]["message"]
        d = c.delete(f"/v1/images/{victim}", headers=api.auth)
        assert d.status_code == 503 and "disk I/O error" in d.json()["error"]["message"]
        assert c.get("/readyz").json()["writable"] is False
        assert _metric(c.get("/metrics").text, 'afv_index_write_failures_total{reason="storage"}') == 2.0
        monkeypatch.undo()
        assert c.get(f"/v1/images/{victim}").status_code == 200  # the failed delete changed nothing
        assert c.delete(f"/v1/images/{victim}", headers=api.auth).status_code == 200
        assert c.get("/readyz").json()["writable"] is True
