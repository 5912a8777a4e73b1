"""Shelters: added, changed, and moved through their status machine."""

from __future__ import annotations

from typing import Any

from ecs.contracts_shelter import ShelterStatusChanged
from ecs.envelope import utcnow

from .. import commands, store
from ..context import Context
from ..domain import effective_capacity, next_status
from ..store import Shelter
from .tx import Tx, transaction


async def register_shelters(ctx: Context, cmd: commands.RegisterShelters) -> list[Shelter]:
    """Add shelters, all or none. Raises Conflict (409) when an id is taken."""

    async def work(tx: Tx) -> list[Shelter]:
        now = utcnow()
        rows = [
            {**s, "occupied": 0, "accessible_used": 0, "pets_used": 0, "opened_for": None, "version": 1}
            | {"created_at": now, "changed_at": now}
            for s in cmd.shelters
        ]
        await store.insert_shelters(tx.conn, rows)
        out = [await store.shelter(tx.conn, r["id"]) for r in rows]
        await tx.uow.commit()
        return out

    return await transaction(ctx, work, cmd.actor)


async def update_shelter(ctx: Context, cmd: commands.UpdateShelter) -> Shelter:
    """Change facts; the capacity follows a new area (or a new hand-set capacity, never above what
    the area allows). Raises StaleVersion, InvalidInput (capacity), Conflict (fewer places than people)."""

    async def work(tx: Tx) -> Shelter:
        current = await store.shelter(tx.conn, cmd.shelter_id)
        changes: dict[str, Any] = dict(cmd.changes)
        if {"area_m2", "capacity"} & changes.keys():
            area = changes.get("area_m2", current.area_m2)
            changes["capacity"] = effective_capacity(area, current.m2_per_person, changes.get("capacity"))
            changes["day_capacity"] = max(changes.get("day_capacity", current.day_capacity), changes["capacity"])
        shelter = await store.update_shelter(tx.conn, cmd.shelter_id, cmd.version, changes, utcnow())
        await tx.uow.commit()
        return shelter

    return await transaction(ctx, work, cmd.actor)


async def change_status(ctx: Context, cmd: commands.ChangeShelterStatus) -> Shelter:
    """Raises NotFound, IllegalTransition (409, naming the people still there on close), StaleVersion."""

    async def work(tx: Tx) -> Shelter:
        current = await store.shelter(tx.conn, cmd.shelter_id)
        target = next_status(current.status, cmd.action, current.occupied)
        shelter = await store.set_status(tx.conn, current.id, current.status, target, cmd.version, utcnow())
        emit_status(tx, current, shelter)
        await tx.uow.commit()
        return shelter

    return await transaction(ctx, work, cmd.actor)


def emit_status(tx: Tx, before: Shelter, after: Shelter) -> None:
    """``shelter.status.changed`` for a change ``before`` → ``after``."""
    tx.emit(
        ShelterStatusChanged(
            shelter_id=after.id,
            from_status=before.status.value,
            to_status=after.status.value,
            capacity=after.capacity,
            occupied=after.occupied,
            actor=tx.actor,
            version=after.version,
            incident_id=after.opened_for,
        ),
        after.opened_for,
        after.exercise,
    )
