"""Where the CLI finds things: the stored token, the services' URLs, the embedded default's files.

An operator's own settings come from the environment (``ECS_TOKEN``, ``ECS_<SERVICE>_URL``,
``ECS_NATS_USER`` ...); the embedded default's files (``var/``, written by ``make up``) are read
when present, from the current directory or else the checkout this package runs from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import identities


@dataclass(frozen=True)
class Service:
    """A service as the CLI addresses it."""

    key: str  # the short name in ECS_<KEY>_URL
    name: str  # the service's own name (make up's port file var/run/<name>.port)
    port: int  # make up's default port


SERVICES = {
    s.key: s
    for s in (
        Service("intake", "incident-intake", 8001),
        Service("dispatch", "dispatch", 8002),
        Service("stockpile", "resource-stockpile", 8003),
        Service("shelter", "shelter-registry", 8004),
        Service("notification", "public-notification", 8005),
    )
}
"""The five services by the short name the environment variables use."""


def var_dir() -> Path:
    """The embedded default's state folder: ``ECS_VAR_DIR``, else ``./var`` when it exists, else
    the checkout's ``var/``."""
    given = os.environ.get("ECS_VAR_DIR")
    if given:
        return Path(given)
    here = Path.cwd() / "var"
    if here.is_dir():
        return here
    # libs/src/ecs/cli/config.py -> the repository root, for an editable install.
    return Path(__file__).resolve().parents[4] / "var"


def service_url(key: str) -> str:
    """The base URL of a service: ``ECS_<KEY>_URL``, else the port ``make up`` recorded for it
    (``var/run/<service>.port``), else its default port on 127.0.0.1."""
    service = SERVICES[key]
    given = os.environ.get(f"ECS_{key.upper()}_URL")
    if given:
        return given.rstrip("/")
    try:
        port = int((var_dir() / "run" / f"{service.name}.port").read_text().strip())
    except (OSError, ValueError):
        port = service.port
    return f"http://127.0.0.1:{port}"


# --- the operator's token ------------------------------------------------------------------------


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/ecs``, by default ``~/.config/ecs``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ecs"


def token_file() -> Path:
    """Where ``ecs login`` keeps the bearer token (mode 0600)."""
    return config_dir() / "token"


def save_token(token: str) -> Path:
    """Store ``token`` for the next commands, readable by its owner only; returns the file."""
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600 from the start: the token is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)
    return path


def forget_token() -> bool:
    """Remove the stored token; False when there was none."""
    try:
        token_file().unlink()
    except FileNotFoundError:
        return False
    return True


def current_token() -> tuple[str, str] | None:
    """The token to send and where it came from: ``ECS_TOKEN``, else the stored one; None if neither."""
    given = os.environ.get("ECS_TOKEN", "").strip()
    if given:
        return given, "ECS_TOKEN"
    try:
        stored = token_file().read_text().strip()
    except OSError:
        return None
    return (stored, str(token_file())) if stored else None


def local_auth_secret() -> str | None:
    """The embedded default's token-signing secret (``var/auth_secret``), if there is one."""
    try:
        return (var_dir() / "auth_secret").read_text().strip() or None
    except OSError:
        return None


# --- NATS ----------------------------------------------------------------------------------------


NATS_DEFAULT_URL = "nats://127.0.0.1:4250"
"""Where ``make up`` runs its nats-server unless ECS_NATS_PORT moved it."""


def nats_url() -> str:
    """The embedded default's NATS URL: the port ``make up`` recorded, else its default."""
    try:
        port = int((var_dir() / "run" / "nats.port").read_text().strip())
    except (OSError, ValueError):
        return NATS_DEFAULT_URL
    return f"nats://127.0.0.1:{port}"


def observer_credentials(user: str | None = None, password: str | None = None) -> tuple[str, str]:
    """The NATS user and password to watch events with: the ones given (``ECS_NATS_USER``,
    ``ECS_NATS_PASSWORD``), else the observer's password in the embedded default's
    ``var/secrets.json``. Raises LookupError saying what is missing."""
    user = user or identities.OBSERVER_USER
    if password:
        return user, password
    secrets_file = var_dir() / "secrets.json"
    try:
        return user, identities.local_password(user, secrets_file)
    except (OSError, ValueError, KeyError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) else f"cannot read {secrets_file}"
        raise LookupError(f"no NATS password for {user}: {reason}; set ECS_NATS_PASSWORD or run 'make up'") from None
