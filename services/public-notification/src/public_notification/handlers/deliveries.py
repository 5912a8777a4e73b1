"""Deliveries: channels registered by a commander; on publication an alert or a statement is
queued for every enabled channel of its world (``queue``, from handlers.alerts and
handlers.statements), an SMS or a cell broadcast with exactly the targets inside the area, or
skipped when none is; ``deliver_due`` leases the due deliveries, sends each through its channel's
adapter outside any transaction (a channel failing never blocks the others), and records the
outcome — delivered, refused for good, or tried again with backoff."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from ecs.envelope import new_id, utcnow
from ecs.errors import Conflict, NotFound

from .. import store
from ..capdoc import document
from ..channels import CAP_XML, STATEMENT_JSON, Message, Refused, statement_document, statement_text
from ..commands import DeliverDue, RegisterChannel, RegisterTargets, Republish
from ..context import Context
from ..domain import (
    AlertStatus,
    ChannelKind,
    DeliveryStatus,
    Reach,
    cap_reference,
    cap_status,
    next_attempt,
    plan_deliveries,
    reach_of_area,
)
from .facts import load_incident
from .tx import Tx, transaction


async def register_channel(ctx: Context, cmd: RegisterChannel) -> Any:
    """Register a channel; returns it."""

    async def work(tx: Tx) -> Any:
        channel_id = new_id()
        await store.insert_channel(
            tx.conn,
            {
                "id": channel_id,
                "kind": cmd.kind.value,
                "name": cmd.name,
                "exercise": cmd.exercise,
                "url": cmd.url,
                "secret": cmd.secret,
                "enabled": True,
                "created_by": cmd.actor,
                "created_at": utcnow(),
            },
        )
        stored = await store.get_channel(tx.conn, channel_id)
        await tx.uow.commit()
        return stored

    return await transaction(ctx, work, cmd.actor)


async def republish(ctx: Context, cmd: Republish) -> int:
    """Send a published alert again to every channel of its kind (a new round); returns how many
    deliveries were queued. Conflict (409) unless the alert is published."""

    async def work(tx: Tx) -> int:
        alert = await store.get_alert(tx.conn, cmd.alert_id)
        if alert is None:
            raise NotFound(f"no alert {cmd.alert_id!r}", field="alert_id")
        await load_incident(tx, alert.incident_id, cmd.drill_only)
        if alert.status != AlertStatus.published:
            raise Conflict(f"only a published alert is re-published; this one is '{alert.status}'")
        round_ = await store.last_round(tx.conn, alert_id=alert.id) + 1
        queued = await queue(ctx, tx, alert.exercise, round_, utcnow(), area_of_alert(alert), alert_id=alert.id)
        await tx.uow.commit()
        return queued

    await refresh_targets(ctx)
    queued = await transaction(ctx, work, cmd.actor)
    ctx.wake_deliveries()
    return queued


def area_of_alert(alert: Any) -> tuple[Reach | None, str]:
    """The area an alert's SMS and cell broadcast go to: its own, and how the skip names it."""
    return reach_of_area(alert.area), "the alert's area"


async def refresh_targets(ctx: Context) -> None:
    """Index what other replicas registered since the last refresh, before a publication targets."""
    if ctx.targets is not None:
        await ctx.targets.refresh()


async def queue(
    ctx: Context,
    tx: Tx,
    exercise: bool,
    round_: int,
    now: Any,
    area: tuple[Reach | None, str],
    *,
    alert_id: str | None = None,
    statement_id: str | None = None,
) -> int:
    """Queue one delivery of the alert or statement to every enabled channel of its world, in the
    caller's transaction: SMS and cell broadcast with the targets inside ``area`` (or skipped);
    returns how many are pending (the caller wakes the worker after its commit)."""
    reach, named = area
    inside = None
    if reach is not None:
        found = ctx.targets.index.within(reach) if ctx.targets is not None else []
        inside = [(t.id, t.kind) for t in found]
    plans = plan_deliveries(await store.enabled_channels(tx.conn, exercise), inside, named)
    return await store.insert_deliveries(tx.conn, plans, round_, now, alert_id=alert_id, statement_id=statement_id)


async def deliver_due(ctx: Context, cmd: DeliverDue) -> int:
    """Lease and send up to ``cmd.limit`` due deliveries side by side; returns how many were tried."""

    async def claim(tx: Tx) -> list[Any]:
        rows = await store.claim_due(tx.conn, utcnow(), ctx.settings.delivery_lease_s, cmd.limit)
        alerts = await store.get_alerts(tx.conn, {r.alert_id for r in rows if r.alert_id})
        statements = await store.get_statements(tx.conn, {r.statement_id for r in rows if r.statement_id})
        referenced = await store.get_alerts(tx.conn, {a.references_id for a in alerts.values() if a.references_id})
        await tx.uow.commit()
        documents: dict[str, bytes] = {}  # one CAP document per alert, whatever its channels
        for alert in alerts.values():
            ref = referenced.get(alert.references_id) if alert.references_id else None
            refs = (
                cap_reference(ctx.settings.sender, ref.identifier, ref.sent) if ref is not None and ref.sent else None
            )
            documents[alert.id] = document(alert, ctx, refs)
        for statement in statements.values():
            documents[statement.id] = statement_document(statement, cap_status(statement.exercise).value)
        messages = []
        for row in rows:
            if row.alert_id:
                messages.append((row, _alert_message(row, alerts[row.alert_id], documents[row.alert_id])))
            else:
                statement = statements[row.statement_id]
                messages.append((row, _statement_message(row, statement, documents[statement.id])))
        return messages

    claimed = await transaction(ctx, claim)
    if not claimed:
        return 0
    outcomes = await asyncio.gather(*(_send(ctx, message) for _, message in claimed))

    async def record(tx: Tx) -> None:
        now = utcnow()
        finished: dict[tuple[DeliveryStatus, int, str | None], list[str]] = defaultdict(list)
        for (row, _), (status, error) in zip(claimed, outcomes, strict=True):
            if status is None:
                await store.retry_delivery(tx.conn, row.id, row.attempts, next_attempt(row.attempts, now), error or "")
            else:
                finished[(status, row.attempts, error)].append(row.id)
        for (status, attempts, error), ids in finished.items():  # one statement for the many alike
            await store.finish_deliveries(tx.conn, ids, attempts, status, now, error)
        await tx.uow.commit()

    await transaction(ctx, record)
    return len(claimed)


def _alert_message(row: Any, alert: Any, xml: bytes) -> Message:
    zh = next((i for i in alert.infos if i["language"] == "zh-CN"), alert.infos[0])
    return Message(
        key=row.id,
        channel_id=row.channel_id,
        channel_kind=ChannelKind(row.kind),
        channel_exercise=row.channel_exercise,
        cap_status=alert.cap_status,
        body=xml,
        text=f"{zh['headline']} {zh['description']}",
        url=row.url,
        secret=row.secret,
        targets=tuple(row.targets) if row.targets is not None else None,
        content_type=CAP_XML,
    )


def _statement_message(row: Any, statement: Any, body: bytes) -> Message:
    kind = ChannelKind(row.kind)
    return Message(
        key=row.id,
        channel_id=row.channel_id,
        channel_kind=kind,
        channel_exercise=row.channel_exercise,
        cap_status=cap_status(statement.exercise).value,
        body=body,
        text=statement_text(kind, statement.text_zh, statement.text_en),
        url=row.url,
        secret=row.secret,
        targets=tuple(row.targets) if row.targets is not None else None,
        content_type=STATEMENT_JSON,
    )


async def _send(ctx: Context, message: Message) -> tuple[DeliveryStatus | None, str | None]:
    try:
        await ctx.adapters[message.channel_kind].send(message)
    except Refused as exc:
        return DeliveryStatus.refused, str(exc)
    except Exception as exc:  # any failure of one channel: tried again later, the others go on
        return None, (str(exc).splitlines() or [repr(exc)])[0][:500] or repr(exc)
    return DeliveryStatus.delivered, None


async def register_targets(ctx: Context, cmd: RegisterTargets) -> int:
    """Register targets (ids already known are left as they are); this replica indexes them at
    once, the others on their next refresh. Returns how many were new."""

    async def work(tx: Tx) -> int:
        await tx.uow.lock("notification:targets")  # one registration at a time numbers them in order
        new = await store.insert_targets(tx.conn, [dict(t) for t in cmd.targets], ctx.db)
        await tx.uow.commit()
        return new

    new = await transaction(ctx, work, cmd.actor)
    if ctx.targets is not None:
        await ctx.targets.refresh()
    return new
