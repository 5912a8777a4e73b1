"""Where code may live in incident-intake: the rules import no infrastructure, routes and handlers
no SQL; and the settings speak the shared vocabulary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

import incident_intake
from incident_intake.domain import OPEN_STAGES, Participant
from incident_intake.settings import IntakeSettings
from incident_intake.store import OPEN

PACKAGE = Path(incident_intake.__file__).parent

INFRASTRUCTURE = ("sqlalchemy", "fastapi", "starlette", "nats", "asyncpg", "aiosqlite", "httpx", "pathlib", "os")
PURE = ["domain.py", "correlation.py", "commands.py"]
NO_SQL = ["api.py", "consumers.py", *(f"handlers/{p.name}" for p in (PACKAGE / "handlers").glob("*.py"))]


def imported(module: str) -> set[str]:
    """Every module ``module`` imports, as written (relative ones with their dots)."""
    tree = ast.parse((PACKAGE / module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("module", PURE)
def test_the_rules_import_no_infrastructure_and_no_file_io(module):
    found = {n for n in imported(module) if top(n) in INFRASTRUCTURE}
    assert found == set(), f"{module} imports {sorted(found)}"
    tree = ast.parse((PACKAGE / module).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert not [c for c in calls if c.func.id == "open"], f"{module} opens files"


@pytest.mark.parametrize("module", NO_SQL)
def test_routes_consumers_and_handlers_import_no_sqlalchemy(module):
    assert not {n for n in imported(module) if top(n) == "sqlalchemy"}, module


@pytest.mark.parametrize("module", PURE)
def test_the_rules_do_not_reach_into_the_store_or_the_handlers(module):
    assert not imported(module) & {".store", ".handlers", ".api", ".views", ".consumers", ".main"}


def test_open_stages_in_the_store_come_from_the_vocabulary():
    assert sorted(OPEN) == sorted(s.value for s in OPEN_STAGES)


def test_required_participants_take_either_spelling(monkeypatch):
    monkeypatch.setenv("INTAKE_REQUIRED_PARTICIPANTS", '["dispatch", "public-notification", "notification"]')
    assert IntakeSettings().required_participants == [Participant.dispatch, Participant.notification]
    assert IntakeSettings(required_participants=["shelter-registry"]).required_participants == [Participant.shelter]


def test_an_unknown_participant_is_a_settings_error_naming_the_setting(monkeypatch):
    monkeypatch.setenv("INTAKE_REQUIRED_PARTICIPANTS", '["dispatch", "fire-brigade"]')
    with pytest.raises(ValidationError) as refused:
        IntakeSettings()
    text = str(refused.value)
    assert "INTAKE_REQUIRED_PARTICIPANTS" in text and "fire-brigade" in text and "public-notification" in text


def test_the_openapi_describes_every_answer():
    from incident_intake.main import build_app

    spec = build_app(IntakeSettings()).openapi()
    undescribed = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/v1"):
                continue
            answers = [operation["responses"].get(code) for code in ("200", "201", "202")]
            schemas = [a["content"]["application/json"]["schema"] for a in answers if a and "content" in a]
            if not any("$ref" in s for s in schemas):
                undescribed.append(f"{method.upper()} {path}")
    assert undescribed == []
