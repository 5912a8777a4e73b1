"""Each service's OpenAPI tells the truth: it validates (openapi-spec-validator), every $ref
resolves, request bodies are documented, every error is problem+json; and schemathesis, with a
bounded number of examples per operation, finds no 5xx, no undocumented status, no answer that
does not match its documented schema or media type, against the service run as a real process on
real NATS and PostgreSQL.

A new service is included by adding one line to SERVICES."""

from __future__ import annotations

import importlib.util
import json
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ecs.testing import console_script

# (console script, settings prefix, settings): one line per service.
SERVICES = [
    ("incident-intake", "INTAKE_", {}),
    ("dispatch", "DISPATCH_", {"min_cover": "0"}),
    ("resource-stockpile", "STOCKPILE_", {}),
    ("shelter-registry", "SHELTER_", {}),
    ("public-notification", "NOTIFICATION_", {}),
]
EXAMPLES = 15
"""Examples per operation: bounded so that make test stays quick."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def installed(script: str) -> bool:
    try:
        console_script(script)
        return importlib.util.find_spec(script.replace("-", "_") + ".main") is not None
    except (RuntimeError, ModuleNotFoundError):
        return False


def check_document(spec: dict) -> None:
    validate(spec)
    text = json.dumps(spec)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])
    assert "HTTPValidationError" not in text and "$defs" not in text
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    assert list(answer["content"]) == ["application/problem+json"], (path, method, status)


@pytest.mark.parametrize(("script", "prefix", "extra"), SERVICES, ids=lambda v: v if isinstance(v, str) else "")
def test_the_openapi_validates_and_the_service_answers_as_it_says(
    script, prefix, extra, service_factory, pg_url, operator_headers
):
    if not installed(script):
        pytest.skip(f"{script} is not installed")
    proc = service_factory(script, prefix, pg_url, **extra)
    spec = httpx.get(proc.url + "/openapi.json").json()
    check_document(spec)
    schema = schemathesis.openapi.from_dict(spec)
    headers = operator_headers("dispatcher", "commander")
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=proc.url, headers=headers, timeout=30)
            case.validate_response(response, checks=CHECKS)

        exercise()
        tried += 1
    assert tried >= 5
