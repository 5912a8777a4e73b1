"""pytest plugin: real infrastructure for tests, hermetic on any machine.

* ``nats_server``: a nats-server of our own on a free port with a temporary JetStream store.
* ``pg_server_url``: a PostgreSQL server — the one in ``DATABASE_URL`` when given, else the local one
  on 127.0.0.1:5432, else a testcontainers one where a Docker engine exists, else a private
  ``initdb`` cluster; ``pg_url`` is a throwaway database on it, dropped afterwards.
* ``sqlite_url``: a file database in the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from . import identities
from .broker import nats_server_binary

# A test about to hit its pytest-timeout writes where every asyncio task waits.
pytest_plugins = ["ecs.hangdump"]


async def eventually(probe: Callable[[], Awaitable[Any]], what: str = "", within_s: float = 15.0) -> Any:
    """Await ``probe()`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` (or the probe's name) after ``within_s`` seconds: a test
    waits on the condition it checks, never on the clock.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {within_s} s waiting for {what or getattr(probe, '__name__', probe)}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def nats_binary() -> str:
    """The pinned nats-server (``ecs.broker.nats_server_binary``)."""
    return nats_server_binary()


TEST_GATEWAYS = ("gw-test", "gw-other")
"""Gateways with a NATS identity on every test server (``gateway-<id>``)."""


TEST_BCRYPT_COST = 4
"""The bcrypt cost of the password hashes in the tests' broker configurations: the minimum, so a
server's configuration is written in milliseconds and each connect is checked as fast (at
``identities.DEFAULT_BCRYPT_COST`` a test server would spend a second on its hashes). The
passwords are public (``identity_password``); the hashing is what is tested, not its strength."""


def identity_password(user: str) -> str:
    """The password of a NATS identity on the tests' servers (ecs.identities)."""
    return f"{user}-test-password-0123456789"


def observer_credentials() -> tuple[str, str]:
    """The observer's user and password on the tests' servers (``ecs.identities.OBSERVER``):
    subscribes to every domain's events, publishes nothing."""
    return identities.OBSERVER_USER, identity_password(identities.OBSERVER_USER)


def nats_identity(prefix: str, service: str) -> dict[str, str]:
    """The settings that make ``service`` connect to a test server as its own NATS identity,
    e.g. ``{"DISPATCH_NATS_USER": "dispatch", "DISPATCH_NATS_PASSWORD": ...}``."""
    return {f"{prefix}NATS_USER": service, f"{prefix}NATS_PASSWORD": identity_password(service)}


class NatsServer:
    """A private nats-server with JetStream and the system's NATS identities (ecs.identities):
    every service, the gateways of TEST_GATEWAYS, the observer and ``admin``, each with ``identity_password``.
    ``url`` connects as admin, so a test may publish and inspect anything; ``url_as(user)`` as
    one identity. Restartable on the same port and store.

    ``cluster`` makes it one member of a cluster: ``(name, its route port, the others' route
    ports)``; ``NatsCluster`` builds three of them."""

    def __init__(
        self, store_dir: Path, port: int | None = None, cluster: tuple[str, int, Sequence[int]] | None = None
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_as(identities.ADMIN_USER)

    def url_as(self, user: str) -> str:
        """The server's URL with ``user``'s credentials (a service name, ``gateway-<id>``, admin)."""
        return f"nats://{user}:{identity_password(user)}@127.0.0.1:{self.port}"

    @property
    def bare_url(self) -> str:
        """The server's URL without credentials (refused by the server)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def observer_url(self) -> str:
        """The server's URL as the subscribe-only observer (``ecs watch``, drill runners)."""
        return self.url_as(identities.OBSERVER_USER)

    def _config(self) -> Path:
        extra = [*(identities.gateway(g) for g in TEST_GATEWAYS), identities.OBSERVER]
        users = [*identities.SERVICES, *(i.user for i in extra)]
        path = self.store_dir.parent / f"nats-{self.port}.conf"
        path.write_text(
            identities.server_config(
                {u: identity_password(u) for u in users},
                identity_password(identities.ADMIN_USER),
                extra,
                cost=TEST_BCRYPT_COST,
            )
        )
        return path

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir.parent / f"nats-{self.port}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                nats_binary(),
                "-c",
                str(self._config()),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
                *self._cluster_args(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        return self

    def _cluster_args(self) -> list[str]:
        if self.cluster is None:
            return []
        name, route_port, peers = self.cluster
        routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in peers)
        return [
            "--name",
            f"{name}-{self.port}",
            "--cluster_name",
            name,
            "--cluster",
            f"nats://127.0.0.1:{route_port}",
            "--routes",
            routes,
        ]

    def kill(self) -> None:
        """SIGKILL: the node dies as in a crash, its store as it was on disk."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class NatsCluster:
    """Three nats-servers with JetStream, routed to each other on loopback: a cluster that keeps
    R3 streams available while any one member is down."""

    def __init__(self, root: Path, size: int = 3) -> None:
        route_ports = [free_port() for _ in range(size)]
        self.name = f"ecs-{uuid.uuid4().hex[:6]}"
        self.nodes = [
            NatsServer(
                root / f"node-{i}" / "store",
                cluster=(self.name, route_ports[i], [p for j, p in enumerate(route_ports) if j != i]),
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every member, comma-separated, as the services' NATS URL takes it."""
        return ",".join(n.url for n in self.nodes)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def wait_for_jetstream_cluster(url: str, within_s: float = 60.0) -> None:
    """Wait until the cluster has elected a JetStream meta leader (streams can be created)."""
    import nats

    nc = await nats.connect(url.split(","), connect_timeout=5)
    try:

        async def leader() -> bool:
            try:
                info = await nc.jetstream().account_info()
            except Exception:
                return False
            return info is not None

        await eventually(leader, "a JetStream meta leader", within_s)
    finally:
        await nc.close()


async def assert_exact_delivery(url: str, redeliveries: bool = False) -> dict[str, int]:
    """Every durable consumer on the server got each message on its subjects exactly once, and
    nothing was dead-lettered. Returns {consumer: messages delivered}.

    Raises AssertionError naming the consumer (and the dead letters' subjects and reasons) when a
    consumer was handed a message it does not filter for, a message twice, or left one pending.
    ``redeliveries=True`` accepts messages delivered again (after a broker node or a consumer
    died mid-batch, at-least-once delivery must redeliver); the inbox makes them harmless.
    """
    import nats

    from .bus import DEAD_LETTER_STREAM

    nc = await nats.connect(url.split(","), connect_timeout=5)
    js = nc.jetstream()
    delivered: dict[str, int] = {}
    try:
        dead = await js.stream_info(DEAD_LETTER_STREAM)
        if dead.state.messages:
            reasons = []
            for seq in range(dead.state.first_seq, dead.state.first_seq + min(dead.state.messages, 10)):
                msg = await js.get_msg(DEAD_LETTER_STREAM, seq)
                reasons.append(f"{msg.subject}: {(msg.headers or {}).get('Ecs-Reason')}")
            raise AssertionError(f"{dead.state.messages} dead letters: " + "; ".join(reasons))
        for stream in await js.streams_info():
            if stream.config.name == DEAD_LETTER_STREAM:
                continue
            for consumer in await js.consumers_info(stream.config.name):
                filters = consumer.config.filter_subjects or [consumer.config.filter_subject or ">"]
                on_subjects = 0
                for subject in filters:
                    info = await js.stream_info(stream.config.name, subjects_filter=subject)
                    on_subjects += sum((info.state.subjects or {}).values())
                name = consumer.name
                got = consumer.delivered.consumer_seq
                assert consumer.num_pending == 0 and consumer.num_ack_pending == 0, (
                    f"{name}: {consumer.num_pending} pending, {consumer.num_ack_pending} unacknowledged"
                )
                if redeliveries:
                    assert got >= on_subjects, f"{name} was delivered {got} messages; {on_subjects} are on {filters}"
                else:
                    assert consumer.num_redelivered == 0, f"{name}: {consumer.num_redelivered} redelivered"
                    assert got == on_subjects, f"{name} was delivered {got} messages; {on_subjects} are on {filters}"
                delivered[name] = got
    finally:
        await nc.close()
    return delivered


async def settled_exact_delivery(url: str, redeliveries: bool = False, within_s: float = 30.0) -> dict[str, int]:
    """``assert_exact_delivery`` once the consumers have caught up (their last acks may still be on
    the way); after ``within_s`` seconds its last AssertionError is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        try:
            return await assert_exact_delivery(url, redeliveries)
        except AssertionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A three-node JetStream cluster of the test's own, on loopback."""
    cluster = NatsCluster(tmp_path / "nats-cluster").start()
    asyncio.run(wait_for_jetstream_cluster(cluster.url))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    yield server
    server.stop()


@pytest.fixture
def nats_private(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own: streams and durable consumers start empty."""
    server = NatsServer(tmp_path / "nats-store").start()
    yield server
    server.stop()


async def _can_connect(url: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _docker_engine() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except Exception:
        return False


def _cluster_user() -> str | None:
    """Who runs a private PostgreSQL cluster: ourselves, or an unprivileged account when we are
    root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists for initdb")


def _start_initdb_cluster() -> tuple[str, subprocess.Popen[bytes], Path] | None:
    """A PostgreSQL cluster of our own on a free port: initdb, then postgres, as an unprivileged
    user when we are root. None when PostgreSQL's server binaries are not installed."""
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        return None
    bindir = Path(bins[-1]).parent
    user = _cluster_user()
    # Not under pytest's temporary root: that is private to its owner, and the cluster's user
    # must be able to reach its data directory and socket.
    root = Path(tempfile.mkdtemp(prefix="ecs-pg-"))
    data = root / "pgdata"
    as_user = ["runuser", "-u", user, "--"] if user else []
    if user:
        shutil.chown(root, user)
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root), "-h", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", proc, root


def missing(what: str) -> None:
    """A test cannot run for lack of ``what``: a failure under CI (``CI=true``), where every test
    must run, and a skip on a developer's machine."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} (CI=true: nothing may be skipped)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL on a PostgreSQL server we may create databases on."""
    given = os.environ.get("DATABASE_URL")
    if given and make_url(given).drivername.startswith("postgres"):
        yield given
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if asyncio.run(_can_connect(local)):
        yield local
        return
    if _docker_engine():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine") as pg:
            yield pg.get_connection_url().replace("+psycopg2", "")
        return
    started = _start_initdb_cluster()
    if started is None:
        missing(
            "no PostgreSQL: set DATABASE_URL, run one on 127.0.0.1:5432, provide Docker, "
            "or install PostgreSQL's server (make test installs Debian's postgresql)"
        )
        return
    url, proc, root = started
    yield url
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)


async def create_database(server_url: str, prefix: str = "ecs_test") -> str:
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, url: str) -> None:
    import asyncpg

    name = make_url(url).database
    conn = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A throwaway database, dropped after the test."""
    url = asyncio.run(create_database(pg_server_url))
    yield url
    asyncio.run(drop_database(pg_server_url, url))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The storage tests run on both stores."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield request.getfixturevalue("pg_url")


class ServiceProcess:
    """A service run as a real process (its console script), as the e2e and reliability tests
    need: started, waited for on /readyz, killed with any signal, restarted with the same env."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.command = command
        self.env = env
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing after we return
        # Tests run on their own short secrets unless a test says otherwise (ecs.settings).
        env = {**os.environ, "ECS_DEV_SECRETS": os.environ.get("ECS_DEV_SECRETS", "true"), **self.env}
        self.proc = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.command[0]} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.command[0]} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = 9) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, sig: int = 9, timeout: float = 60.0) -> None:
        self.kill(sig)
        self.start(timeout)


def console_script(name: str) -> str:
    """The path of a console script in the running interpreter's environment."""
    import sys

    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: run `make setup`")
    return found
