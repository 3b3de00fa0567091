"""Property-based requests generated from the service's own OpenAPI schema: no input may produce a 5xx, and every
answer must match the schema (status code, content type and body) the service publishes.

Each generated case is sent as generated, and once more aimed at the loaded model (path parameters pinned to it,
rows resized to its widths), so that the generated numbers and parameters reach the batcher and onnxruntime
instead of stopping at 404/422.
"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


def _aimed(case: Any, model: dict[str, Any]) -> Any:
    if case.path.endswith("/unload"):  # aimed, it would take the model away from every later case
        return case
    pinned = {"name": model["name"], "model": f"{model['name']}.score", "version": str(model["version"])}
    case.path_parameters = {k: pinned.get(k, v) for k, v in (case.path_parameters or {}).items()}
    if isinstance(case.body, dict):
        for key, width in (("inputs", model["input_dim"]), ("latents", model["latent_dim"])):
            rows = case.body.get(key)
            if isinstance(rows, list) and rows and all(isinstance(r, list) and r for r in rows):
                case.body[key] = [(r * width)[:width] for r in rows[:64]]
    return case


def test_generated_requests_get_no_server_error_and_match_the_published_schema(live_server: str) -> None:
    model = httpx.get(f"{live_server}/v1/models").json()["models"][0]
    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 24  # 8 /v1 inference routes, model listing and detail, health, V2, repository
    failures: list[str] = []
    statuses: set[int] = set()
    for operation in operations:

        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:  # type: ignore[no-untyped-def]
            for attempt in (case, _aimed(case, model)):
                response = attempt.call(base_url=live_server, timeout=30)
                statuses.add(response.status_code)
                try:
                    attempt.validate_response(response, checks=CHECKS)
                except Exception as exc:  # a FailureGroup listing every check that failed
                    failures.append(f"{attempt.method} {attempt.formatted_path}: {str(exc)[:400]}")

        check()
    assert not failures, failures[:3]
    assert 200 in statuses and 422 in statuses  # generated requests reached both the models and the validators
