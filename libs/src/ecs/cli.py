"""`ecs`: operator tools. `ecs token --role dispatcher --subject alice` prints a bearer token
signed with the local secret (the embedded default); `ecs sign` signs a gateway request body."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .auth import Role, TokenVerifier
from .signing import sign as signature

app = typer.Typer(help="Emergency command system: operator tools.", no_args_is_help=True, add_completion=False)


@app.command()
def token(
    role: Annotated[list[Role], typer.Option("--role", "-r", help="a role to grant; repeat for several")],
    subject: Annotated[str, typer.Option("--subject", "-s", help="who the token is for")] = "operator",
    secret: Annotated[str | None, typer.Option(envvar="ECS_AUTH_SECRET", help="the shared signing secret")] = None,
    secret_file: Annotated[
        Path | None, typer.Option(help="read the secret from this file (e.g. var/auth_secret)")
    ] = None,
    hours: Annotated[float, typer.Option(min=0.01, max=24 * 30)] = 12,
) -> None:
    """Print an operator token for the embedded default's local secret."""
    if secret_file is not None:
        secret = secret_file.read_text().strip()
    if not secret:
        typer.echo("no secret: pass --secret, --secret-file or set ECS_AUTH_SECRET", err=True)
        raise typer.Exit(2)
    typer.echo(TokenVerifier(secret).issue(subject, [r.value for r in role], int(hours * 3600)))


@app.command()
def sign(
    secret: Annotated[str, typer.Option(help="the gateway's secret")],
    body_file: Annotated[Path, typer.Argument(help="the exact request body; - for stdin")],
) -> None:
    """Print the X-Timestamp and X-Signature headers of a 110 gateway request."""
    body = sys.stdin.buffer.read() if str(body_file) == "-" else body_file.read_bytes()
    ts = str(int(time.time()))
    typer.echo(f"X-Timestamp: {ts}")
    typer.echo(f"X-Signature: {signature(secret, ts, body)}")


if __name__ == "__main__":
    app()
