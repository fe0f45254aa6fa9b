"""One table from many benchmark reports: every metric variant against the baselines, column per benchmark.

Reads the JSON reports that `afv eval copies|ranking|probe|2afc|jnd --out/--json` write and returns
rows keyed by metric name, so the variants of several runs (models, read-outs) line up beside pixel
L2, SSIM and pHash. Pure: dicts in, dicts out; the command prints them.
"""

from __future__ import annotations

from pathlib import Path


def _short(path: str) -> str:
    return Path(path.rstrip("/")).name or path


PIXEL_METRICS = ("l2", "ssim", "phash")  # the baselines: the same whatever model a report names


def _columns(report: dict, label: str | None) -> dict[str, dict[str, float | None]]:
    """{column title: {row name: value}} of one report; model metrics named 'MODEL metric' if it names one."""
    model = report.get("model")
    return {
        title: {(f"{model} {m}" if model and m not in PIXEL_METRICS else m): v for m, v in values.items()}
        for title, values in _task_columns(report, label).items()
    }


def _task_columns(report: dict, label: str | None) -> dict[str, dict[str, float | None]]:
    """{column title: {metric: value}} of one report, by its task."""
    task = report.get("task") or ("probe" if "n_train" in report else None)
    if task == "copies":
        name = label or _short(report["collection"])
        return {
            f"copies r@1 {name}": {r["metric"]: r["mean"]["recall@1"] for r in report["rows"]},
            f"worst edit r@1 {name}": {
                r["metric"]: min(e["recall@1"] for e in r["edits"].values()) for r in report["rows"]
            },
        }
    if task == "ranking":
        name = label or _short(report["data"])
        return {f"ranking {name}": {r["metric"]: r["mean"] for r in report["rows"]}}
    if task == "probe":
        name = label or _short(report.get("test_data", report["data"]))
        rows = report["rows"]
        return {
            f"linear {name}": {_probe_name(r): r["linear"] for r in rows},
            f"10-NN {name}": {_probe_name(r): r["knn"] for r in rows},
        }
    if task in ("2afc", "jnd"):
        name = label or ",".join(sorted({_short(r["dir"]) for r in report["results"]}))
        return {f"{task} {name}": dict(report["mean"])}
    raise ValueError(f"not a benchmark report of afv eval (task {task!r})")


def _probe_name(row: dict) -> str:
    """Probe rows of AFV normalisation variants are told apart by their normalisation."""
    return row["metric"] if "normalization" not in row else f"{row['metric']}:{row['normalization']}"


def summarise(reports: list[dict], labels: list[str | None] | None = None) -> tuple[list[str], dict[str, dict]]:
    """Reports → (column titles, {metric: {column: value}}), metrics in first-seen order."""
    labels = labels or [None] * len(reports)
    columns: list[str] = []
    table: dict[str, dict] = {}
    for report, label in zip(reports, labels):
        for title, values in _columns(report, label).items():
            if title not in columns:  # reports of the same benchmark (e.g. one per model) share a column
                columns.append(title)
            for metric, value in values.items():
                table.setdefault(metric, {})[title] = value
    return columns, table


def markdown(columns: list[str], table: dict[str, dict]) -> str:
    """A markdown table, blank where a metric was not scored by a benchmark (e.g. SSIM's linear probe)."""
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for metric, row in table.items():
        cells = ["" if row.get(c) is None else f"{row[c]:.3f}" for c in columns]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
