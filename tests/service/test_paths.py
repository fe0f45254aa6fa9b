"""Server paths stay off the API: index stats name the folder, stored absolute file paths show as names."""

from __future__ import annotations

import json

from tests.service.conftest import png


def test_index_stats_name_the_index_folder_without_its_location(api):
    with api.client() as c:
        stats = c.get("/v1/index/stats").json()
    assert "path" not in stats and stats["index"] == "index-fake"
    assert str(api.settings.data_dir) not in json.dumps(stats)


def test_absolute_paths_in_stored_metadata_are_shown_as_file_names(api):
    legacy = {"path": "/srv/photos/holiday/beach.jpg", "note": "/not/a/path/field"}
    with api.client(headers=api.auth) as c:
        added = c.post("/v1/images", files={"image": png(60)}, data={"metadata": json.dumps(legacy)}).json()
        record = c.get(f"/v1/images/{added['id']}").json()
        hits = c.post("/v1/search", json={"id": added["id"], "k": 1}).json()["results"]
        archived = c.post(
            "/v1/images", files={"image": png(61)}, data={"metadata": json.dumps({"path": "/srv/a.tar::cats/1.png"})}
        ).json()
        archived_record = c.get(f"/v1/images/{archived['id']}").json()
    assert record["metadata"]["path"] == "beach.jpg" and hits[0]["metadata"]["path"] == "beach.jpg"
    assert record["metadata"]["note"] == "/not/a/path/field"  # only the file-path field is rewritten
    assert archived_record["metadata"]["path"] == "1.png"


def test_relative_paths_are_kept(api):
    with api.client(headers=api.auth) as c:
        added = c.post("/v1/images", files={"image": png(62)}, data={"metadata": '{"path": "cats/1.png"}'}).json()
        assert c.get(f"/v1/images/{added['id']}").json()["metadata"]["path"] == "cats/1.png"
