"""The CLI's HTTP calls: the operator's token on each, a refusal told in plain words on stderr.

Every failure ends the command with exit code 1 after one message: the service's problem+json
(title, detail, the field it names, what is missing or allowed), or which URL could not be
reached. Usage errors are typer's (exit 2).
"""

from __future__ import annotations

from typing import Any, NoReturn

import httpx
import typer

from . import config
from .output import err

TIMEOUT_S = 30.0


def fail(message: str) -> NoReturn:
    """Print ``message`` on stderr and end the command with exit code 1."""
    err.print(f"ecs: {message}", markup=False, highlight=False)
    raise typer.Exit(1)


def bearer() -> str:
    """The operator's token (``ECS_TOKEN`` or ``ecs login``'s); ends the command when there is none."""
    found = config.current_token()
    if found is None:
        fail("not logged in: run 'ecs login' (or set ECS_TOKEN)")
    return found[0]


def call(
    service: str,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """``method path`` on ``service`` (``intake``, ``dispatch`` ...) as the logged-in operator;
    returns the decoded JSON answer, or ends the command saying why there is none."""
    base = config.service_url(service)
    name = config.SERVICES[service].name
    headers = {"Authorization": f"Bearer {bearer()}"}
    query = {k: v for k, v in (params or {}).items() if v is not None and v != []}
    try:
        with httpx.Client(base_url=base, timeout=TIMEOUT_S) as client:
            response = client.request(method, path, json=json, params=query, headers=headers)
    except httpx.TimeoutException:
        fail(f"{name} at {base} did not answer within {TIMEOUT_S:.0f} s")
    except httpx.TransportError as exc:
        fail(
            f"cannot reach {name} at {base} ({exc or type(exc).__name__}): is it running? "
            f"Start it with 'make up' or point ECS_{service.upper()}_URL at it"
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        fail(f"{name}'s URL {base!r} is not a URL ({exc}): check ECS_{service.upper()}_URL")
    except UnicodeEncodeError:
        fail("the token holds characters a bearer token cannot: log in again ('ecs login') or fix ECS_TOKEN")
    except ValueError as exc:  # a URL the standard library refuses, a NaN or an infinity in the body
        fail(f"cannot send this to {name} at {base!r}: {exc}")
    if response.is_success:
        return response.json() if response.content else None
    fail(refusal(name, response))


def refusal(name: str, response: httpx.Response) -> str:
    """A refused request in plain words: who refused, status and title, the detail, and the
    field, missing steps, allowed steps or per-field errors the problem names."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = response.text.strip()[:500] or response.reason_phrase
        return f"{name} answered {response.status_code}: {text}"
    title = problem.get("title") or response.reason_phrase
    lines = [f"{name} refused ({response.status_code} {title}): {problem.get('detail', '')}".rstrip(": ")]
    if problem.get("field"):
        lines.append(f"  field: {problem['field']}")
    for error in problem.get("errors") or []:
        said = f"{error.get('field', '?')}: {error.get('message', '')}" if isinstance(error, dict) else ""
        if said and said not in str(problem.get("detail", "")):
            lines.append(f"  {said}")
    for key in ("missing", "allowed"):
        value = problem.get(key)
        if isinstance(value, list) and value:
            lines.append(f"  {key}: " + "; ".join(str(v) for v in value))
    if response.status_code == 401:
        lines.append("  log in again: ecs login")
    return "\n".join(lines)
