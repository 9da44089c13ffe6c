"""Property-based contract test: generated requests against /openapi.json never cause a server error
and only get status codes (and content types) the schema documents. Bounded: a few examples per route."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev dependency) is not installed")
from schemathesis.checks import content_type_conformance, status_code_conformance  # noqa: E402

# 503 is a deliberate, documented answer while a model is unavailable (e.g. no grasp model in this
# build) or the queue is full; any other 5xx is a server error.
DELIBERATE_503 = ("grasp model not available", "queue full")


def no_unplanned_server_error(ctx, response, case) -> bool:
    """No 5xx, except a 503 whose detail says it is deliberate."""
    if response.status_code < 500:
        return True
    detail = response.json().get("detail", "") if response.status_code == 503 else ""
    assert detail.startswith(DELIBERATE_503), f"server error {response.status_code}: {response.text[:200]}"
    return True


CHECKS = [no_unplanned_server_error, status_code_conformance, content_type_conformance]


def test_generated_requests_get_documented_answers_and_no_server_errors(live_server):
    schema = schemathesis.openapi.from_url(f"{live_server.http_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/mesh", "/occupancy", "/grasps", "/models", "/readyz"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            case.call_and_validate(checks=CHECKS, timeout=120)

        check()
