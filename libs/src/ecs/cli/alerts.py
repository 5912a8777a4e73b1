"""``ecs alerts``: CAP alerts and their approval (public-notification)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .client import call
from .output import ExerciseFlag, JsonFlag, count, facts, level, more, print_json, show, table

app = typer.Typer(help="CAP alerts: list, show, submit, approve, publish (public-notification).", no_args_is_help=True)

AlertId = Annotated[str, typer.Argument(metavar="ID", help="the alert's id")]


def _headline(alert: dict[str, Any]) -> str:
    return " / ".join(info["headline"] for info in alert.get("infos", []))


@app.command("list")
def list_alerts(
    incident: Annotated[str | None, typer.Option(help="only this incident's alerts")] = None,
    status: Annotated[list[str] | None, typer.Option(help="e.g. draft, published; repeat for several")] = None,
    exercise: ExerciseFlag = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many, newest first")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Alerts, newest first."""
    params = {"incident_id": incident, "status": status, "exercise": exercise, "limit": limit}
    page = call("notification", "GET", "/v1/alerts", params=params)
    if as_json:
        print_json(page)
        return
    rows = [
        (a["id"], a["incident_id"], a["msg_type"], level(a["level"]), a["status"], a["exercise"], _headline(a))
        for a in page["alerts"]
    ]
    columns = ("id", "incident", "type", "level", "status", "exercise", "headline")
    show(table(count(len(rows), "alert"), columns, rows))
    more(page.get("next_cursor"))


@app.command("show")
def show_alert(
    alert_id: AlertId,
    xml: Annotated[bool, typer.Option("--xml", help="print its CAP 1.2 XML instead")] = False,
    as_json: JsonFlag = False,
) -> None:
    """One alert: status, what may be done next, who wrote and approved it, its text."""
    alert = call("notification", "GET", f"/v1/alerts/{alert_id}")
    if as_json:
        print_json(alert)
        return
    if xml:
        typer.echo(alert["cap_xml"])
        return
    _show(alert)


def _show(a: dict[str, Any]) -> None:
    show(
        facts(
            None,
            [
                ("alert", a["id"]),
                ("incident", a["incident_id"]),
                ("status", a["status"]),
                ("allowed", ", ".join(a["allowed"]) or None),
                ("type", f"{a['msg_type']} (CAP {a['cap_status']})"),
                ("level", level(a["level"])),
                ("author", a["author"]),
                ("approver", a["approver"]),
                ("sent", a["sent"]),
                ("expires", a["expires"]),
                ("references", a["references_id"]),
                ("area", a["area"].get("description")),
                ("version", a["version"]),
            ],
        ),
        table(
            None,
            ("language", "headline", "description"),
            [(i["language"], i["headline"], i["description"]) for i in a["infos"]],
        ),
    )


def _step(alert_id: str, action: str, as_json: bool) -> None:
    seen = call("notification", "GET", f"/v1/alerts/{alert_id}")
    alert = call("notification", "POST", f"/v1/alerts/{alert_id}:{action}", json={"version": seen["version"]})
    if as_json:
        print_json(alert)
        return
    _show(alert)


@app.command()
def submit(alert_id: AlertId, as_json: JsonFlag = False) -> None:
    """Ask for approval (information officer, commander)."""
    _step(alert_id, "submit", as_json)


@app.command()
def approve(alert_id: AlertId, as_json: JsonFlag = False) -> None:
    """Approve an alert someone else wrote (commander)."""
    _step(alert_id, "approve", as_json)


@app.command()
def publish(alert_id: AlertId, as_json: JsonFlag = False) -> None:
    """Publish an approved alert (information officer, commander)."""
    _step(alert_id, "publish", as_json)
