"""Fixtures of the CLI tests: the service tests' (tests/service/conftest.py) and the BAPPS-layout fixture."""

from tests.eval.conftest import bapps_dir  # noqa: F401
