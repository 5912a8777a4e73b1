"""Response plans: the plan files shipped with the service, and the active plan of each category
held in memory (every version is kept in the database; handlers/plans.py stores new ones)."""

from __future__ import annotations

from importlib import resources

from ecs.db import Database
from ecs.vocabulary import Category

from . import store
from .domain import LevelPlan, NoPlan, ResponsePlan, parse_plan, plan_catalogue


def shipped_files() -> dict[str, str]:
    """The plan files shipped inside the package: ``{file name: YAML text}``."""
    folder = resources.files("dispatch").joinpath("plans")
    return {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def load_shipped_plans() -> dict[Category, ResponsePlan]:
    """The shipped plans by category; PlanError if one is malformed or a category has none."""
    return plan_catalogue(shipped_files())


class PlanBook:
    """The active plan of each category in this replica; ``refresh`` picks up what other replicas
    stored."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._active: dict[str, tuple[int, ResponsePlan]] = {}

    def active(self, category: str) -> tuple[int, ResponsePlan]:
        """The active version and plan of ``category``; NoPlan (404) if it has none."""
        try:
            return self._active[category]
        except KeyError:
            raise NoPlan(category) from None

    def level_plan(self, category: str, level: int) -> tuple[int, LevelPlan]:
        """The active version and the plan's part for ``level``; NoPlan (404) if there is none."""
        version, plan = self.active(category)
        return version, plan.for_level(level)

    def find(self, category: str, level: int) -> LevelPlan | None:
        """The active plan's part for ``level``, or None if the category has no plan."""
        found = self._active.get(category)
        return found[1].for_level(level) if found is not None else None

    def categories(self) -> list[str]:
        """The categories that have an active plan, sorted."""
        return sorted(self._active)

    def activate(self, version: int, plan: ResponsePlan) -> None:
        """A version this replica stored becomes active at once."""
        self._active[str(plan.category)] = (version, plan)

    async def refresh(self) -> None:
        """Read the versions that became active meanwhile (stored by any replica)."""
        async with self.db.engine.connect() as conn:
            versions = await store.active_plan_versions(conn)
            for category, version in versions.items():
                cached = self._active.get(category)
                if cached is not None and cached[0] == version:
                    continue
                row = await store.get_plan(conn, category, version)
                if row is not None:
                    self._active[category] = (version, parse_plan(row.body, f"plans/{category}.yaml v{version}"))
