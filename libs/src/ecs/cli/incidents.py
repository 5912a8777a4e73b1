"""``ecs incidents``: list, show and move incidents through their lifecycle (incident-intake)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..vocabulary import Category, Stage
from .client import call
from .output import ExerciseFlag, JsonFlag, count, facts, level, more, print_json, show, table

app = typer.Typer(help="Incidents: list, show, verify, cordon, move through the lifecycle.", no_args_is_help=True)

IncidentId = Annotated[str, typer.Argument(metavar="ID", help="the incident's id")]
Reason = Annotated[str | None, typer.Option(help="why, for the timeline")]


@app.command("list")
def list_incidents(
    stage: Annotated[list[Stage] | None, typer.Option(help="only in this stage; repeat for several")] = None,
    level_: Annotated[list[int] | None, typer.Option("--level", min=1, max=4, help="only at level 1 (I) .. 4")] = None,
    category: Annotated[list[Category] | None, typer.Option(help="only of this category; repeat")] = None,
    exercise: ExerciseFlag = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many, newest first")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Incidents, newest first."""
    page = call(
        "intake",
        "GET",
        "/v1/incidents",
        params={"stage": stage, "level": level_, "category": category, "exercise": exercise, "limit": limit},
    )
    if as_json:
        print_json(page)
        return
    rows = [
        (
            i["id"],
            i["category"],
            level(i["level"]),
            i["stage"],
            i["exercise"],
            i["alarm_count"],
            i["casualties"],
            i["last_alarm_at"],
        )
        for i in page["items"]
    ]
    columns = ("id", "category", "level", "stage", "exercise", "alarms", "hurt", "last alarm")
    show(table(count(len(rows), "incident"), columns, rows))
    more(page.get("next_cursor"))


@app.command("show")
def show_incident(
    incident_id: IncidentId,
    tail: Annotated[int, typer.Option(min=0, max=1000, help="the last N timeline entries")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """One incident: its stage, level, the next steps and what each misses, the timeline's tail."""
    incident = call("intake", "GET", f"/v1/incidents/{incident_id}", params={"alarms_limit": 0 if not as_json else 100})
    if as_json:
        print_json(incident)
        return
    timeline = incident.get("timeline", [])[-tail:] if tail else []
    show(
        _summary(incident),
        _next_steps(incident),
        table(
            f"timeline (last {len(timeline)} of {len(incident.get('timeline', []))})",
            ("at", "actor", "what", "detail"),
            [(e["at"], e["actor"], e["kind"], e["detail"]) for e in timeline],
        ),
    )


def _summary(i: dict[str, Any]) -> Any:
    perimeter = i.get("perimeter")
    if perimeter and perimeter.get("kind") == "circle":
        cordon = f"circle {perimeter['radius_m']:g} m around {perimeter['lat']:.5f}, {perimeter['lon']:.5f}"
    elif perimeter:
        cordon = f"polygon of {len(perimeter.get('points', []))} points"
    else:
        cordon = None
    lvl = level(i["level"])
    lvl.append(f" ({i.get('level_colour', '')})")
    true_facts = [name for name, value in (i.get("facts") or {}).items() if value is True]
    return facts(
        None,
        [
            ("incident", i["id"]),
            ("category", i["category"]),
            ("stage", i["stage"]),
            ("level", lvl),
            ("exercise", i["exercise"]),
            ("verified", i["verified"]),
            ("perimeter", cordon),
            ("location", f"{i['location']['lat']:.5f}, {i['location']['lon']:.5f}"),
            ("alarms", f"{i['alarm_count']} from {count(i['caller_count'], 'caller')}, {i['casualties']} hurt"),
            ("first alarm", i["first_alarm_at"]),
            ("last alarm", i["last_alarm_at"]),
            ("facts", ", ".join(true_facts) or None),
            ("merged into", i.get("merged_into")),
            ("version", i["version"]),
        ],
    )


def _next_steps(i: dict[str, Any]) -> Any:
    rows = [
        (step["stage"], "yes" if step["allowed"] else "no", "; ".join(step["missing"]) or "-")
        for step in i.get("next", [])
    ]
    return table("next steps", ("to", "allowed", "what it misses"), rows)


def _act(incident_id: str, method: str, action: str, body: dict[str, Any], as_json: bool) -> None:
    """Change the incident at the version just read, then show where it stands."""
    seen = call("intake", "GET", f"/v1/incidents/{incident_id}", params={"alarms_limit": 0})
    changed = call("intake", method, f"/v1/incidents/{incident_id}/{action}", json={"version": seen["version"], **body})
    if as_json:
        print_json(changed)
        return
    show(_summary(changed), _next_steps(changed))


@app.command()
def verify(incident_id: IncidentId, as_json: JsonFlag = False) -> None:
    """Confirm the incident is real (dispatcher, commander)."""
    _act(incident_id, "POST", "verify", {}, as_json)


@app.command()
def perimeter(
    incident_id: IncidentId,
    lat: Annotated[float, typer.Option(help="the circle's centre, latitude (WGS84)")],
    lon: Annotated[float, typer.Option(help="the circle's centre, longitude (WGS84)")],
    radius_m: Annotated[float, typer.Option("--radius-m", help="the circle's radius in metres")],
    as_json: JsonFlag = False,
) -> None:
    """Set the cordon: a circle of --radius-m around --lat, --lon (dispatcher, commander)."""
    shape = {"kind": "circle", "lat": lat, "lon": lon, "radius_m": radius_m}
    _act(incident_id, "PUT", "perimeter", {"perimeter": shape}, as_json)


@app.command()
def stage(
    incident_id: IncidentId,
    target: Annotated[Stage, typer.Argument(metavar="STAGE", help="the stage to move to")],
    reason: Reason = None,
    as_json: JsonFlag = False,
) -> None:
    """Move the incident to STAGE; the lifecycle's guard decides, and a refusal says what is missing."""
    _act(incident_id, "POST", "stage", {"stage": target, "reason": reason}, as_json)


@app.command("level")
def change_level(
    incident_id: IncidentId,
    to: Annotated[int, typer.Argument(metavar="N", min=1, max=4, help="1 (I, red) .. 4 (IV, blue)")],
    reason: Annotated[str, typer.Option(help="why (required: it goes on the timeline)")],
    as_json: JsonFlag = False,
) -> None:
    """Raise or lower the level (commander)."""
    _act(incident_id, "POST", "level", {"level": to, "reason": reason}, as_json)


@app.command()
def fact(
    incident_id: IncidentId,
    name: Annotated[str, typer.Argument(metavar="FACT", help="hazard_under_control or after_action_report")],
    note: Annotated[str, typer.Option(help="a note for the timeline")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Record a commander's fact: hazard_under_control, after_action_report (commander)."""
    _act(incident_id, "POST", "facts", {"fact": name, "note": note}, as_json)
