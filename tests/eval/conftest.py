"""Fixtures of the evaluation tests: the committed BAPPS-layout fixture and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

BAPPS = Path(__file__).parent.parent / "fixtures" / "bapps"


@pytest.fixture(scope="session")
def bapps_dir() -> Path:
    return BAPPS
