"""Property tests over the whole OpenAPI schema (schemathesis, in-process ASGI): no 5xx on any generated
request, and every response matches the schema (status code, content type, body)."""

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (a test dependency) is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES = 25  # per operation: bounded, so that the suite stays fast


def test_every_operation_answers_within_its_schema(service_config):
    from reprlab.serve import Service, create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(Service.from_config(service_config)))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/search", "/encode", "/multihop", "/answer", "/health", "/stats"}
    for op in operations:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=op.as_strategy())
        def check(case):
            response = case.call()
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            case.validate_response(response)

        check()
