"""Schemathesis fuzzing of every operation in the OpenAPI schema against the live server: no 5xx.

Bounded: a fixed number of derandomised examples per operation (multipart and JSON bodies, with the
API key so write endpoints are exercised past authentication).
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 (after the importorskip)
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from service.app import create_app  # noqa: E402
from tests.service.conftest import API_KEY, test_settings  # noqa: E402

EXAMPLES = 12

# The schema comes from the app object (building it loads nothing); requests go to the live server.
schema = schemathesis.openapi.from_dict(create_app(test_settings(Path("unused"))).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
def test_no_server_errors(case, live):
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
        checks=[not_a_server_error, response_schema_conformance],
    )


def test_server_still_ready_after_fuzzing(live):
    with live.client() as c:
        assert c.get("/readyz").status_code == 200
        metrics = c.get("/metrics").text
    requests = [line for line in metrics.splitlines() if line.startswith("afv_http_requests_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in requests) >= 5 * EXAMPLES  # it did run
    assert not [line for line in requests if 'status="5' in line], requests
