"""Response plans: the shipped ones stored at start-up, and a commander's new version; every
version kept, the active one published to the other services."""

from __future__ import annotations

import structlog

from ecs.envelope import make_event, utcnow
from ecs.errors import StaleVersion

from .. import store
from ..commands import PublishPlan
from ..context import Context
from ..domain import SERVICE, ResponsePlan, check_next_version, plan_published, read_new_plan
from ..plans import load_shipped_plans, shipped_files
from .tx import PLAN_PUBLISHED, Tx, transaction

log = structlog.get_logger("dispatch")
PLANS_LOCK = "dispatch:plans"


async def seed_plans(ctx: Context) -> int:
    """Store each shipped plan newer than its category's active one; returns how many.

    Every replica may do this at start: the primary key (category, version) lets one insert win.
    """
    bodies = shipped_files()
    added = 0
    for category, plan in load_shipped_plans().items():
        async with ctx.db.uow() as uow:
            tx = Tx(uow, SERVICE)
            await uow.lock(PLANS_LOCK)
            current = await store.get_plan(uow.conn, str(category))
            if current is not None and current.version >= plan.version:
                continue
            if await _store(tx, plan, bodies[f"{category}.yaml"], "shipped"):
                added += 1
            await uow.commit()
    await ctx.plans.refresh()
    return added


async def publish_plan(ctx: Context, cmd: PublishPlan) -> ResponsePlan:
    """A commander's new version of a category's plan: refused whole if malformed (PlanError, 422
    naming each field and its line) or not the active version + 1 (StaleVersion, 409)."""
    plan = read_new_plan(cmd.category, cmd.body)

    async def work(tx: Tx) -> ResponsePlan:
        await tx.uow.lock(PLANS_LOCK)
        current = await store.get_plan(tx.conn, cmd.category)
        check_next_version(plan, current.version if current is not None else None)
        if not await _store(tx, plan, cmd.body, "api"):
            raise StaleVersion(f"plan {cmd.category} version {plan.version} was stored meanwhile: reload it")
        await tx.uow.commit()
        return plan

    await transaction(ctx, work, cmd.actor)
    ctx.plans.activate(plan.version, plan)
    log.info("plan.published", category=cmd.category, version=plan.version, actor=cmd.actor)
    return plan


async def _store(tx: Tx, plan: ResponsePlan, body: str, origin: str) -> bool:
    """Store a version and announce it; False if that version is stored already."""
    now = utcnow()
    if not await store.insert_plan(tx.conn, plan, body, origin, tx.actor, now):
        return False
    # Dumped as Python values: orjson writes published_at as the RPC answer does (with +00:00).
    data = plan_published(plan, tx.actor, now).model_dump()
    tx.uow.emit(make_event(PLAN_PUBLISHED, data, source=SERVICE, correlation_id=f"plan:{plan.category}"))
    return True
