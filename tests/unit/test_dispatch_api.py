"""dispatch's OpenAPI names the models of its answers (every service's answers are checked in
test_layers.py)."""

from __future__ import annotations

from dispatch.main import build_app
from dispatch.settings import DispatchSettings


def test_the_incident_view_lists_its_units_by_model():
    app = build_app(DispatchSettings(database_url="sqlite:///unused.db", auth_secret="s" * 40))
    spec = app.openapi()
    assert spec["components"]["schemas"]["IncidentView"]["properties"]["units"]["items"]["$ref"].endswith("HeldUnit")
