"""Official statements: drafting (from the plan's ``official_statement`` or ``rumor_rebuttal``
template, or by hand), the approval steps, and publishing — which meets the release clocks,
tells the lifecycle (``notification.statement.published``), answers the rumors it rebuts, and
queues the statement for every channel of its world, as an alert is (handlers.deliveries).

A statement has no area of its own; its SMS and cell broadcast go to the people at the scene: the
incident's perimeter as incident-intake set it, else the circle of the plan's evacuation (or
isolation) radius around the incident, the area an alert drafted without one gets. Not the whole
city (every cell of the districts it touches): cell broadcast and area SMS are warning channels
people cannot opt out of, and a city-wide push for each statement would teach them to ignore it;
the wider public reads statements on the posts and webhooks, which have no area. With neither a
perimeter nor a plan radius, SMS and cell broadcast are skipped, saying so.

Settlement does not wait for a statement's deliveries, as it does not for an alert's: it says
what the service still has to decide, and a delivery is the worker's to finish — retried until
it is delivered whatever the incident's stage — so an unreachable channel never holds the
incident open; the deliveries stay listed at ``GET /v1/statements/{id}/deliveries``."""

from __future__ import annotations

from typing import Any

from ecs.contracts import StatementPublished
from ecs.contracts_notification import ClockEvent, RumorChanged
from ecs.envelope import new_id, utcnow
from ecs.errors import InvalidInput, NotFound, StaleVersion
from ecs.vocabulary import Category, Level

from .. import store
from ..commands import DraftStatement, StepStatement
from ..context import Context
from ..domain import (
    CATEGORY_ZH,
    Reach,
    RumorAction,
    RumorStatus,
    StatementAction,
    StatementKind,
    StatementStatus,
    check_approver,
    clocks_met_by,
    next_rumor_status,
    next_statement_status,
    reach_of_perimeter,
    render,
)
from .alerts import incident_values
from .deliveries import queue, refresh_targets
from .facts import load_incident, publish_settlement
from .tx import CLOCK_SUBJECT, Tx, transaction

TEMPLATE_OF = {
    StatementKind.information: "official_statement",
    StatementKind.press_conference: "official_statement",
    StatementKind.rebuttal: "rumor_rebuttal",
}
"""The plan template each kind of statement is drafted from."""

ZH_STATEMENT = "{time}，{address}发生{category_zh}，相关部门已在现场处置。请以官方发布信息为准。咨询电话{hotline}。"
ZH_REBUTTAL = "关于{address}{category_zh}的网传信息不实。请以官方发布信息为准，不信谣、不传谣。咨询电话{hotline}。"
EN_REBUTTAL = (
    "Reports circulating online about the {category} at {address} are false. "
    "Rely on official information only. Hotline {hotline}."
)


async def draft_statement(ctx: Context, cmd: DraftStatement) -> Any:
    """Draft a statement; returns it. Raises NotFound, InvalidInput (a template variable the
    incident lacks, no template and no text, a rumor of another incident)."""

    async def work(tx: Tx) -> Any:
        incident = await load_incident(tx, cmd.incident_id, cmd.drill_only, new_work=True)
        level, category = Level(incident.level), Category(incident.category)
        plan = await store.plan_values(tx.conn, category, level)
        values = {**incident_values(incident, plan, ctx, dict(cmd.values)), "category_zh": CATEGORY_ZH[category]}
        templates = await store.plan_templates(tx.conn, category, level, field="text_en")
        rebuttal = cmd.kind is StatementKind.rebuttal
        text_en = cmd.text_en
        if text_en is None:
            template = templates.get(TEMPLATE_OF[cmd.kind]) or (EN_REBUTTAL if rebuttal else None)
            if template is None:
                raise InvalidInput(
                    f"the plan has no {TEMPLATE_OF[cmd.kind]} template for this level: give text_en", field="text_en"
                )
            text_en = render(template, values, TEMPLATE_OF[cmd.kind])
        text_zh = cmd.text_zh
        if text_zh is None:
            key = TEMPLATE_OF[cmd.kind] + "_zh"
            text_zh = render(templates.get(key, ZH_REBUTTAL if rebuttal else ZH_STATEMENT), values, key)
        for rumor_id in cmd.answers_rumors:
            rumor = await store.get_rumor(tx.conn, rumor_id)
            if rumor is None or rumor.incident_id != incident.id:
                raise InvalidInput(f"no rumor {rumor_id!r} about this incident", field="answers_rumors")
        now = utcnow()
        statement_id = new_id()
        await store.insert_statement(
            tx.conn,
            {
                "id": statement_id,
                "incident_id": incident.id,
                "kind": cmd.kind.value,
                "status": StatementStatus.draft.value,
                "version": 1,
                "text_zh": text_zh,
                "text_en": text_en,
                "answers": list(cmd.answers_rumors),
                "author": cmd.actor,
                "exercise": incident.exercise,
                "created_at": now,
                "updated_at": now,
            },
        )
        await publish_settlement(tx, incident.id)
        stored = await store.get_statement(tx.conn, statement_id)
        await tx.uow.commit()
        return stored

    return await transaction(ctx, work, cmd.actor)


async def step_statement(ctx: Context, cmd: StepStatement) -> Any:
    """Move a statement seen at ``cmd.version``. Refusals: IllegalStatementStep and StaleVersion
    (409), Forbidden (403) when the author approves their own statement."""

    async def work(tx: Tx) -> Any:
        statement = await store.get_statement(tx.conn, cmd.statement_id)
        if statement is None:
            raise NotFound(f"no statement {cmd.statement_id!r}", field="statement_id")
        incident = await load_incident(tx, statement.incident_id, cmd.drill_only)
        status = StatementStatus(statement.status)
        target = next_statement_status(status, cmd.action)
        now = utcnow()
        extra: dict[str, Any] = {}
        if cmd.action is StatementAction.approve:
            check_approver(statement.author, cmd.actor, "statement")
            extra["approver"] = cmd.actor
        if cmd.action is StatementAction.publish:
            extra["published_at"] = now
        changed = await store.move_statement(tx.conn, statement.id, status, target, now, cmd.version, **extra)
        if changed is None:
            raise StaleVersion(
                f"statement {statement.id} is at version {statement.version}, not {cmd.version}", field="version"
            )
        if cmd.action is StatementAction.publish:
            await _published(tx, incident, changed, now, cmd.actor)
            area = await statement_area(tx, incident)
            await queue(ctx, tx, changed.exercise, 1, now, area, statement_id=changed.id)
        await publish_settlement(tx, incident.id)
        await tx.uow.commit()
        return changed

    if cmd.action is StatementAction.publish:
        await refresh_targets(ctx)
    changed = await transaction(ctx, work, cmd.actor)
    if cmd.action is StatementAction.publish:
        ctx.wake_deliveries()
    return changed


async def statement_area(tx: Tx, incident: Any) -> tuple[Reach | None, str]:
    """Where a statement's SMS and cell broadcast go (see the module's docstring), and its name."""
    reach = reach_of_perimeter(incident.perimeter)
    if reach is not None:
        return reach, "the incident's perimeter"
    plan = await store.plan_values(tx.conn, Category(incident.category), Level(incident.level))
    radius = plan.get("evacuation_radius_m") or plan.get("isolation_radius_m")
    if radius:
        return Reach(circle=(incident.lat, incident.lon, float(radius))), f"{radius} m around the incident"
    return None, "the incident has neither a perimeter nor a plan radius"


async def _published(tx: Tx, incident: Any, statement: Any, now: Any, actor: str) -> None:
    tx.emit(StatementPublished(incident_id=incident.id, statement_id=statement.id), incident.id, incident.exercise)
    for clock in await store.meet_clocks(
        tx.conn, incident.id, clocks_met_by(StatementKind(statement.kind)), statement.id, now
    ):
        event = ClockEvent(
            incident_id=incident.id,
            kind=clock.kind.value,
            started_at=clock.started_at,
            due_at=clock.due_at,
            met_at=clock.met_at,
            statement_id=statement.id,
        )
        tx.emit(event, incident.id, incident.exercise, CLOCK_SUBJECT.format("met"))
    for rumor_id in statement.answers or ():
        rumor = await store.get_rumor(tx.conn, rumor_id)
        status = RumorStatus(rumor.status)
        if (status, RumorAction.answer) not in _ANSWERABLE:
            continue  # confirmed or already answered: the link is kept all the same
        target = next_rumor_status(status, RumorAction.answer)
        if await store.move_rumor(tx.conn, rumor_id, status, target, now) is not None:
            tx.emit(
                RumorChanged(
                    incident_id=incident.id,
                    rumor_id=rumor_id,
                    from_status=status.value,
                    to_status=target.value,
                    actor=actor,
                    answered_by=statement.id,
                ),
                incident.id,
                incident.exercise,
            )
        await store.link_answer(tx.conn, rumor_id, now, statement_id=statement.id)


_ANSWERABLE = {(RumorStatus.refuted, RumorAction.answer), (RumorStatus.unverified, RumorAction.answer)}
