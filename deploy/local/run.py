"""Run the embedded default on one machine: a nats-server with JetStream, SQLite files and every
service as a local process, all state under var/.

    python deploy/local/run.py up       start what is not running yet, wait until ready, print URLs
    python deploy/local/run.py down     stop the services, then NATS
    python deploy/local/run.py status   what is running and ready
    python deploy/local/run.py logs     the last lines of each log

Layout under var/: auth_secret (signs operator tokens), gateways.json (gateway secrets),
secrets.json (NATS passwords of every identity, the caller pepper and other service secrets),
nats.conf (the broker's users, their permissions from ecs.identities and only the bcrypt hashes of
their passwords), data/ (SQLite files), nats/ (JetStream store), log/ (one log per process), run/
(pid and port files).

Environment: ECS_NATS_PORT moves NATS off 4250. A service's own <PREFIX>DATABASE_URL,
<PREFIX>HTTP_PORT, <PREFIX>LOG_LEVEL or <PREFIX>LOG_JSON, when set, wins over the default here;
its NATS URL and auth secret always come from this supervisor so the pieces fit together.

Only the standard library is used, so `down`, `status` and `logs` work without the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
LOG_DIR = VAR / "log"
DATA_DIR = VAR / "data"
RUN_DIR = VAR / "run"
NATS_STORE = VAR / "nats"
AUTH_SECRET_FILE = VAR / "auth_secret"
GATEWAYS_FILE = VAR / "gateways.json"
SECRETS_FILE = VAR / "secrets.json"
NATS_CONFIG = VAR / "nats.conf"
DEMO_GATEWAY = "demo-gw"
DRILL_GATEWAY = "drill-gw"  # the exercise gateway `ecs drill run` signs its alarms with
GATEWAY_IDS = (DEMO_GATEWAY, DRILL_GATEWAY)

NATS_HOST = "127.0.0.1"
NATS_DEFAULT_PORT = 4250  # not 4222: a system nats-server may already hold that

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 50


@dataclass(frozen=True)
class Service:
    name: str  # folder under services/ and console script
    module: str  # import name, runnable with `python -m`
    short: str  # SQLite file name
    prefix: str  # settings env prefix
    port: int  # default HTTP port

    @property
    def present(self) -> bool:
        return (ROOT / "services" / self.name / "pyproject.toml").is_file()


# Every service of the monorepo; one whose folder has no pyproject.toml yet is skipped.
SERVICES = [
    Service("incident-intake", "incident_intake", "intake", "INTAKE_", 8001),
    Service("dispatch", "dispatch", "dispatch", "DISPATCH_", 8002),
    Service("resource-stockpile", "resource_stockpile", "stockpile", "STOCKPILE_", 8003),
    Service("shelter-registry", "shelter_registry", "shelter", "SHELTER_", 8004),
    Service("public-notification", "public_notification", "notification", "NOTIFICATION_", 8005),
]

# Secret settings a service needs besides its auth secret and NATS password, by settings prefix;
# each gets a random value on the first `up` (kept in var/secrets.json).
SERVICE_SECRETS = {"INTAKE_": ("CALLER_PEPPER",), "SHELTER_": ("PII_KEY",)}

# The services whose settled facts incident-intake waits for before an incident may close.
LIFECYCLE_PARTICIPANTS = {"dispatch", "resource-stockpile", "shelter-registry", "public-notification"}


# ---------------------------------------------------------------- processes and pid files


def pidfile(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def portfile(name: str) -> Path:
    return RUN_DIR / f"{name}.port"


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int, markers: tuple[str, ...]) -> bool:
    """True when pid runs and is ours: a stale pid file must never make us signal a stranger."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    proc = Path("/proc") / str(pid)
    if not proc.exists():
        return True  # no /proc to ask: trust the signal check
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    return any(marker in cmdline for marker in markers)


def running_pid(name: str, markers: tuple[str, ...]) -> int | None:
    pid = read_int(pidfile(name))
    if pid is not None and is_alive(pid, markers):
        return pid
    return None


def service_markers(service: Service) -> tuple[str, ...]:
    return (service.name, service.module)


NATS_MARKERS = ("nats-server",)


def nats_port() -> int:
    """The port our nats-server was started on, else the one it would start on now."""
    if running_pid("nats", NATS_MARKERS) is not None:
        recorded = read_int(portfile("nats"))
        if recorded is not None:
            return recorded
    return int(os.environ.get("ECS_NATS_PORT", NATS_DEFAULT_PORT))


def nats_url() -> str:
    return f"nats://{NATS_HOST}:{nats_port()}"


def spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n===== {stamp} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: survives this script, stopped as a group
        )
    pidfile(name).write_text(f"{proc.pid}\n")
    return proc


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(targets: list[tuple[str, int, tuple[str, ...]]]) -> None:
    """SIGTERM all targets, wait for them together, SIGKILL what is left."""
    for name, pid, _ in targets:
        print(f"  stopping {name} (pid {pid})")
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    remaining = list(targets)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.2)
        remaining = [t for t in remaining if is_alive(t[1], t[2])]
    for name, pid, _ in remaining:
        print(f"  {name} (pid {pid}) did not stop in {STOP_TIMEOUT_S:.0f} s: killing it")
        signal_group(pid, signal.SIGKILL)
    for name, _, _ in targets:
        pidfile(name).unlink(missing_ok=True)
        portfile(name).unlink(missing_ok=True)


# ---------------------------------------------------------------- readiness


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(name: str, lines: int = LOG_TAIL_LINES) -> str:
    path = LOG_DIR / f"{name}.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path.relative_to(ROOT)})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(name: str, check, pid: int, markers: tuple[str, ...], proc: subprocess.Popen | None) -> str | None:
    """Wait for check() to pass; return None when it did, else why not."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    next_dot = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if check():
            return None
        exited = proc.poll() is not None if proc is not None else not is_alive(pid, markers)
        if exited:
            code = f" with code {proc.returncode}" if proc is not None else ""
            return f"{name} exited{code}"
        if time.monotonic() >= next_dot:
            print(f"  waiting for {name} ...", flush=True)
            next_dot += 5.0
        time.sleep(0.25)
    return f"{name} was not ready within {READY_TIMEOUT_S:.0f} s"


# ---------------------------------------------------------------- up


def ensure_files() -> None:
    for folder in (VAR, LOG_DIR, DATA_DIR, RUN_DIR, NATS_STORE):
        folder.mkdir(parents=True, exist_ok=True)
    if not AUTH_SECRET_FILE.exists():
        write_private(AUTH_SECRET_FILE, secrets.token_urlsafe(32) + "\n")
        print(f"  created {AUTH_SECRET_FILE.relative_to(ROOT)}")
    gateways = json.loads(GATEWAYS_FILE.read_text()) if GATEWAYS_FILE.exists() else {"gateways": {}}
    missing = [g for g in GATEWAY_IDS if g not in gateways["gateways"]]
    if missing:
        gateways["gateways"].update({g: {"secret": secrets.token_urlsafe(32)} for g in missing})
        tmp = GATEWAYS_FILE.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private(tmp, json.dumps(gateways, indent=2) + "\n")
        tmp.replace(GATEWAYS_FILE)
        print(f"  {GATEWAYS_FILE.relative_to(ROOT)}: added gateway(s) {', '.join(missing)}")
    local_secrets()


def local_secrets() -> dict[str, str]:
    """var/secrets.json: a random value for every NATS identity (services, the demo and drill gateways,
    the observer that `ecs watch` connects as, admin) and every SERVICE_SECRETS setting; missing
    ones are added, existing ones kept."""
    known: dict[str, str] = json.loads(SECRETS_FILE.read_text()) if SECRETS_FILE.exists() else {}
    wanted = [f"nats:{s.name}" for s in SERVICES] + [f"nats:gateway-{g}" for g in GATEWAY_IDS]
    wanted += ["nats:observer", "nats:admin"]
    wanted += [prefix + name for prefix, names in SERVICE_SECRETS.items() for name in names]
    missing = [k for k in wanted if k not in known]
    if missing:
        known.update({k: secrets.token_urlsafe(32) for k in missing})
        tmp = SECRETS_FILE.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_private(tmp, json.dumps(known, indent=2, sort_keys=True) + "\n")
        tmp.replace(SECRETS_FILE)
    return known


def write_nats_config() -> None:
    """var/nats.conf: a user per identity with its permissions (ecs.identities) and the bcrypt
    hash of its password (cost ``identities.DEFAULT_BCRYPT_COST``, about a second for all of
    them); the clear passwords stay in var/secrets.json, which only the clients read."""
    from ecs import identities

    known = local_secrets()
    passwords = {k.removeprefix("nats:"): v for k, v in known.items() if k.startswith("nats:")}
    extra = [*(identities.gateway(g) for g in GATEWAY_IDS), identities.OBSERVER]
    text = identities.server_config(passwords, passwords.pop("admin"), extra)
    NATS_CONFIG.unlink(missing_ok=True)
    write_private(NATS_CONFIG, text)


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def nats_binary() -> str | None:
    """The pinned nats-server that `make setup` put into .venv (ecs.broker); None if missing."""
    from ecs.broker import nats_server_binary

    try:
        return nats_server_binary()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return None


def start_nats() -> bool:
    pid = running_pid("nats", NATS_MARKERS)
    port = nats_port()
    if pid is not None:
        print(f"  nats-server already running (pid {pid}) on {nats_url()}")
        return True
    binary = nats_binary()
    if binary is None:
        print("nats-server is not installed: run 'make setup'", file=sys.stderr)
        return False
    if port_open(NATS_HOST, port):
        print(
            f"port {port} is already taken by another process; set ECS_NATS_PORT to a free port",
            file=sys.stderr,
        )
        return False
    write_nats_config()
    argv = [binary, "-c", str(NATS_CONFIG), "-js", "-sd", str(NATS_STORE), "-a", NATS_HOST, "-p", str(port)]
    proc = spawn("nats", argv, dict(os.environ))
    portfile("nats").write_text(f"{port}\n")
    print(f"  started nats-server (pid {proc.pid}) on {nats_url()}")
    problem = wait_until("nats-server", lambda: port_open(NATS_HOST, port), proc.pid, NATS_MARKERS, proc)
    if problem:
        report_failure("nats", problem)
        if is_alive(proc.pid, NATS_MARKERS):
            stop([("nats", proc.pid, NATS_MARKERS)])
        return False
    return True


def service_env(service: Service, auth_secret: str) -> dict[str, str]:
    env = dict(os.environ)
    p = service.prefix
    defaults = {
        "DATABASE_URL": f"sqlite:///{DATA_DIR / (service.short + '.db')}",
        "HTTP_PORT": str(service.port),
        "LOG_LEVEL": "INFO",
        "LOG_JSON": "false",
    }
    for key, value in defaults.items():
        env.setdefault(p + key, value)
    env[p + "HTTP_HOST"] = "127.0.0.1"
    env[p + "NATS_URL"] = nats_url()
    env[p + "AUTH_SECRET"] = auth_secret
    known = local_secrets()
    env[p + "NATS_USER"] = service.name
    env[p + "NATS_PASSWORD"] = known[f"nats:{service.name}"]
    for name in SERVICE_SECRETS.get(p, ()):
        env[p + name] = known[p + name]
    if service.name == "incident-intake":
        env[p + "GATEWAYS_FILE"] = str(GATEWAYS_FILE)
        # The lifecycle waits for every lifecycle participant that runs here before closing.
        participants = [s.name for s in SERVICES if s.present and s.name in LIFECYCLE_PARTICIPANTS]
        env.setdefault(p + "REQUIRED_PARTICIPANTS", json.dumps(participants))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def service_argv(service: Service) -> list[str]:
    for bindir in (ROOT / ".venv" / "bin", Path(sys.executable).parent):
        script = bindir / service.name
        if os.access(script, os.X_OK):
            return [str(script)]
    return [sys.executable, "-m", service.module]


def service_port(service: Service) -> int:
    """The port a running service was started on, else the one it would start on now."""
    recorded = read_int(portfile(service.name))
    if recorded is not None:
        return recorded
    return int(os.environ.get(service.prefix + "HTTP_PORT", service.port))


def ready_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/readyz"


def report_failure(name: str, problem: str) -> None:
    print(f"\n{problem}. Last lines of var/log/{name}.log:", file=sys.stderr)
    print(log_tail(name, 30), file=sys.stderr)
    print("", file=sys.stderr)


def cmd_up(_: argparse.Namespace) -> int:
    present = [s for s in SERVICES if s.present]
    skipped = [s.name for s in SERVICES if not s.present]
    ensure_files()
    if not start_nats():
        return 1
    auth_secret = AUTH_SECRET_FILE.read_text().strip()

    # Start everything first, then wait: the services boot in parallel.
    waiting: list[tuple[Service, int, int, subprocess.Popen | None]] = []
    failures: list[str] = []
    for service in present:
        pid = running_pid(service.name, service_markers(service))
        if pid is not None:
            port = service_port(service)
            print(f"  {service.name} already running (pid {pid}) on port {port}")
            waiting.append((service, pid, port, None))
            continue
        env = service_env(service, auth_secret)
        port = int(env[service.prefix + "HTTP_PORT"])
        if port_open("127.0.0.1", port):
            print(
                f"port {port} for {service.name} is taken by another process: set {service.prefix}HTTP_PORT"
                " to a free port (see README, Configuration)",
                file=sys.stderr,
            )
            failures.append(service.name)
            continue
        proc = spawn(service.name, service_argv(service), env)
        portfile(service.name).write_text(f"{port}\n")
        print(f"  started {service.name} (pid {proc.pid}) on port {port}")
        waiting.append((service, proc.pid, port, proc))

    ready: list[tuple[Service, int]] = []
    for service, pid, port, proc in waiting:
        markers = service_markers(service)
        problem = wait_until(service.name, lambda port=port: http_ok(ready_url(port)), pid, markers, proc)
        if problem:
            report_failure(service.name, problem)
            if is_alive(pid, markers):
                stop([(service.name, pid, markers)])
            else:
                pidfile(service.name).unlink(missing_ok=True)
                portfile(service.name).unlink(missing_ok=True)
            failures.append(service.name)
        else:
            print(f"  {service.name} is ready")
            ready.append((service, port))

    print_summary(ready, skipped)
    if failures:
        print(
            f"\nnot running: {', '.join(failures)}. The rest keeps running; 'make down' stops it.",
            file=sys.stderr,
        )
        return 1
    return 0


def print_summary(ready: list[tuple[Service, int]], skipped: list[str]) -> None:
    rows = [("service", "API", "docs")]
    for service, port in ready:
        base = f"http://127.0.0.1:{port}"
        rows.append((service.name, base, f"{base}/docs"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    if not ready:
        print("  no service is running")
    for row in rows if ready else []:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print()
    facts = [
        ("NATS", f"{nats_url()}  (JetStream store var/nats/)"),
        ("logs", "var/log/<service>.log  (make logs)"),
        ("gateway", f"{DEMO_GATEWAY}, its secret in {GATEWAYS_FILE.relative_to(ROOT)}"),
        ("token", "make token ROLE=dispatcher SUBJECT=alice"),
        ("status", "make status"),
        ("stop", "make down"),
    ]
    if skipped:
        facts.append(("skipped", f"{', '.join(skipped)} (no pyproject.toml yet)"))
    for label, value in facts:
        print(f"  {label:<8}  {value}")


# ---------------------------------------------------------------- down, status, logs


def cmd_down(_: argparse.Namespace) -> int:
    services = []
    for service in SERVICES:
        markers = service_markers(service)
        pid = running_pid(service.name, markers)
        if pid is None:
            pidfile(service.name).unlink(missing_ok=True)
            portfile(service.name).unlink(missing_ok=True)
        else:
            services.append((service.name, pid, markers))
    if services:
        stop(services)
    nats_pid = running_pid("nats", NATS_MARKERS)
    if nats_pid is not None:
        stop([("nats", nats_pid, NATS_MARKERS)])
    else:
        pidfile("nats").unlink(missing_ok=True)
        portfile("nats").unlink(missing_ok=True)
    if not services and nats_pid is None:
        print("  nothing was running")
    else:
        print("  stopped")
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    rows = [("process", "pid", "state", "address")]
    all_ready = True
    nats_pid = running_pid("nats", NATS_MARKERS)
    nats_state = "stopped" if nats_pid is None else "ready" if port_open(NATS_HOST, nats_port()) else "not ready"
    all_ready &= nats_state == "ready"
    rows.append(("nats-server", str(nats_pid or "-"), nats_state, nats_url()))
    for service in SERVICES:
        if not service.present:
            rows.append((service.name, "-", "not built yet", "-"))
            continue
        pid = running_pid(service.name, service_markers(service))
        port = service_port(service)
        state = "stopped" if pid is None else "ready" if http_ok(ready_url(port)) else "not ready"
        all_ready &= state == "ready"
        rows.append((service.name, str(pid or "-"), state, f"http://127.0.0.1:{port}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0 if all_ready else 3


def cmd_logs(args: argparse.Namespace) -> int:
    names = ["nats"] + [s.name for s in SERVICES if s.present]
    for name in names:
        print(f"==================== var/log/{name}.log ====================")
        print(log_tail(name, args.lines))
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Run NATS and the services locally, with all state under var/.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start what is not running, wait until ready, print URLs")
    commands.add_parser("down", help="stop the services, then NATS")
    commands.add_parser("status", help="show what is running and ready (exit 3 if not all)")
    logs = commands.add_parser("logs", help="print the last lines of each log")
    logs.add_argument("-n", "--lines", type=int, default=LOG_TAIL_LINES)
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep progress and errors in order when piped
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "logs": cmd_logs}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
