"""Every command group reports its errors one way: exit 1 and `error: MESSAGE` on stderr, no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from service.cli import app, options

NO_RUN = "no model.pt or last.pt"
CASES = {  # id: (arguments, what stderr says, whether the model is the test's small fake)
    "train export, no run": (["export", "--model", "{tmp}/none", "--out", "{tmp}/out"], NO_RUN, False),
    "train fisher, no run": (["fisher", "--model", "{tmp}/none"], NO_RUN, False),
    "train sample, no run": (["sample", "--model", "{tmp}/none"], NO_RUN, False),
    "distance, no run": (["distance", "{img}", "{img}", "--model", "{tmp}/none"], NO_RUN, False),
    "distance, unreadable image": (["distance", "{bad}", "{img}"], "not a readable image", True),
    "set-distance, bad metric": (["set-distance", "{img}", "{img}", "--metric", "x"], "unknown set metric", True),
    "index stats, no index": (["index", "stats", "--index", "{tmp}/none"], "no AFV index", False),
    "search, no index": (["search", "{img}", "--index", "{tmp}/none"], "no AFV index", True),
    "eval copies, bad edit": (["eval", "copies", "{tmp}", "--metric", "l2", "--edit", "x"], "unknown edit", False),
    "bench extract, unknown preset": (["bench", "extract", "--preset", "huge"], "unknown preset 'huge'", False),
    "serve, no run": (["serve", "--model", "{tmp}/none"], "no such model folder", False),
    "serve, bad precision": (["serve", "--precision", "bf32"], "unknown precision 'bf32'", False),
    "index build, bad precision": (
        ["index", "build", "{tmp}", "--index", "{tmp}/ix", "--precision", "bf32"],
        "unknown precision 'bf32'",
        False,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_errors_exit_1_with_a_message_on_stderr(case, tmp_path, cifar_dir, monkeypatch, extractor):
    args, message, fake = CASES[case]
    if fake:
        monkeypatch.setattr(options, "load_model", lambda model, device="auto", **kw: extractor)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths = {"tmp": str(tmp_path), "img": str(cifar_dir / "cat" / "0000.jpg"), "bad": str(tmp_path / "bad.jpg")}
    res = CliRunner().invoke(app, [a.format(**paths) for a in args])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "error: " in res.stderr and message in res.stderr and "Traceback" not in res.output


def test_a_usage_error_found_by_typer_still_exits_2():
    res = CliRunner().invoke(app, ["distance", "--no-such-option"])
    assert res.exit_code == 2 and "No such option" in res.stderr
