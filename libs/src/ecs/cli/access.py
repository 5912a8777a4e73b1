"""Tokens and signatures: ``ecs token``, ``ecs sign``, ``ecs login``, ``ecs logout``, ``ecs whoami``.

``ecs token --role dispatcher --subject alice`` prints a bearer token signed with the local secret
(the embedded default); ``ecs login`` stores one for the other commands; ``ecs sign`` signs a
gateway request body.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import jwt
import typer

from ..auth import Role, TokenVerifier
from ..signing import sign as signature
from . import config
from .client import fail
from .output import JsonFlag, facts, print_json, show

Roles = Annotated[list[Role], typer.Option("--role", "-r", help="a role to grant; repeat for several")]
Secret = Annotated[str | None, typer.Option(envvar="ECS_AUTH_SECRET", help="the shared signing secret")]
SecretFile = Annotated[
    Path | None, typer.Option(help="read the secret from this file (default for login: var/auth_secret)")
]
Hours = Annotated[float, typer.Option(min=0.01, max=24 * 30, help="how long the token is valid")]


def _issue(roles: list[Role], subject: str, secret: str | None, hours: float) -> str:
    return TokenVerifier(secret or "").issue(subject, [r.value for r in roles], int(hours * 3600))


def token(
    role: Roles,
    subject: Annotated[str, typer.Option("--subject", "-s", help="who the token is for")] = "operator",
    secret: Secret = None,
    secret_file: SecretFile = None,
    hours: Hours = 12,
) -> None:
    """Print an operator token for the embedded default's local secret."""
    if secret_file is not None:
        secret = _read_secret(secret_file)
    if not secret:
        typer.echo("no secret: pass --secret, --secret-file or set ECS_AUTH_SECRET", err=True)
        raise typer.Exit(2)
    typer.echo(_issue(role, subject, secret, hours))


def sign(
    secret: Annotated[str, typer.Option(help="the gateway's secret")],
    body_file: Annotated[Path, typer.Argument(help="the exact request body; - for stdin")],
) -> None:
    """Print the X-Timestamp and X-Signature headers of a 110 gateway request."""
    body = sys.stdin.buffer.read() if str(body_file) == "-" else body_file.read_bytes()
    ts = str(int(time.time()))
    typer.echo(f"X-Timestamp: {ts}")
    typer.echo(f"X-Signature: {signature(secret, ts, body)}")


def login(
    token: Annotated[str | None, typer.Option("--token", help="a bearer token you were given")] = None,
    role: Annotated[
        list[Role] | None, typer.Option("--role", "-r", help="sign a token with these roles (embedded default)")
    ] = None,
    subject: Annotated[str | None, typer.Option("--subject", "-s", help="who you are, for a signed token")] = None,
    secret: Secret = None,
    secret_file: SecretFile = None,
    hours: Hours = 12,
) -> None:
    """Store a bearer token for the next commands ($XDG_CONFIG_HOME/ecs/token, mode 0600).

    Either --token T, or --role R --subject S to sign one with the embedded default's local
    secret (--secret, ECS_AUTH_SECRET, --secret-file or var/auth_secret). ECS_TOKEN, when set,
    overrides the stored token."""
    if (token is None) == (not role):
        raise typer.BadParameter("give either --token, or --role with --subject", param_hint="--token / --role")
    if token is None:
        if not subject:
            raise typer.BadParameter("a signed token needs --subject (who you are)", param_hint="--subject")
        if secret_file is not None:
            secret = _read_secret(secret_file)
        secret = secret or config.local_auth_secret()
        if not secret:
            fail(
                f"no signing secret: pass --secret or --secret-file, set ECS_AUTH_SECRET, or run 'make up' "
                f"(it writes {config.var_dir() / 'auth_secret'})"
            )
        token = _issue(role or [], subject, secret, hours)
    claims = _claims(token.strip())
    path = config.save_token(token.strip())
    typer.echo(f"logged in as {_who(claims)}; token stored in {path}")


def logout() -> None:
    """Forget the stored token."""
    if config.forget_token():
        typer.echo(f"logged out: removed {config.token_file()}")
    else:
        typer.echo("no token was stored")


def whoami(as_json: JsonFlag = False) -> None:
    """Who the next commands act as: subject, roles, expiry, and where the token comes from."""
    found = config.current_token()
    if found is None:
        fail("not logged in: run 'ecs login' (or set ECS_TOKEN)")
    token, source = found
    claims = _claims(token)
    if as_json:
        print_json({**claims, "source": source})
        return
    expires = claims.get("exp")
    left = f"{(expires - time.time()) / 3600:.1f} h left" if isinstance(expires, int | float) else ""
    if isinstance(expires, int | float) and expires < time.time():
        left = "EXPIRED: log in again"
    show(
        facts(
            None,
            [
                ("subject", claims.get("sub")),
                ("roles", ", ".join(claims.get("roles") or [])),
                ("expires", f"{_time(expires)}  ({left})" if expires else None),
                ("token from", source),
            ],
        )
    )


def _claims(token: str) -> dict[str, Any]:
    """The token's claims, unverified: the services verify it; this only says what it claims."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        fail(f"this is not a bearer token (JWT): {exc}")
    return claims


def _who(claims: dict[str, Any]) -> str:
    roles = ", ".join(claims.get("roles") or []) or "no roles"
    expires = claims.get("exp")
    until = f" until {_time(expires)}" if expires else ""
    return f"{claims.get('sub', '?')} ({roles}){until}"


def _time(epoch: Any) -> str:
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError):
        return str(epoch)


def _read_secret(path: Path) -> str:
    """The secret in ``path``; ends the command naming the file when it cannot be read as text."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"cannot read the secret from {path}: {exc}", err=True)
        raise typer.Exit(1) from None
