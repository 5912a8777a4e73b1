"""Response plans: every version kept in the database, the active one of each category in memory,
published to the other services when it changes."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

import structlog

from ecs.db import Database, UnitOfWork
from ecs.envelope import make_event
from ecs.errors import NotFound, StaleVersion
from ecs.vocabulary import Category

from . import store
from .domain import (
    LevelPlan,
    PlanError,
    PlanProblem,
    ResponsePlan,
    load_shipped_plans,
    parse_plan,
)

log = structlog.get_logger("dispatch")
SOURCE = "dispatch"


def _now() -> datetime:
    return datetime.now(UTC)


def plan_document(plan: ResponsePlan) -> dict[str, Any]:
    """The plan in the form published to other services (ecs.contracts.PlanPublished)."""
    return plan.model_dump(mode="json")


class PlanBook:
    """The active plan of each category; every version is kept in the database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._active: dict[str, tuple[int, ResponsePlan]] = {}

    def active(self, category: str) -> tuple[int, ResponsePlan]:
        try:
            return self._active[category]
        except KeyError:
            raise NotFound(f"no response plan for category {category!r}", category=category) from None

    def level_plan(self, category: str, level: int) -> tuple[int, LevelPlan]:
        version, plan = self.active(category)
        return version, plan.for_level(level)

    def categories(self) -> list[str]:
        return sorted(self._active)

    async def seed(self) -> int:
        """Store each shipped plan that is newer than the category's active one; returns how many.

        Every replica may do this at start: the primary key (category, version) lets one insert win.
        """
        added = 0
        for category, plan in load_shipped_plans().items():
            body = _shipped_body(category)
            async with self.db.uow() as uow:
                await uow.lock("dispatch:plans")
                current = await store.get_plan(uow.conn, str(category))
                if current is not None and current.version >= plan.version:
                    continue
                inserted = await self._insert(uow, plan, body, "shipped", "dispatch")
                await uow.commit()
                added += inserted
        await self.refresh()
        return added

    async def _insert(self, uow: UnitOfWork, plan: ResponsePlan, body: str, origin: str, actor: str) -> int:
        now = _now()
        document = plan_document(plan)
        res = await uow.conn.execute(
            self.db.insert_ignore(store.plans).values(
                category=str(plan.category),
                version=plan.version,
                body=body,
                document=document,
                origin=origin,
                actor=actor,
                created_at=now,
            )
        )
        if res.rowcount != 1:
            return 0
        data = {**document, "actor": actor, "published_at": now}
        uow.emit(make_event("dispatch.plan.published", data, source=SOURCE, correlation_id=f"plan:{plan.category}"))
        return 1

    async def refresh(self) -> None:
        async with self.db.engine.connect() as conn:
            versions = await store.active_plan_versions(conn)
            for category, version in versions.items():
                cached = self._active.get(category)
                if cached is not None and cached[0] == version:
                    continue
                row = await store.get_plan(conn, category, version)
                if row is not None:
                    self._active[category] = (version, parse_plan(row.body, f"plans/{category}.yaml v{version}"))

    async def publish(self, category: str, body: str, actor: str) -> ResponsePlan:
        """A new version from an operator: refused whole (422 naming field and line) if malformed."""
        source = f"plans/{category}.yaml"
        if category not in {c.value for c in Category}:
            raise NotFound(f"no incident category {category!r}", category=category)
        plan = parse_plan(body, source)
        if plan.category != category:
            raise PlanError(
                source,
                [
                    PlanProblem(
                        "category",
                        _line_of_key(body, "category"),
                        f"is {plan.category}, but this is the plan of {category}",
                    )
                ],
            )
        async with self.db.uow() as uow:
            await uow.lock("dispatch:plans")
            current = await store.get_plan(uow.conn, category)
            expected = (current.version if current is not None else 0) + 1
            if plan.version != expected:
                raise StaleVersion(
                    f"plan {category} is at version {expected - 1}: a new version must say version: {expected}",
                    current_version=expected - 1,
                )
            if not await self._insert(uow, plan, body, "api", actor):
                raise StaleVersion(f"plan {category} version {plan.version} was stored meanwhile: reload it")
            await uow.commit()
        self._active[category] = (plan.version, plan)
        log.info("plan.published", category=category, version=plan.version, actor=actor)
        return plan

    async def document(self, category: str, version: int | None = None) -> dict[str, Any]:
        async with self.db.engine.connect() as conn:
            row = await store.get_plan(conn, category, version)
        if row is None:
            what = f"version {version} of the plan" if version else "a plan"
            raise NotFound(f"no {what} for category {category!r}", category=category)
        return {**row.document, "actor": row.actor, "published_at": row.created_at, "origin": row.origin}


def _shipped_body(category: str) -> str:
    return resources.files("dispatch").joinpath("plans", f"{category}.yaml").read_text(encoding="utf-8")


def _line_of_key(body: str, key: str) -> int:
    for n, line in enumerate(body.splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return n
    return 1
