"""Units (dispatch), stock (resource-stockpile) and shelters (shelter-registry): ``ecs units``,
``ecs assign``, ``ecs stock``, ``ecs reserve``, ``ecs shelters``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .client import call
from .output import ExerciseFlag, JsonFlag, count, facts, more, print_json, show, table

units = typer.Typer(help="Units on the roster (dispatch).", no_args_is_help=True)
stock = typer.Typer(help="Stock on hand in the depots (resource-stockpile).", no_args_is_help=True)
shelters = typer.Typer(help="Shelters, their capacity and occupancy (shelter-registry).", no_args_is_help=True)

Limit = Annotated[int, typer.Option(min=1, max=1000, help="at most this many")]
Several = Annotated[list[str] | None, typer.Option(help="repeat for several")]


# --- units and assignments -----------------------------------------------------------------------


@units.command("list")
def list_units(
    status: Several = None,
    unit_type: Annotated[list[str] | None, typer.Option("--type", help="e.g. fire_engine; repeat for several")] = None,
    district: Several = None,
    incident: Annotated[str | None, typer.Option(help="only units serving this incident")] = None,
    exercise: ExerciseFlag = None,
    limit: Limit = 100,
    as_json: JsonFlag = False,
) -> None:
    """Units by id, filtered."""
    params = {
        "status": status,
        "unit_type": unit_type,
        "district": district,
        "incident_id": incident,
        "exercise": exercise,
        "limit": limit,
    }
    page = call("dispatch", "GET", "/v1/units", params=params)
    if as_json:
        print_json(page)
        return
    rows = [
        (u["id"], u["callsign"], u["unit_type"], u["status"], u["district"], u["incident_id"], u["exercise"])
        for u in page["items"]
    ]
    show(
        table(count(len(rows), "unit"), ("id", "callsign", "type", "status", "district", "incident", "exercise"), rows)
    )
    more(page.get("next_cursor"))


@units.command("show")
def show_unit(
    unit_id: Annotated[str, typer.Argument(metavar="ID", help="the unit's id")], as_json: JsonFlag = False
) -> None:
    """One unit: where it is, what it serves, where its status may go next."""
    u = call("dispatch", "GET", f"/v1/units/{unit_id}")
    if as_json:
        print_json(u)
        return
    show(
        facts(
            None,
            [
                ("unit", u["id"]),
                ("callsign", u["callsign"]),
                ("type", f"{u['unit_type']} ({u['agency']})"),
                ("status", u["status"]),
                ("next statuses", ", ".join(u["next_statuses"]) or None),
                ("serves", u["incident_id"]),
                ("station", f"{u['home_station']}, {u['district']}"),
                ("location", f"{u['location']['lat']:.5f}, {u['location']['lon']:.5f}"),
                ("capabilities", ", ".join(u["capabilities"]) or None),
                ("exercise", u["exercise"]),
                ("lent to drill", u["lent_to_drill"]),
                ("version", u["version"]),
            ],
        )
    )


def assign(
    incident_id: Annotated[str, typer.Argument(metavar="INCIDENT", help="the incident's id")],
    unit: Annotated[list[str] | None, typer.Option("--unit", "-u", help="a unit to send; repeat for several")] = None,
    recommended: Annotated[bool, typer.Option("--recommended", help="accept dispatch's recommendation")] = False,
    reason: Annotated[str | None, typer.Option(help="needed for a unit dispatch did not recommend")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send units to an incident: the ones named (--unit, all or none), or the recommended ones."""
    if bool(unit) == recommended:
        raise typer.BadParameter("give --unit (one or more) or --recommended, not both", param_hint="--unit")
    if recommended:
        outcome = call("dispatch", "POST", f"/v1/incidents/{incident_id}/assignments:recommended", json={})
    else:
        body = {"unit_ids": unit, "reason": reason}
        outcome = call("dispatch", "POST", f"/v1/incidents/{incident_id}/assignments", json=body)
    if as_json:
        print_json(outcome)
        return
    rows = [
        (a["id"], a["unit_id"], a["unit_type"], a["stage"], a["eta_s"] and f"{a['eta_s'] / 60:.1f} min", a["reason"])
        for a in outcome["assignments"]
    ]
    show(table(count(len(rows), "unit") + " assigned", ("assignment", "unit", "type", "for", "eta", "why"), rows))
    for shortfall in outcome.get("shortfalls", []):
        show(f"[yellow]short:[/yellow] {shortfall}")


# --- stock and reservations ----------------------------------------------------------------------


@stock.command("list")
def list_stock(
    depot: Annotated[str | None, typer.Option(help="only this depot")] = None,
    item: Annotated[str | None, typer.Option(help="only this item code")] = None,
    district: Annotated[str | None, typer.Option(help="only depots of this district")] = None,
    limit: Limit = 100,
    as_json: JsonFlag = False,
) -> None:
    """Stock lines with something on hand, by depot and item (base units; available also in packs)."""
    params = {"depot_id": depot, "item": item, "district": district, "limit": limit}
    page = call("stockpile", "GET", "/v1/stock", params=params)
    if as_json:
        print_json(page)
        return
    rows = [
        (
            s["depot_id"],
            s["item"],
            s["expiry"],
            s["condition"],
            s["on_hand"],
            s["reserved"],
            s["available"],
            ", ".join(f"{n} {pack}" for pack, n in s["available_in_packs"].items() if n),
        )
        for s in page["lines"]
    ]
    columns = ("depot", "item", "expiry", "condition", "on hand", "reserved", "available", "in packs")
    show(table(count(len(rows), "stock line"), columns, rows))
    more(page.get("next_cursor"))


def reserve(
    incident_id: Annotated[str, typer.Argument(metavar="INCIDENT", help="the incident's id")],
    item: Annotated[str, typer.Argument(metavar="ITEM", help="the item's code")],
    quantity: Annotated[
        int, typer.Argument(metavar="QUANTITY", min=1, help="how many (of --unit, else of the item's base unit)")
    ],
    unit: Annotated[str | None, typer.Option("--unit", help="a pack the item comes in, e.g. case")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Reserve QUANTITY of ITEM for an incident, nearest depots first; a partial one says what is missing."""
    body = {"item": item, "quantity": quantity, "unit": unit}
    r = call("stockpile", "POST", f"/v1/incidents/{incident_id}/reservations", json=body)
    if as_json:
        print_json(r)
        return
    show(
        facts(
            None,
            [
                ("reservation", r["id"]),
                ("incident", r["incident_id"]),
                ("item", r["item"]),
                ("requested", r["requested"]),
                ("reserved", r["reserved"]),
                ("missing", r["missing"]),
                ("exercise", r["exercise"]),
                ("version", r["version"]),
            ],
        ),
        table(
            "from",
            ("depot", "travel", "held"),
            [(a["depot_id"], f"{a['travel_s'] / 60:.1f} min", a["held"]) for a in r["allocations"]],
        ),
    )


# --- shelters ------------------------------------------------------------------------------------


@shelters.command("list")
def list_shelters(
    status: Several = None,
    district: Several = None,
    kind: Several = None,
    exercise: ExerciseFlag = None,
    limit: Limit = 100,
    as_json: JsonFlag = False,
) -> None:
    """Shelters by id, filtered (status includes the derived ``full``)."""
    params = {"status": status, "district": district, "kind": kind, "exercise": exercise, "limit": limit}
    page = call("shelter", "GET", "/v1/shelters", params=params)
    if as_json:
        print_json(page)
        return
    rows = [
        (
            s["id"],
            s["name_en"],
            s["kind"],
            s["district"],
            s["status"],
            s["capacity"],
            s["occupied"],
            s["free"],
            s["exercise"],
        )
        for s in page["items"]
    ]
    columns = ("id", "name", "kind", "district", "status", "capacity", "occupied", "free", "exercise")
    show(table(count(len(rows), "shelter"), columns, rows))
    more(page.get("next_cursor"))


@shelters.command("show")
def show_shelter(
    shelter_id: Annotated[str, typer.Argument(metavar="ID", help="the shelter's id")], as_json: JsonFlag = False
) -> None:
    """One shelter: capacity, what it holds, what may be done with it next."""
    s: dict[str, Any] = call("shelter", "GET", f"/v1/shelters/{shelter_id}")
    if as_json:
        print_json(s)
        return
    show(
        facts(
            None,
            [
                ("shelter", s["id"]),
                ("name", f"{s['name_zh']} / {s['name_en']}"),
                ("kind", f"{s['kind']} ({s['stay_class']})"),
                ("address", f"{s['address']}, {s['district']}"),
                ("status", s["status"]),
                ("next actions", ", ".join(s["next_actions"]) or None),
                ("capacity", f"{s['capacity']} at night, {s['day_capacity']} by day ({s['area_m2']:g} m²)"),
                ("occupied", f"{s['occupied']} ({s['free']} free)"),
                ("accessible free", s["accessible_free"]),
                ("pet places free", s["pet_free"]),
                ("opened for", s["opened_for"]),
                ("hotline", s["hotline"]),
                ("exercise", s["exercise"]),
                ("version", s["version"]),
            ],
        )
    )
