"""The rumor register: reporting a rumor and moving it on (verify, answer with a published
statement or alert, close). Each answer is linked to the rumor."""

from __future__ import annotations

from typing import Any

from ecs.contracts_notification import RumorChanged
from ecs.envelope import new_id, utcnow
from ecs.errors import Conflict, InvalidInput, NotFound, StaleVersion

from .. import store
from ..commands import ReportRumor, StepRumor
from ..context import Context
from ..domain import AlertStatus, RumorAction, RumorStatus, StatementStatus, next_rumor_status
from .facts import load_incident, publish_settlement
from .tx import Tx, transaction


async def report_rumor(ctx: Context, cmd: ReportRumor) -> Any:
    """Register a rumor about the incident; returns it."""

    async def work(tx: Tx) -> Any:
        incident = await load_incident(tx, cmd.incident_id, cmd.drill_only, new_work=True)
        now = utcnow()
        rumor_id = new_id()
        await store.insert_rumor(
            tx.conn,
            {
                "id": rumor_id,
                "incident_id": incident.id,
                "status": RumorStatus.reported.value,
                "version": 1,
                "source": cmd.source,
                "text": cmd.text,
                "link": cmd.link,
                "first_seen": cmd.first_seen,
                "reach": cmd.reach,
                "reporter": cmd.actor,
                "exercise": incident.exercise,
                "created_at": now,
                "updated_at": now,
            },
        )
        tx.emit(
            RumorChanged(
                incident_id=incident.id, rumor_id=rumor_id, to_status=RumorStatus.reported.value, actor=cmd.actor
            ),
            incident.id,
            incident.exercise,
        )
        await publish_settlement(tx, incident.id)
        stored = await store.get_rumor(tx.conn, rumor_id)
        await tx.uow.commit()
        return stored

    return await transaction(ctx, work, cmd.actor)


async def step_rumor(ctx: Context, cmd: StepRumor) -> Any:
    """Move a rumor seen at ``cmd.version``. An answer needs a published statement or alert of the
    same incident (InvalidInput, Conflict); IllegalRumorStep and StaleVersion are 409."""

    async def work(tx: Tx) -> Any:
        rumor = await store.get_rumor(tx.conn, cmd.rumor_id)
        if rumor is None:
            raise NotFound(f"no rumor {cmd.rumor_id!r}", field="rumor_id")
        incident = await load_incident(tx, rumor.incident_id, cmd.drill_only)
        status = RumorStatus(rumor.status)
        target = next_rumor_status(status, cmd.action)
        if cmd.action is RumorAction.answer:
            await _check_answer(tx, cmd, incident.id)
        now = utcnow()
        changed = await store.move_rumor(tx.conn, rumor.id, status, target, now, cmd.version)
        if changed is None:
            raise StaleVersion(f"rumor {rumor.id} is at version {rumor.version}, not {cmd.version}", field="version")
        if cmd.action is RumorAction.answer:
            await store.link_answer(tx.conn, rumor.id, now, statement_id=cmd.statement_id, alert_id=cmd.alert_id)
        tx.emit(
            RumorChanged(
                incident_id=incident.id,
                rumor_id=rumor.id,
                from_status=status.value,
                to_status=target.value,
                actor=cmd.actor,
                answered_by=cmd.statement_id or cmd.alert_id,
            ),
            incident.id,
            incident.exercise,
        )
        await publish_settlement(tx, incident.id)
        await tx.uow.commit()
        return changed

    return await transaction(ctx, work, cmd.actor)


async def _check_answer(tx: Tx, cmd: StepRumor, incident_id: str) -> None:
    if (cmd.statement_id is None) == (cmd.alert_id is None):
        raise InvalidInput("an answer names exactly one of statement_id and alert_id", field="statement_id")
    if cmd.statement_id is not None:
        answer = await store.get_statement(tx.conn, cmd.statement_id)
        field, published = "statement_id", answer is not None and answer.status == StatementStatus.published
    else:
        answer = await store.get_alert(tx.conn, cmd.alert_id)
        field, published = "alert_id", answer is not None and answer.status == AlertStatus.published
    if answer is None or answer.incident_id != incident_id:
        raise InvalidInput(f"no such {field.removesuffix('_id')} about this incident", field=field)
    if not published:
        raise Conflict(f"the answer must be published first; it is '{answer.status}'", field=field)
