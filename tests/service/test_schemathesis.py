"""Property-based requests generated from the service's own OpenAPI schema: no input may produce a 5xx.

Each generated case is sent as generated, and once more aimed at the loaded model with rows resized to its widths,
so that the generated numbers and parameters reach the batcher and onnxruntime instead of stopping at 404/422.
"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings


def _aimed(case: Any, model: dict[str, Any]) -> Any:
    if "name" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "name": model["name"]}
    if isinstance(case.body, dict):
        for key, width in (("inputs", model["input_dim"]), ("latents", model["latent_dim"])):
            rows = case.body.get(key)
            if isinstance(rows, list) and rows and all(isinstance(r, list) and r for r in rows):
                case.body[key] = [(r * width)[:width] for r in rows[:64]]
    return case


def test_generated_requests_never_get_a_server_error(live_server: str) -> None:
    model = httpx.get(f"{live_server}/v1/models").json()["models"][0]
    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13  # 8 inference routes, model listing and detail, health, readiness, metrics
    failures: list[str] = []
    statuses: set[int] = set()
    for operation in operations:

        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:  # type: ignore[no-untyped-def]
            for attempt in (case, _aimed(case, model)):
                response = attempt.call(base_url=live_server, timeout=30)
                statuses.add(response.status_code)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                    )

        check()
    assert not failures, failures[:5]
    assert 200 in statuses and 422 in statuses  # generated requests reached both the models and the validators
