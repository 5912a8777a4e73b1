"""Where code may live, in every service (STYLE.md, "The shape of a service"): the rules import no
infrastructure and do no I/O; routes, consumers and handlers import no SQLAlchemy (SQL is in
``store.py`` and, for reading, ``views.py``); routes reach shared objects through dependencies.

Runs over every package under ``services/*/src/``, so a new service is checked from its first day.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p for p in ROOT.glob("services/*/src/*") if (p / "__init__.py").exists())

INFRASTRUCTURE = {"sqlalchemy", "fastapi", "starlette", "nats", "asyncpg", "aiosqlite", "httpx", "uvicorn", "os"}
FILE_IO = {"pathlib", "io", "shutil", "tempfile"}
OUTER_LAYERS = {"store", "views", "handlers", "api", "consumers", "main", "context", "directory", "plans"}


def modules(package: Path, *names: str) -> list[Path]:
    """The files of the named modules or subpackages of a service package."""
    found: list[Path] = []
    for name in names:
        if (package / f"{name}.py").exists():
            found.append(package / f"{name}.py")
        found.extend(sorted((package / name).glob("*.py")) if (package / name).is_dir() else [])
    return found


def cases(*names: str) -> list[pytest.param]:
    return [
        pytest.param(path, id=str(path.relative_to(ROOT / "services")))
        for package in PACKAGES
        for path in modules(package, *names)
    ]


def imports(path: Path) -> set[str]:
    """Every module a file imports, as written (relative ones keep their leading dots)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def top(name: str) -> str:
    return name.lstrip(".").split(".")[0] if not name.startswith(".") else name


def test_every_service_is_checked():
    assert {p.name for p in PACKAGES} >= {"incident_intake", "dispatch"}


@pytest.mark.parametrize("path", cases("domain", "commands", "correlation"))
def test_the_rules_import_no_infrastructure_and_do_no_file_io(path: Path):
    found = {n for n in imports(path) if not n.startswith(".") and top(n) in INFRASTRUCTURE | FILE_IO}
    assert found == set(), f"{path.name} imports {sorted(found)}"
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
    opened = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "open"]
    assert not opened, f"{path.name} opens files"


@pytest.mark.parametrize("path", cases("domain", "commands", "correlation"))
def test_the_rules_do_not_reach_outwards(path: Path):
    outward = {n for n in imports(path) if n.startswith(".") and n.lstrip(".").split(".")[0] in OUTER_LAYERS}
    assert outward == set(), f"{path.name} imports {sorted(outward)}"


@pytest.mark.parametrize("path", cases("api", "consumers", "handlers"))
def test_routes_consumers_and_handlers_hold_no_sql(path: Path):
    assert not {n for n in imports(path) if top(n) == "sqlalchemy"}, f"{path.name} imports SQLAlchemy"


@pytest.mark.parametrize("path", cases("api"))
def test_routes_reach_shared_objects_through_dependencies(path: Path):
    """``request.app.state`` is read only in the small dependency functions, never in a route."""
    tree = ast.parse(path.read_text())
    routes = [
        f
        for f in ast.walk(tree)
        if isinstance(f, ast.AsyncFunctionDef | ast.FunctionDef)
        and any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) for d in f.decorator_list)
    ]
    assert routes, f"{path.name} declares no routes"
    for route in routes:
        text = ast.unparse(route)
        assert "app.state" not in text, f"route {route.name} in {path.name} reads app.state"


@pytest.mark.parametrize("package", [pytest.param(p.name, id=p.name) for p in PACKAGES])
def test_the_openapi_describes_every_answer(package: str):
    """Every successful answer of the operator API has a declared schema (``response_model``), or,
    for a document that is not JSON (PFIF XML), a declared media type with its schema."""
    import importlib

    spec = importlib.import_module(f"{package}.main").build_app().openapi()
    undescribed = []
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if not status.startswith("2") or status == "204":
                    continue
                content = answer.get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                xml = content.get("application/xml", {}).get("schema", {})
                if "$ref" not in schema and not (set(content) == {"application/xml"} and xml.get("type")):
                    undescribed.append(f"{method.upper()} {path} {status}")
    assert undescribed == []


SERVICE_APPS = [
    ("incident_intake", "incident_intake.main"),
    ("dispatch", "dispatch.main"),
    ("resource_stockpile", "resource_stockpile.main"),
    ("shelter_registry", "shelter_registry.main"),
    ("public_notification", "public_notification.main"),
]


def _routes(routes):
    """Every route of an app, through the routers it includes (included lazily or not)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def _dependencies(dependant):
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _dependencies(dep)


@pytest.mark.parametrize(("package", "module"), SERVICE_APPS, ids=[p for p, _ in SERVICE_APPS])
def test_no_route_dependency_hops_to_the_thread_pool(package, module, monkeypatch):
    """FastAPI runs a plain ``def`` dependency in its thread pool: a thread hop, and a wait for a
    free thread under load, on every request. Every dependency of every route is async."""
    import importlib
    import inspect

    monkeypatch.setenv("ECS_DEV_SECRETS", "true")
    app = importlib.import_module(module).build_app()
    sync = set()
    for route in _routes(app.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            continue
        for call in _dependencies(dependant):
            target = call if inspect.isfunction(call) or inspect.ismethod(call) else type(call).__call__
            if not inspect.iscoroutinefunction(target):
                sync.add(f"{route.path}: {getattr(call, '__qualname__', type(call).__qualname__)}")
    assert not sync, sorted(sync)
