"""CAP alerts: drafting (from the plan's templates and the incident), editing a draft, and each
step of the machine — submit (the document must be valid CAP 1.2), approve (a second person),
publish (``sent`` frozen; an Update or Cancel ends the alert it references; queued for every
channel of its world, SMS and cell broadcast to the targets inside its area), withdraw."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ecs.contracts_notification import AlertEnded, AlertPublished
from ecs.envelope import new_id, utcnow
from ecs.errors import InvalidInput, NotFound, StaleVersion
from ecs.vocabulary import Category, Level

from .. import store
from ..capdoc import area_json, check_cap, document
from ..commands import AreaSpec, DraftAlert, EditAlert, ExpireAlerts, StepAlert
from ..context import Context
from ..domain import (
    AlertAction,
    AlertStatus,
    Area,
    Circle,
    Info,
    MsgType,
    cap_reference,
    cap_status,
    check_approver,
    check_editable,
    check_reference,
    compose_infos,
    headline_en,
    headline_zh,
    next_status,
    parse_polygon,
)
from .deliveries import area_of_alert, queue, refresh_targets
from .facts import load_incident, publish_settlement
from .tx import Tx, transaction

LOCAL_TIME = ZoneInfo("Asia/Shanghai")


def incident_values(incident: Any, plan: dict[str, Any], ctx: Context, given: dict[str, str]) -> dict[str, Any]:
    """What a template may use: the incident's id, category, level and time (Beijing time), the
    plan's radii, the hotline, and what the officer gave (address, shelter, ...), which wins."""
    values: dict[str, Any] = {
        "incident_id": incident.id,
        "category": incident.category,
        "level": Level(incident.level).name,
        "time": incident.reported_at.astimezone(LOCAL_TIME).strftime("%Y-%m-%d %H:%M"),
        "hotline": ctx.settings.hotline,
        "address": None,
        "shelter": None,
        **plan,
    }
    values.update({k: v for k, v in given.items() if v})
    return values


def area_of(spec: AreaSpec, incident: Any, plan: dict[str, Any]) -> Area:
    """The alert's area: the polygon or circle given, else a circle around the incident of the
    plan's evacuation (or isolation) radius. Raises InvalidInput for a bad polygon or radius."""
    geocodes = tuple(sorted(spec.geocodes.items()))
    if spec.polygon is not None:
        return Area(spec.description, None, parse_polygon(spec.polygon), geocodes)
    if spec.circle is not None:
        lat, lon, radius = spec.circle
        return Area(spec.description, Circle(lat, lon, radius), None, geocodes)
    radius = plan.get("evacuation_radius_m") or plan.get("isolation_radius_m")
    if not radius:
        raise InvalidInput("the incident's plan gives no radius: give area.circle or area.polygon", field="area")
    return Area(
        spec.description or f"{radius} m around the incident",
        Circle(incident.lat, incident.lon, radius),
        None,
        geocodes,
    )


async def draft_alert(ctx: Context, cmd: DraftAlert) -> Any:
    """Compose a draft for the incident; returns the stored alert. Raises NotFound for an unknown
    incident or reference, InvalidInput for a template variable the incident lacks or a bad area,
    Conflict for an Update or Cancel without a live alert to reference."""

    async def work(tx: Tx) -> Any:
        incident = await load_incident(tx, cmd.incident_id, cmd.drill_only, new_work=True)
        level = Level(incident.level)
        category = Category(incident.category)
        referenced = await store.get_alert(tx.conn, cmd.references) if cmd.references else None
        if cmd.references and referenced is None:
            raise NotFound(f"no alert {cmd.references!r}", field="references")
        check_reference(
            cmd.msg_type,
            AlertStatus(referenced.status) if referenced is not None else None,
            referenced is None or referenced.incident_id == incident.id,
        )
        plan = await store.plan_values(tx.conn, category, level)
        values = incident_values(incident, plan, ctx, dict(cmd.values))
        if cmd.description_zh and cmd.description_en:
            infos = (
                Info("zh-CN", headline_zh(level, category), cmd.description_zh),
                Info("en-US", headline_en(level, category), cmd.description_en),
            )
        else:
            templates = await store.plan_templates(tx.conn, category, level, field="description_en")
            infos = compose_infos(templates, values, level, category)
        infos = tuple(
            Info(
                i.language,
                i.headline,
                i.description,
                cmd.instruction_zh if i.language == "zh-CN" else cmd.instruction_en,
            )
            for i in infos
        )
        area = area_of(cmd.area, incident, plan)
        now = utcnow()
        alert_id = new_id()
        await store.insert_alert(
            tx.conn,
            {
                "id": alert_id,
                "identifier": f"ECS-{alert_id}",
                "incident_id": incident.id,
                "msg_type": cmd.msg_type.value,
                "cap_status": cap_status(incident.exercise).value,
                "status": AlertStatus.draft.value,
                "version": 1,
                "category": category.value,
                "level": int(level),
                "infos": [
                    {
                        "language": i.language,
                        "headline": i.headline,
                        "description": i.description,
                        "instruction": i.instruction,
                    }
                    for i in infos
                ],
                "area": area_json(area),
                "references_id": referenced.id if referenced is not None else None,
                "expires": cmd.expires,
                "author": cmd.actor,
                "exercise": incident.exercise,
                "created_at": now,
                "updated_at": now,
            },
        )
        await publish_settlement(tx, incident.id)
        stored = await store.get_alert(tx.conn, alert_id)
        await tx.uow.commit()
        return stored

    return await transaction(ctx, work, cmd.actor)


async def edit_alert(ctx: Context, cmd: EditAlert) -> Any:
    """Change a draft seen at ``cmd.version``. Raises Conflict (409) for anything but a draft
    (a published alert: issue an Update), StaleVersion when it changed meanwhile."""

    async def work(tx: Tx) -> Any:
        alert = await _alert(tx, cmd.alert_id)
        incident = await load_incident(tx, alert.incident_id, cmd.drill_only)
        check_editable(AlertStatus(alert.status))
        values: dict[str, Any] = {}
        if cmd.area is not None:
            plan = await store.plan_values(tx.conn, incident.category, Level(incident.level))
            values["area"] = area_json(area_of(cmd.area, incident, plan))
        infos = [dict(i) for i in alert.infos]
        for info in infos:
            zh = info["language"] == "zh-CN"
            description = cmd.description_zh if zh else cmd.description_en
            instruction = cmd.instruction_zh if zh else cmd.instruction_en
            if description is not None:
                info["description"] = description
            if instruction is not None:
                info["instruction"] = instruction
        values["infos"] = infos
        if cmd.expires is not None:
            values["expires"] = cmd.expires
        changed = await store.edit_alert(tx.conn, alert.id, cmd.version, utcnow(), **values)
        if changed is None:
            raise StaleVersion(f"alert {alert.id} is at version {alert.version}, not {cmd.version}", field="version")
        await tx.uow.commit()
        return changed

    return await transaction(ctx, work, cmd.actor)


async def step_alert(ctx: Context, cmd: StepAlert) -> Any:
    """Move an alert seen at ``cmd.version`` by ``cmd.action``. Refusals: IllegalAlertStep (409)
    for a step the machine lacks, StaleVersion (409), Forbidden (403) for self-approval,
    InvalidInput (422) for a document that is not valid CAP 1.2 (on submit and approve), Conflict
    (409) when the alert an Update or Cancel references is no longer live at publication."""

    async def work(tx: Tx) -> Any:
        alert = await _alert(tx, cmd.alert_id)
        incident = await load_incident(tx, alert.incident_id, cmd.drill_only)
        status = AlertStatus(alert.status)
        target = next_status(status, cmd.action)
        if alert.version != cmd.version:
            raise StaleVersion(f"alert {alert.id} is at version {alert.version}, not {cmd.version}", field="version")
        now = utcnow()
        extra: dict[str, Any] = {}
        if cmd.action in (AlertAction.submit, AlertAction.approve):
            check_cap(document(alert, ctx, _reference_text(ctx, await _referenced(tx, alert))))
        if cmd.action is AlertAction.approve:
            check_approver(alert.author, cmd.actor)
            extra = {"approver": cmd.actor, "approved_at": now}
        if cmd.action is AlertAction.publish:
            changed = await _publish(ctx, tx, alert, incident, now)
        else:
            changed = await store.move_alert(tx.conn, alert.id, status, target, now, cmd.version, **extra)
        if changed is None:
            raise StaleVersion(f"alert {alert.id} changed meanwhile; read it again", field="version")
        await publish_settlement(tx, incident.id, incident)  # a step changes no incident row
        await tx.uow.commit()
        return changed

    if cmd.action is AlertAction.publish:
        await refresh_targets(ctx)
    changed = await transaction(ctx, work, cmd.actor)
    if cmd.action is AlertAction.publish:
        ctx.wake_deliveries()
    return changed


async def _publish(ctx: Context, tx: Tx, alert: Any, incident: Any, now: datetime) -> Any:
    referenced = await _referenced(tx, alert)
    if referenced is not None:
        ending = AlertAction.cancel if alert.msg_type == MsgType.Cancel else AlertAction.supersede
        ended = await store.move_alert(
            tx.conn, referenced.id, AlertStatus.published, next_status(AlertStatus.published, ending), now
        )
        check_reference(MsgType(alert.msg_type), None if ended is None else AlertStatus.published)
        tx.emit(
            AlertEnded(
                incident_id=incident.id,
                alert_id=ended.id,
                identifier=ended.identifier,
                status=ended.status,
                by_alert_id=alert.id,
            ),
            incident.id,
            incident.exercise,
        )
    published = await store.publish_alert(tx.conn, alert.id, now)
    if published is None:
        return None
    await queue(ctx, tx, published.exercise, 1, now, area_of_alert(published), alert_id=published.id)
    tx.emit(
        AlertPublished(
            incident_id=incident.id,
            alert_id=published.id,
            identifier=published.identifier,
            msg_type=published.msg_type,
            cap_status=published.cap_status,
            references=_reference_text(ctx, referenced),
            sent=published.sent,
            level=Level(published.level),
            author=published.author,
            approver=published.approver,
        ),
        incident.id,
        incident.exercise,
    )
    return published


async def _alert(tx: Tx, alert_id: str) -> Any:
    alert = await store.get_alert(tx.conn, alert_id)
    if alert is None:
        raise NotFound(f"no alert {alert_id!r}", field="alert_id")
    return alert


async def _referenced(tx: Tx, alert: Any) -> Any:
    return await store.get_alert(tx.conn, alert.references_id) if alert.references_id else None


def _reference_text(ctx: Context, referenced: Any) -> str | None:
    if referenced is None or referenced.sent is None:
        return None
    return cap_reference(ctx.settings.sender, referenced.identifier, referenced.sent)


async def expire_alerts(ctx: Context, cmd: ExpireAlerts) -> int:
    """Expire the published alerts whose ``expires`` passed (``notification.alert.ended``, and
    settlement where it changed); returns how many. Each once, whatever replica sweeps."""

    async def work(tx: Tx) -> int:
        expired = await store.expire_alerts(tx.conn, cmd.now)
        for alert in expired:
            tx.emit(
                AlertEnded(
                    incident_id=alert.incident_id, alert_id=alert.id, identifier=alert.identifier, status="expired"
                ),
                alert.incident_id,
                alert.exercise,
            )
        for incident_id in sorted({a.incident_id for a in expired}):
            await publish_settlement(tx, incident_id)
        await tx.uow.commit()
        return len(expired)

    return await transaction(ctx, work)
