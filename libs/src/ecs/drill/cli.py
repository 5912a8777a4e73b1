"""``ecs drill``: run, steer and clean up exercises (演练) against the live system.

    ecs drill scenarios                       the shipped scenarios
    ecs drill validate FILE                   check a scenario file (file, line and field of each problem)
    ecs drill run bund --speed 20             run it, with live progress; writes the after-action report
    ecs drill pause | resume | stop           steer the running drill (from another terminal)
    ecs drill emergency-stop                  a real-world emergency: end at once, purge the drill's data
    ecs drill exercise-data                   what exercise data each service holds
    ecs drill purge                           purge every service's exercise data (live data untouched)

On the embedded default (``make up``) everything it needs is found under ``var/``: the token
secret (it signs two drill_runner tokens: one drafts, the other approves), the exercise gateway
``drill-gw`` and its secret, the observer's NATS password. Elsewhere give ``--token`` and
``--second-token`` (drill_runner), ``--gateway-id``/``--gateway-secret`` and ``--nats-url``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ..auth import TokenVerifier
from ..cli import config
from ..vocabulary import Level
from .runner import Credentials, DrillRefused, DrillRunner, Endpoints, Progress
from .scenario import SCENARIOS, ScenarioError, read_scenario
from .scoring import MEANINGS

app = typer.Typer(help="Run, steer and clean up drills (演练) against the live system.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

Speed = Annotated[float, typer.Option(min=0.1, max=10_000, help="scenario seconds per real second")]


def _endpoints() -> Endpoints:
    return Endpoints(*(config.service_url(k) for k in ("intake", "dispatch", "stockpile", "shelter", "notification")))


def _drills_dir() -> Path:
    return config.var_dir() / "drills"


def _current() -> Path:
    """The file naming the running drill's folder (its control file lives there)."""
    return _drills_dir() / "current"


def _tokens(token: str | None, second: str | None) -> tuple[str, str]:
    if token and second:
        return token, second
    secret = config.local_auth_secret()
    if not secret:
        err.print(
            "no drill_runner tokens: give --token and --second-token (two people: one drafts, one approves),"
            " or run on the embedded default (make up), whose var/auth_secret signs them"
        )
        raise typer.Exit(1)
    verifier = TokenVerifier(secret)
    return (
        token or verifier.issue("drill-runner-a", ["drill_runner"]),
        second or verifier.issue("drill-runner-b", ["drill_runner"]),
    )


def _gateway(gateway_id: str, secret: str | None) -> str:
    if secret:
        return secret
    path = config.var_dir() / "gateways.json"
    try:
        return json.loads(path.read_text())["gateways"][gateway_id]["secret"]
    except (OSError, ValueError, KeyError):
        err.print(f"no secret for gateway {gateway_id}: give --gateway-secret, or run 'make up' (it writes {path})")
        raise typer.Exit(1) from None


@app.command()
def scenarios() -> None:
    """List the shipped scenarios."""
    rows = Table("name", "type", "duration", "injects", "objectives", "scenario", title="shipped scenarios")
    for path in sorted(SCENARIOS.glob("*.yaml")):
        s, _ = read_scenario(str(path))
        rows.add_row(path.stem, s.type.value, _hms(s.duration), str(len(s.msel)), str(len(s.objectives)), s.name)
    console.print(rows)


@app.command()
def validate(scenario: Annotated[str, typer.Argument(help="a shipped scenario's name or a YAML file")]) -> None:
    """Check a scenario file: each problem with file, line and field; exit 1 if there is any."""
    s, path = _read(scenario)
    console.print(f"{path}: valid — {s.name} ({s.type.value}), {len(s.msel)} injects, {len(s.objectives)} objectives")


def _read(scenario: str) -> tuple[Any, Path]:
    try:
        return read_scenario(scenario)
    except FileNotFoundError as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    except (OSError, ValueError) as exc:  # unreadable, a folder, a NUL in the name
        err.print(f"cannot read the scenario {scenario!r}: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except ScenarioError as exc:
        for p in exc.problems:
            err.print(f"{exc.source}:{p.line}: {p.path}: {p.message}", markup=False, highlight=False)
        err.print(f"{len(exc.problems)} problem(s); nothing was run")
        raise typer.Exit(1) from None


@app.command()
def run(
    scenario: Annotated[
        str, typer.Argument(help="a shipped scenario's name (see 'ecs drill scenarios') or a YAML file")
    ],
    speed: Speed = 20.0,
    out: Annotated[Path | None, typer.Option(help="the report's folder (default var/drills/<scenario>-<time>)")] = None,
    token: Annotated[str | None, typer.Option(envvar="ECS_DRILL_TOKEN", help="drill_runner token (drafts)")] = None,
    second_token: Annotated[
        str | None, typer.Option(envvar="ECS_DRILL_SECOND_TOKEN", help="a second drill_runner's token (approves)")
    ] = None,
    gateway_id: Annotated[str, typer.Option(help="the exercise gateway the alarms come from")] = "drill-gw",
    gateway_secret: Annotated[str | None, typer.Option(envvar="ECS_DRILL_GATEWAY_SECRET")] = None,
    nats_url: Annotated[
        str | None, typer.Option(help="NATS URL with the observer's credentials (default: make up's)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the alarms' scatter, for a repeatable drill")] = 2014,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON at the end")] = False,
) -> None:
    """Run a drill at --speed with live progress, then write the after-action report.

    Ctrl-C stops the drill (its report is still written); 'ecs drill emergency-stop' from another
    terminal ends it at once and purges its data."""
    s, path = _read(scenario)
    first, second = _tokens(token, second_token)
    if nats_url is None:
        try:
            user, password = config.observer_credentials()
        except LookupError as exc:
            err.print(str(exc))
            raise typer.Exit(1) from None
        nats_url = config.nats_url().replace("nats://", f"nats://{user}:{password}@", 1)
    creds = Credentials(first, second, gateway_id, _gateway(gateway_id, gateway_secret), nats_url)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out or _drills_dir() / f"{path.stem}-{stamp}"
    runner = DrillRunner(s, str(path), _endpoints(), creds, speed, out, seed=seed)
    try:
        result = asyncio.run(_run_live(runner))
    except DrillRefused as exc:
        err.print(f"the drill was not started: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(result, ensure_ascii=False, default=str))
        return
    console.print()
    console.print(_objectives(result))
    console.print(f"drill {result['status']}" + (f": {result['reason']}" if result.get("reason") else ""))
    for kind, file in result["report_files"].items():
        console.print(f"  {kind:9} {file}")
    if result["status"] not in ("completed",):
        raise typer.Exit(1)


async def _run_live(runner: DrillRunner) -> dict[str, Any]:
    current = _current()
    current.parent.mkdir(parents=True, exist_ok=True)
    current.write_text(str(runner.out_dir.resolve()) + "\n")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, runner.stop, "stopped with Ctrl-C")
    try:
        with Live(_panel(runner.progress, runner), console=console, refresh_per_second=4, transient=False) as live:
            runner.on_progress = lambda p: live.update(_panel(p, runner))
            try:
                return await runner.run()
            finally:
                runner.progress.scenario_s = runner.clock.now_s()
                live.update(_panel(runner.progress, runner), refresh=True)  # the last state, not the last tick
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        current.unlink(missing_ok=True)


def _panel(p: Progress, runner: DrillRunner) -> Group:
    head = Table.grid(padding=(0, 2))
    state = "PAUSED" if p.paused else "running"
    head.add_row(
        f"[bold]{runner.scenario.name}[/bold]",
        f"scenario clock [bold]{_hms(p.scenario_s)}[/bold] ×{runner.clock.speed:g} ({state})",
        f"injects {p.injects_done}/{p.injects_total}"
        + (f" [red]{p.injects_failed} failed[/red]" if p.injects_failed else ""),
    )
    head.add_row(
        f"units assigned {p.units_assigned}, on scene {p.units_on_scene}",
        f"supplies reserved {p.reservations}  shelters open {p.shelters_open}, people placed {p.people_placed}",
        f"alerts {p.alerts_published}  statements {p.statements_published}  events {p.events_seen}",
    )
    incidents = Table("incident", "category", "level", "stage", title=None, expand=False)
    for iid, view in list(p.incidents.items())[-8:]:
        incidents.add_row(
            iid[:12], str(view.get("category", "")), _level(view.get("level")), str(view.get("stage", ""))
        )
    return Group(head, incidents, f"[dim]{p.last}[/dim]")


def _level(value: Any) -> str:
    """A level as the operators say it: ``II (orange)``."""
    try:
        level = Level(int(value))
    except (TypeError, ValueError):
        return ""
    return f"{level.name} ({level.colour})"


def _objectives(result: dict[str, Any]) -> Table:
    t = Table("objective", "measure", "target", "measured", "rating", title="objectives")
    for o in result["objectives"]:
        count = o["measure"] in ("items_short", "clocks_missed", "incidents_opened")
        fmt = (lambda v: f"{v:g}") if count else _hms
        measured = "not observed" if o["measured_s"] is None else fmt(o["measured_s"])
        t.add_row(o["id"], o["measure"], fmt(o["target_s"]), measured, f"{o['rating']} ({MEANINGS[o['rating']]})")
    return t


def _signal(word: str) -> None:
    try:
        folder = Path(_current().read_text().strip())
    except OSError:
        err.print(f"no drill is running here ({_current()} is missing)")
        raise typer.Exit(1) from None
    (folder / "control").write_text(word + "\n")
    console.print(f"asked the drill in {folder} to {word}")


@app.command()
def pause() -> None:
    """Pause the running drill's scenario clock."""
    _signal("pause")


@app.command()
def resume() -> None:
    """Resume the running drill's scenario clock."""
    _signal("resume")


@app.command()
def stop() -> None:
    """End the running drill; its report is written and its data kept for review."""
    _signal("stop")


@app.command("emergency-stop")
def emergency_stop() -> None:
    """A real-world emergency: end the running drill at once and purge its data from every service."""
    _signal("emergency")


@app.command("exercise-data")
def exercise_data_cmd(
    token: Annotated[str | None, typer.Option(envvar="ECS_DRILL_TOKEN", help="drill_runner token")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="each service's answer as it is")] = False,
) -> None:
    """What exercise data each service holds (counts); exit 1 if a service could not say."""
    from .runner import exercise_data

    first, _ = _tokens(token, token)
    answers = asyncio.run(_each(exercise_data, first))
    if as_json:
        console.print_json(json.dumps(answers, ensure_ascii=False))
    else:
        console.print(_counts_table("exercise data", answers))
    if any(isinstance(a, dict) and "error" in a for a in answers.values()):
        raise typer.Exit(1)


def _counts_table(title: str, answers: dict[str, Any]) -> Table:
    """One row per service and kind of data: numbers as they are, lists by their length."""
    t = Table("service", "what", "count", title=title)
    for service, answer in answers.items():
        if isinstance(answer, dict) and "error" in answer:
            t.add_row(service, "[red]error[/red]", str(answer["error"]))
            continue
        for key, value in (answer or {}).items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                t.add_row(service, key.replace("_", " "), str(value))
            elif isinstance(value, list):
                t.add_row(service, key.replace("_", " "), str(len(value)))
    return t


@app.command()
def purge(
    token: Annotated[str | None, typer.Option(envvar="ECS_DRILL_TOKEN", help="drill_runner token")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Purge every service's exercise data (incidents, units, depots, shelters, alerts of drills);
    live data is never touched."""
    if not yes:
        typer.confirm("Purge the exercise data of every drill from every service?", abort=True)
    first, _ = _tokens(token, token)
    from .runner import purge_exercise

    answers = asyncio.run(_each(purge_exercise, first))
    console.print(_counts_table("purged", answers))
    if any(isinstance(a, dict) and "error" in a for a in answers.values()):
        raise typer.Exit(1)


async def _each(call: Any, token: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as http:
        return await call(http, _endpoints(), {"Authorization": f"Bearer {token}"})


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
