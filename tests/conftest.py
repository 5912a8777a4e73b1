"""Shared fixtures: real NATS, real PostgreSQL, services as real processes (see ecs.testing)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ecs.auth import TokenVerifier
from ecs.gateway_client import GatewayClient
from ecs.testing import NatsServer, ServiceProcess, console_script, free_port, nats_identity

# Services started in this process or as processes accept the tests' short secrets (ecs.settings).
os.environ.setdefault("ECS_DEV_SECRETS", "true")

AUTH_SECRET = "test-auth-secret-0123456789abcdef"
GATEWAY_ID = "gw-test"
GATEWAY_SECRET = "gw-test-secret-0123456789"


# The loggers ecs.logs.configure_logging sets up (the root, with its handler on the sys.stdout of
# the moment, and the levels it pins).
_CONFIGURED_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "alembic", "sqlalchemy.engine", "aiosqlite")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that configures logging (a unit test at DEBUG, a service run in this process) leaves
    the standard library's loggers as it found them. Otherwise the root handler it added goes on
    writing to that test's captured sys.stdout, closed once the test is over, and a DEBUG level
    set for it lets later tests' records (aiosqlite's thread logs every call) reach that handler:
    "--- Logging error --- ... I/O operation on closed file" in the CI log."""
    saved = []
    for name in _CONFIGURED_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, list(lg.handlers), lg.propagate, list(lg.filters)))
    yield
    for lg, level, handlers, propagate, filters in saved:
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.filters[:] = filters


@pytest.fixture
def tokens() -> TokenVerifier:
    return TokenVerifier(AUTH_SECRET)


@pytest.fixture
def operator_headers(tokens: TokenVerifier) -> Callable[..., dict[str, str]]:
    def make(*roles: str, subject: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(subject, list(roles) or ['dispatcher', 'commander'])}"}

    return make


def start_intake(root: Path, nats_url: str, database_url: str | None = None, **extra_env: str) -> ServiceProcess:
    """incident-intake as a real process, its gateways file and log under root."""
    gateways = root / "gateways.json"
    gateways.write_text(json.dumps({"gateways": {GATEWAY_ID: {"secret": GATEWAY_SECRET}}}))
    port = free_port()
    env = {
        "INTAKE_DATABASE_URL": database_url or f"sqlite:///{root / 'intake.db'}",
        "INTAKE_NATS_URL": nats_url,
        "INTAKE_HTTP_PORT": str(port),
        "INTAKE_AUTH_SECRET": AUTH_SECRET,
        "INTAKE_GATEWAYS_FILE": str(gateways),
        "INTAKE_LOG_LEVEL": "WARNING",
        **nats_identity("INTAKE_", "incident-intake"),
        **extra_env,
    }
    return ServiceProcess([console_script("incident-intake")], env, port, root / f"intake-{port}.log").start()


@pytest.fixture
def intake_factory(tmp_path: Path, nats_private: NatsServer) -> Iterator[Callable[..., ServiceProcess]]:
    """Start incident-intake processes: ``intake_factory(database_url, **extra_env)``.

    Each call starts one more replica on its own port, all on the test's own nats-server;
    all are stopped after the test. Extra settings are given without their prefix.
    """
    started: list[ServiceProcess] = []

    def start(database_url: str, nats_url: str | None = None, **extra: str) -> ServiceProcess:
        env = {f"INTAKE_{k.upper()}": v for k, v in extra.items()}
        proc = start_intake(tmp_path, nats_url or nats_private.url, database_url, **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


# A module that defines ``intake_stack`` (one intake and its nats-server for the whole module)
# gets these for its tests.


@pytest.fixture(scope="module")
def intake(intake_stack: tuple[ServiceProcess, NatsServer]) -> ServiceProcess:
    return intake_stack[0]


@pytest.fixture(scope="module")
def intake_nats(intake_stack: tuple[ServiceProcess, NatsServer]) -> NatsServer:
    """The nats-server the module's intake is connected to."""
    return intake_stack[1]


@pytest.fixture
async def gw(intake: ServiceProcess) -> AsyncIterator[GatewayClient]:
    client = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    yield client
    await client.aclose()


@pytest.fixture
def dispatch_factory(tmp_path: Path, nats_private: NatsServer) -> Iterator[Callable[..., ServiceProcess]]:
    """Start dispatch processes: ``dispatch_factory(database_url, **extra_env)``.

    Each call starts one more replica on its own port, all on the test's own nats-server unless
    ``nats_url`` says otherwise; all are stopped after the test.
    """
    started: list[ServiceProcess] = []

    def start(database_url: str, nats_url: str | None = None, **extra: str) -> ServiceProcess:
        port = free_port()
        env = {
            "DISPATCH_DATABASE_URL": database_url,
            "DISPATCH_NATS_URL": nats_url or nats_private.url,
            "DISPATCH_HTTP_PORT": str(port),
            "DISPATCH_AUTH_SECRET": AUTH_SECRET,
            "DISPATCH_LOG_LEVEL": "WARNING",
            **nats_identity("DISPATCH_", "dispatch"),
            **{f"DISPATCH_{k.upper()}": v for k, v in extra.items()},
        }
        proc = ServiceProcess([console_script("dispatch")], env, port, tmp_path / f"dispatch-{port}.log")
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def service_factory(tmp_path: Path, nats_private: NatsServer) -> Iterator[Callable[..., ServiceProcess]]:
    """Start any service as a real process: ``service_factory(script, prefix, database_url, **settings)``,
    e.g. ``service_factory("resource-stockpile", "STOCKPILE_", pg_url, min_shelf_life_days="30")``.

    Each call starts one more replica on its own port, on the test's own nats-server unless
    ``nats_url`` says otherwise; settings are given without their prefix; all are stopped after
    the test.
    """
    started: list[ServiceProcess] = []

    def start(script: str, prefix: str, database_url: str, nats_url: str | None = None, **extra: str) -> ServiceProcess:
        port = free_port()
        env = {
            f"{prefix}DATABASE_URL": database_url,
            f"{prefix}NATS_URL": nats_url or nats_private.url,
            f"{prefix}HTTP_PORT": str(port),
            f"{prefix}AUTH_SECRET": AUTH_SECRET,
            f"{prefix}LOG_LEVEL": "WARNING",
            **nats_identity(prefix, script),
            **{f"{prefix}{k.upper()}": v for k, v in extra.items()},
        }
        proc = ServiceProcess([console_script(script)], env, port, tmp_path / f"{script}-{port}.log")
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def dispatch_app(nats_private: NatsServer) -> Callable[..., object]:
    """Run dispatch in this process: ``async with dispatch_app(database_url, **settings) as (app, client)``.

    The app's lifespan runs for real (migrations, NATS, consumers, outbox relay); ``client`` is an
    httpx client speaking to the app directly, without a socket.
    """
    import contextlib

    import httpx

    @contextlib.asynccontextmanager
    async def run(database_url: str, nats_url: str | None = None, **overrides: object):  # type: ignore[no-untyped-def]
        from dispatch.main import build_app
        from dispatch.settings import DispatchSettings

        settings = DispatchSettings(
            database_url=database_url,
            nats_url=nats_url or nats_private.url,
            auth_secret=AUTH_SECRET,
            log_level="WARNING",
            nats_user="dispatch",
            nats_password=nats_identity("", "dispatch")["NATS_PASSWORD"],
            **overrides,
        )
        app = build_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dispatch") as client,
        ):
            yield app, client

    return run
