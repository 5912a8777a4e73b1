"""Households: placed whole (one or a batch), checked in, checked out, moved or cancelled, with an
append-only history; and the reunification search, logged and rate-limited."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ecs.contracts_shelter import RegistrationChanged
from ecs.envelope import utcnow
from ecs.errors import Conflict, NotFound
from ecs.vocabulary import TERMINAL_STAGES, Stage

from .. import commands, store
from ..context import Context
from ..domain import (
    CHECKS_IN,
    HOLDS_PLACE,
    TAKES_PEOPLE,
    Needs,
    RegistrationAction,
    RegistrationStatus,
    TooManySearches,
    mask_id_number,
    mask_phone,
    next_registration_status,
    no_shelter_takes,
    normalise_name,
    place_households,
    protect,
    split_household,
)
from ..store import Registration
from .settlement import settle_if_done
from .tx import Tx, incident_lock, transaction

PLACED = "placed"
MAX_ROUNDS = 20
"""Times a batch plans again after other transactions took the places it planned with."""
MAX_CLAIMS = 3
"""Times one household's claim is tried while an open shelter seems to have room for it."""
_CARRIED = ("incident_id", "people", "wheelchairs", "pets", "origin_address", "exercise")


def new_registration_id() -> str:
    """A registration's id: 32 hex characters, unguessable."""
    return uuid.uuid4().hex


def _person_row(ctx: Context, p: commands.Person) -> dict[str, Any]:
    key = ctx.pii_key
    return {
        "name": p.name.strip(),
        "name_key": protect(normalise_name(p.name), key, "name"),
        "id_key": protect(p.id_number, key, "id") if p.id_number else None,
        "id_masked": mask_id_number(p.id_number) if p.id_number else None,
        "phone_key": protect(p.phone, key, "phone") if p.phone else None,
        "phone_masked": mask_phone(p.phone) if p.phone else None,
        "wheelchair": p.wheelchair,
        "consent_to_share": p.consent_to_share,
    }


def _changed(reg: Registration, action: str, before: RegistrationStatus | None, actor: str) -> RegistrationChanged:
    return RegistrationChanged(
        registration_id=reg.id,
        shelter_id=reg.shelter_id,
        incident_id=reg.incident_id,
        action=action,
        from_status=before.value if before is not None else None,
        to_status=reg.status.value,
        people=reg.people,
        wheelchairs=reg.wheelchairs,
        pets=reg.pets,
        actor=actor,
    )


def _history(
    reg: Registration, action: str, before: RegistrationStatus | None, actor: str, **where: Any
) -> dict[str, Any]:
    return {
        "registration_id": reg.id,
        "action": action,
        "from_status": before.value if before is not None else None,
        "to_status": reg.status.value,
        "from_shelter": where.get("from_shelter"),
        "to_shelter": where.get("to_shelter", reg.shelter_id),
        "actor": actor,
        "at": utcnow(),
    }


async def _exercise_of(tx: Tx, incident_id: str | None, exercise: bool) -> bool:
    """An incident's evacuees live in the incident's world: an exercise incident never takes live
    places. Raises NotFound for an incident shelter-registry has not heard of, Conflict for one
    that is closed or cancelled (placing for it would reopen its settlement)."""
    if incident_id is None:
        return exercise
    row = await store.incident(tx.conn, incident_id)
    if row is None:
        raise NotFound(f"no incident {incident_id!r} known to shelter-registry", field="incident_id")
    if Stage(row.stage) in TERMINAL_STAGES:
        raise Conflict(f"incident {incident_id} is {row.stage}: nobody is placed for it any more", field="incident_id")
    return bool(row.exercise)


async def place_household(ctx: Context, cmd: commands.PlaceHousehold) -> Registration:
    """Place the household whole in the nearest open shelter (of its world) that takes it; a place
    another replica took meanwhile makes it try the next. Raises Conflict (409, naming the
    largest household an open shelter could take) when none does; NotFound for an unknown shelter
    or incident."""

    async def work(tx: Tx) -> Registration:
        now = utcnow()
        exercise = await _exercise_of(tx, cmd.incident_id, cmd.exercise)
        row = {
            "id": new_registration_id(),
            "shelter_id": "",  # the shelter that takes the household, below
            "incident_id": cmd.incident_id,
            "status": RegistrationStatus.planned.value,
            "people": cmd.needs.people,
            "wheelchairs": cmd.needs.wheelchairs,
            "pets": cmd.needs.pets,
            "origin_address": cmd.origin_address,
            "exercise": exercise,
            "moved_to": None,
            "version": 1,
            "created_at": now,
            "changed_at": now,
            "household_ref": None,
        }
        people = [_person_row(ctx, p) for p in cmd.people]
        if cmd.shelter_id is None and not ctx.db.is_sqlite:
            # PostgreSQL: the claim, the registration, its people and its history in one statement.
            row["shelter_id"] = await _place_nearest(tx, cmd, row, people)
            reg = Registration(**{**row, "status": RegistrationStatus.planned})
        else:
            if cmd.shelter_id is not None:
                chosen = await store.shelter(tx.conn, cmd.shelter_id)
                if chosen.status not in TAKES_PEOPLE or chosen.exercise is not exercise:
                    raise Conflict(f"shelter {chosen.id} is {chosen.status.value}: it takes no one", field="shelter_id")
                if not await store.take_places(tx.conn, chosen.id, cmd.needs, exercise, now):
                    raise no_shelter_takes(cmd.needs, await store.largest_room(tx.conn, exercise, cmd.needs))
                row["shelter_id"] = chosen.id
            else:
                row["shelter_id"] = await _claim_nearest(tx, cmd, exercise, now)
            await store.insert_registration(tx.conn, row, people)
            reg = Registration(**{**row, "status": RegistrationStatus.planned})
            await store.record_history(tx.conn, [_history(reg, PLACED, None, tx.actor)])
        tx.emit(_changed(reg, PLACED, None, tx.actor), reg.incident_id, reg.exercise)
        if reg.incident_id is not None:
            await settle_if_done(tx, reg.incident_id)
        await tx.uow.commit()
        return reg

    return await transaction(ctx, work, cmd.actor)


async def _claim_nearest(tx: Tx, cmd: commands.PlaceHousehold, exercise: bool, now: datetime) -> str:
    """The nearest open shelter that took the household whole (store.claim_nearest: one
    statement picks and claims it). A miss is looked at again: when an open shelter could take
    the household now (places given back meanwhile), claim again; else the 409 naming the
    largest household one could take."""
    for _ in range(MAX_CLAIMS):
        shelter_id = await store.claim_nearest(tx.conn, cmd.lat, cmd.lon, cmd.needs, exercise, now)
        if shelter_id is not None:
            return shelter_id
        largest = await store.largest_room(tx.conn, exercise, cmd.needs)
        if largest < cmd.needs.people:
            break
    raise no_shelter_takes(cmd.needs, largest)


async def _place_nearest(
    tx: Tx, cmd: commands.PlaceHousehold, row: dict[str, Any], people: list[dict[str, Any]]
) -> str:
    """PostgreSQL's one-statement placement (store.place_nearest): the shelter that took the
    household, its registration, people and history written. A miss is looked at again as in
    ``_claim_nearest``; raises the 409 naming the largest household one could take."""
    for _ in range(MAX_CLAIMS):
        shelter_id = await store.place_nearest(tx.conn, row, people, cmd.lat, cmd.lon, PLACED, tx.actor)
        if shelter_id is not None:
            return shelter_id
        largest = await store.largest_room(tx.conn, row["exercise"], cmd.needs)
        if largest < cmd.needs.people:
            break
    raise no_shelter_takes(cmd.needs, largest)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Where each household of a batch went (None: no open shelter took it)."""

    placed: list[str | None]
    already: int


async def place_batch(ctx: Context, cmd: commands.PlaceBatch) -> BatchOutcome:
    """Place a batch of households whole, nearest first: one conditional update per shelter for
    all it receives, so the database still refuses any over-claim; a shelter whose update fails
    (another replica took places) is dropped and its households placed again. Households already
    placed (by ``refs``) are not placed twice: a batch repeated after a crash completes it."""

    async def work(tx: Tx) -> BatchOutcome:
        now = utcnow()
        exercise = await _exercise_of(tx, cmd.incident_id, cmd.exercise)
        if cmd.incident_id is not None:
            await tx.uow.lock(incident_lock(cmd.incident_id))
        done = await store.placed_refs(tx.conn, cmd.incident_id, list(cmd.refs))
        todo = [i for i, ref in enumerate(cmd.refs) if ref not in done]
        groups: list[tuple[int, Needs]] = []  # (household index, group)
        for i in todo:
            groups.append((i, cmd.households[i]))
        rooms = await store.open_rooms(tx.conn, exercise)
        placed: dict[int, list[tuple[str, Needs]]] = {}
        rounds = 0
        while groups:
            plan = place_households(rooms, cmd.lat, cmd.lon, [g for _, g in groups])
            refused: set[str] = set()
            for shelter_id, needs in plan.taken.items():
                if not await store.take_places(tx.conn, shelter_id, needs, exercise, now):
                    refused.add(shelter_id)
            left: list[tuple[int, Needs]] = []
            for (i, g), where in zip(groups, plan.placed, strict=True):
                if where is None or where in refused:
                    left.append((i, g))
                else:
                    placed.setdefault(i, []).append((where, g))
            if refused:
                # Another transaction took places meanwhile: plan the rest again on what is left now
                # (committed work is visible); after MAX_ROUNDS, leave the contended shelters alone.
                rounds += 1
                gone = refused if rounds >= MAX_ROUNDS else set()
                rooms = [r for r in await store.open_rooms(tx.conn, exercise) if r.shelter_id not in gone]
                groups = left
                continue
            if left and cmd.allow_split:
                splits = [(i, part) for i, g in left if g.people > 1 for part in split_household(g, 2)]
                if splits and len(splits) > len(left):
                    rooms = await store.open_rooms(tx.conn, exercise)
                    groups = splits
                    continue
            break
        rows = []
        out: list[str | None] = [done.get(ref) for ref in cmd.refs]
        for i, parts in placed.items():
            for n, (shelter_id, g) in enumerate(parts):
                rows.append(
                    {
                        "id": new_registration_id(),
                        "shelter_id": shelter_id,
                        "incident_id": cmd.incident_id,
                        "status": RegistrationStatus.planned.value,
                        "people": g.people,
                        "wheelchairs": g.wheelchairs,
                        "pets": g.pets,
                        "origin_address": "",
                        "exercise": exercise,
                        "moved_to": None,
                        "version": 1,
                        "created_at": now,
                        "changed_at": now,
                        "household_ref": cmd.refs[i] if n == 0 else f"{cmd.refs[i]}#{n}",
                    }
                )
            out[i] = parts[0][0]
        await store.insert_registrations(ctx.db, tx.conn, rows)
        await store.record_history(
            tx.conn,
            [
                {
                    "registration_id": r["id"],
                    "action": PLACED,
                    "from_status": None,
                    "to_status": r["status"],
                    "from_shelter": None,
                    "to_shelter": r["shelter_id"],
                    "actor": tx.actor,
                    "at": now,
                }
                for r in rows
            ],
        )
        for r in rows:
            tx.emit(
                RegistrationChanged(
                    registration_id=r["id"],
                    shelter_id=r["shelter_id"],
                    incident_id=cmd.incident_id,
                    action=PLACED,
                    from_status=None,
                    to_status=r["status"],
                    people=r["people"],
                    wheelchairs=r["wheelchairs"],
                    pets=r["pets"],
                    actor=tx.actor,
                ),
                cmd.incident_id,
                exercise,
            )
        if cmd.incident_id is not None and rows:
            await settle_if_done(tx, cmd.incident_id)
        await tx.uow.commit()
        return BatchOutcome(out, len(done))

    return await transaction(ctx, work, cmd.actor)


async def change_registration(ctx: Context, cmd: commands.ChangeRegistration) -> Registration:
    """Check in, check out, cancel or move. Check-in needs the shelter still open (409 for a
    closed or out-of-service one); check-out, cancel and move give the places back. Raises
    NotFound, IllegalTransition, StaleVersion, Conflict."""

    async def work(tx: Tx) -> Registration:
        now = utcnow()
        reg = await store.registration(tx.conn, cmd.registration_id)
        target = next_registration_status(reg.status, cmd.action)
        where: dict[str, Any] = {}
        if cmd.action is RegistrationAction.check_in:
            shelter = await store.shelter(tx.conn, reg.shelter_id)
            if shelter.status not in CHECKS_IN:
                raise Conflict(
                    f"shelter {shelter.id} is {shelter.status.value}: nobody checks in there",
                    shelter_status=shelter.status.value,
                )
        moved_to = None
        if cmd.action is RegistrationAction.move:
            if cmd.to_shelter is None or cmd.to_shelter == reg.shelter_id:
                raise Conflict("a move needs another shelter", field="to_shelter")
            dest = await store.shelter(tx.conn, cmd.to_shelter)
            if not await store.take_places(tx.conn, dest.id, reg.needs, reg.exercise, now):
                raise Conflict(
                    f"shelter {dest.id} cannot take this household now ({dest.status.value})", field="to_shelter"
                )
            moved_to = new_registration_id()
            where = {"from_shelter": reg.shelter_id, "to_shelter": dest.id}
        after = await store.move_registration(tx.conn, reg, target, now, cmd.version, moved_to)
        if target not in HOLDS_PLACE:
            await store.give_back_places(tx.conn, reg.shelter_id, reg.needs, now)
        history = [_history(after, cmd.action.value, reg.status, tx.actor, **where)]
        if moved_to is not None:
            row = {
                **{
                    k: getattr(reg, k)
                    for k in ("incident_id", "people", "wheelchairs", "pets", "origin_address", "exercise")
                },
                "id": moved_to,
                "shelter_id": cmd.to_shelter,
                "status": reg.status.value,  # planned stays planned, checked in stays checked in
                "moved_to": None,
                "version": 1,
                "created_at": now,
                "changed_at": now,
                "household_ref": None,
            }
            await store.insert_registration(tx.conn, row, [])
            await store.copy_people(tx.conn, reg.id, moved_to)
            new = await store.registration(tx.conn, moved_to)
            history.append(_history(new, cmd.action.value, None, tx.actor, **where))
            tx.emit(_changed(new, cmd.action.value, None, tx.actor), new.incident_id, new.exercise)
        await store.record_history(tx.conn, history)
        tx.emit(_changed(after, cmd.action.value, reg.status, tx.actor), after.incident_id, after.exercise)
        if after.incident_id is not None:
            await settle_if_done(tx, after.incident_id)
        await tx.uow.commit()
        return after

    return await transaction(ctx, work, cmd.actor)


@dataclass(frozen=True, slots=True)
class Found:
    """A search's answer: safe at a shelter (its id), and whether the person consented to share
    their registration."""

    registration_id: str | None
    shelter_id: str | None
    consented: bool


async def search(ctx: Context, cmd: commands.Search) -> Found:
    """Find a person by full name and phone or ID number; every search is logged, and a searcher
    over ``search_limit`` in ``search_window_s`` is refused (TooManySearches, 429) before looking."""

    async def work(tx: Tx) -> Found:
        now = utcnow()
        since = now - timedelta(seconds=ctx.settings.search_window_s)
        if await store.searches_since(tx.conn, cmd.searcher, since) >= ctx.settings.search_limit:
            raise TooManySearches(
                f"at most {ctx.settings.search_limit} searches in {ctx.settings.search_window_s:g} s",
                retry_after_s=ctx.settings.search_window_s,
            )
        key = ctx.pii_key
        name_key = protect(normalise_name(cmd.name), key, "name")
        phone_key = protect(cmd.phone, key, "phone") if cmd.phone else None
        id_key = None if phone_key else protect(cmd.id_number or "", key, "id")
        matches = await store.find_person(tx.conn, name_key, phone_key, id_key)
        live = [m for m in matches if m[3] != RegistrationStatus.cancelled.value]
        hit = live[0] if live else None
        await store.log_search(
            tx.conn,
            {
                "searcher": cmd.searcher,
                "by": "phone" if phone_key else "id",
                "found": hit is not None,
                "registration_id": hit[0] if hit else None,
                "at": now,
            },
        )
        await tx.uow.commit()
        if hit is None:
            return Found(None, None, False)
        return Found(hit[0], hit[2], bool(hit[1]))

    return await transaction(ctx, work, cmd.searcher)


async def forget_expired(ctx: Context) -> int:
    """Reunification records expire ``retention_days`` after their incident closed: their people
    are deleted (the places, history and search audit stay). Returns how many people went."""

    async def work(tx: Tx) -> int:
        cutoff = utcnow() - timedelta(days=ctx.settings.retention_days)
        forgotten = await store.forget_people(tx.conn, cutoff)
        await tx.uow.commit()
        return forgotten

    return await transaction(ctx, work, "retention")
