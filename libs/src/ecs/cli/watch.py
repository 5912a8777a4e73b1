"""``ecs watch``: incidents changing live, from the domain events on NATS.

It subscribes with core NATS (no consumer is created, nothing is acknowledged, the services'
streams are untouched) as the subscribe-only ``observer`` identity, so watching can never
publish or take a message from a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from .. import identities
from . import config
from .client import fail
from .output import count, err, level, out, table

SUBJECTS = tuple(f"{domain}.>" for domain in identities.OWNERS)
"""Every domain's events: incident.>, dispatch.>, stockpile.>, shelter.>, notification.>."""


@dataclass
class IncidentRow:
    """What the watch knows of one incident, from the events seen so far."""

    id: str
    category: str | None = None
    level: int | None = None
    stage: str | None = None
    exercise: bool | None = None
    last_event: str = ""
    last_at: str = ""
    events: int = 0
    seen: float = field(default_factory=time.monotonic)

    def apply(self, subject: str, event: dict[str, Any]) -> None:
        """Take in one event about this incident."""
        data = event.get("data") or {}
        if subject == "incident.created":
            self.stage = self.stage or "reported"
        if subject == "incident.stage.changed":
            self.stage = data.get("to_stage", self.stage)
        if subject == "incident.level.changed":
            self.level = data.get("to_level", self.level)
        elif subject.startswith("incident.") and "level" in data:
            self.level = data["level"]
        if subject.startswith("incident.") and "category" in data:
            self.category = data["category"]
        if isinstance(event.get("exercise"), bool):
            self.exercise = event["exercise"]
        self.last_event = subject
        self.last_at = str(event.get("occurred_at", ""))[11:19]
        self.events += 1
        self.seen = time.monotonic()


class Board:
    """The incidents seen, most recently changed first."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.incidents: dict[str, IncidentRow] = {}
        self.events = 0

    def apply(self, subject: str, event: dict[str, Any]) -> None:
        """Take in one event; an event about no incident only counts."""
        self.events += 1
        data = event.get("data") or {}
        incident_id = event.get("incident_id") or data.get("incident_id")
        if not incident_id:
            return
        row = self.incidents.setdefault(incident_id, IncidentRow(incident_id))
        row.apply(subject, event)

    def render(self) -> Table:
        """The table the watch shows."""
        shown = sorted(self.incidents.values(), key=lambda r: r.seen, reverse=True)[: self.rows]
        return table(
            f"{count(len(self.incidents), 'incident')}, {count(self.events, 'event')}",
            ("incident", "category", "level", "stage", "exercise", "last event", "at"),
            [
                (r.id, r.category, level(r.level) if r.level else None, r.stage, r.exercise, r.last_event, r.last_at)
                for r in shown
            ],
        )


def watch(
    nats_url: Annotated[
        str | None, typer.Option(help="the broker; default: the one 'make up' runs", envvar="ECS_NATS_URL")
    ] = None,
    user: Annotated[str | None, typer.Option(help="NATS user (default observer)", envvar="ECS_NATS_USER")] = None,
    password: Annotated[
        str | None, typer.Option(help="default: the observer's in var/secrets.json", envvar="ECS_NATS_PASSWORD")
    ] = None,
    until_events: Annotated[int | None, typer.Option(min=1, help="stop after this many events")] = None,
    duration: Annotated[float | None, typer.Option(min=0.1, help="stop after this many seconds")] = None,
    rows: Annotated[int, typer.Option(min=1, help="show the N most recently changed incidents")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print each event as one JSON line instead")] = False,
) -> None:
    """Show incidents change live from the domain events on NATS (Ctrl-C stops)."""
    url = nats_url or config.nats_url()
    try:
        user, password = config.observer_credentials(user, password)
    except LookupError as exc:
        fail(str(exc))
    board = Board(rows)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(url, user, password, board, until_events, duration, as_json))


async def _watch(
    url: str,
    user: str,
    password: str,
    board: Board,
    until_events: int | None,
    duration: float | None,
    as_json: bool,
) -> None:
    import nats

    connected = False

    async def quiet(exc: Exception) -> None:
        # Before the connection, a failure is said once below; after it, each is worth a line.
        if connected:
            err.print(f"ecs watch: {exc}", markup=False)

    try:
        nc = await nats.connect(
            url.split(","),
            user=user,
            password=password,
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=1,  # a broker that is not there is said within a second, not retried
            reconnect_time_wait=0.5,
            error_cb=quiet,
        )
    except Exception as exc:  # nats-py raises several kinds; each says why
        fail(f"cannot watch NATS at {url} as {user}: {exc or type(exc).__name__}")
    connected = True
    events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        await events.put((msg.subject, msg.data))

    try:
        for subject in SUBJECTS:
            await nc.subscribe(subject, cb=collect)
        await nc.flush()
        err.print(f"watching {', '.join(SUBJECTS)} on {url} as {user}", markup=False, highlight=False)
        await _show(board, events, until_events, duration, as_json)
    finally:
        await nc.close()


async def _show(
    board: Board,
    events: asyncio.Queue[tuple[str, bytes]],
    until_events: int | None,
    duration: float | None,
    as_json: bool,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration if duration else None
    live = None if as_json else Live(board.render(), console=out, refresh_per_second=4)
    with live if live is not None else contextlib.nullcontext():
        while until_events is None or board.events < until_events:
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                break
            try:
                subject, raw = await asyncio.wait_for(events.get(), timeout)
            except TimeoutError:
                break
            try:
                event = json.loads(raw)
            except ValueError:
                event = {}
            if not isinstance(event, dict):
                event = {}
            board.apply(subject, event)
            if as_json:
                typer.echo(json.dumps({"subject": subject, **event}, ensure_ascii=False))
            elif live is not None:
                live.update(board.render())
