"""dispatch's OpenAPI describes every answer: each route declares its answer model."""

from __future__ import annotations

from dispatch.main import build_app
from dispatch.settings import DispatchSettings


def test_every_operator_answer_has_a_schema():
    app = build_app(DispatchSettings(database_url="sqlite:///unused.db", auth_secret="s" * 40))
    spec = app.openapi()
    undescribed = []
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if not status.startswith("2") or status == "204":
                    continue
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if "$ref" not in schema:
                    undescribed.append(f"{method.upper()} {path} {status}")
    assert undescribed == []
    assert spec["components"]["schemas"]["IncidentView"]["properties"]["units"]["items"]["$ref"].endswith("HeldUnit")
