"""`afv eval summary`: benchmark reports merged into one table, a row per metric."""

from __future__ import annotations

import pytest

from model.evaluation.summary import markdown, summarise

COPIES = {
    "task": "copies",
    "collection": "/x/demo",
    "rows": [
        {"metric": "afv", "mean": {"recall@1": 0.9}, "edits": {"blur": {"recall@1": 0.7}, "jpeg": {"recall@1": 1.0}}},
        {"metric": "l2", "mean": {"recall@1": 0.8}, "edits": {"blur": {"recall@1": 1.0}, "jpeg": {"recall@1": 0.6}}},
    ],
}
PROBE = {
    "data": "a.tar.gz",
    "test_data": "/d/val.tar.gz",
    "n_train": 10,
    "rows": [
        {"metric": "afv", "normalization": "none", "linear": 0.5, "knn": 0.4},
        {"metric": "ssim", "linear": None, "knn": 0.2},
    ],
}
TWO_AFC = {"task": "2afc", "results": [{"metric": "afv", "dir": "/b/2afc"}], "mean": {"afv": 0.7, "ssim": 0.73}}


def test_rows_line_up_by_metric_with_worst_edit_and_blanks():
    columns, table = summarise([COPIES, PROBE, TWO_AFC])
    assert columns == ["copies r@1 demo", "worst edit r@1 demo", "linear val.tar.gz", "10-NN val.tar.gz", "2afc 2afc"]
    assert table["afv"]["worst edit r@1 demo"] == 0.7 and table["l2"]["worst edit r@1 demo"] == 0.6
    assert table["afv:none"]["linear val.tar.gz"] == 0.5 and table["ssim"]["2afc 2afc"] == 0.73
    text = markdown(columns, table)
    assert "| ssim |  |  |  | 0.200 | 0.730 |" in text


def test_labels_name_the_columns_and_unknown_reports_are_refused():
    columns, _ = summarise([COPIES], ["CIFAR demo"])
    assert columns[0] == "copies r@1 CIFAR demo"
    with pytest.raises(ValueError, match="not a benchmark report"):
        summarise([{"task": "other"}])


def test_model_metrics_of_different_models_get_their_own_rows_beside_shared_baselines():
    a, b = {**COPIES, "model": "v2"}, {**COPIES, "collection": "/x/tin", "model": "c64"}
    columns, table = summarise([a, b])
    assert table["v2 afv"]["copies r@1 demo"] == 0.9 and table["c64 afv"]["copies r@1 tin"] == 0.9
    assert "afv" not in table and "copies r@1 tin" not in table["v2 afv"]
    assert table["l2"]["copies r@1 demo"] == table["l2"]["copies r@1 tin"] == 0.8
    _, shared = summarise([a, {**COPIES, "model": "c64"}])  # same collection: one column, two model rows
    assert columns.count("copies r@1 demo") == 1 and len(_) == 2
    assert shared["c64 afv"]["copies r@1 demo"] == shared["v2 afv"]["copies r@1 demo"] == 0.9
