"""Response plans (预案): what a category's plan asks for at each level, read from an operator's
YAML (refused whole, each bad field with its line), the catalogue of a folder, a new version and
its event, and the units to add or release to meet a plan.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from ecs.contracts import PlanPublished
from ecs.errors import NotFound, StaleVersion
from ecs.vocabulary import Category, Level, Stage
from ecs.yamlfile import FileProblem, YamlFileError, load_yaml_model

from .roster import UnitType

__all__ = [
    "ApprovalStep",
    "LevelPlan",
    "NoPlan",
    "PlanError",
    "PlanLevels",
    "PlanProblem",
    "ResponsePlan",
    "SupplyLine",
    "TEMPLATE_FIELDS",
    "check_next_version",
    "parse_plan",
    "plan_catalogue",
    "plan_document",
    "plan_published",
    "read_new_plan",
    "units_to_add",
    "units_to_release",
]


# --------------------------------------------------------------------------------------------
# Errors


class NoPlan(NotFound):
    """The category has no active response plan (404)."""

    def __init__(self, category: str) -> None:
        super().__init__(f"no response plan for category {str(category)!r}", category=str(category))


PlanProblem = FileProblem
"""One bad field of a plan file: its dotted path, its line (1-based), what is wrong."""


class PlanError(YamlFileError):
    """A response plan file that cannot be accepted; names each bad field and its line."""

    code, title = "invalid_plan", "Invalid response plan"


# --------------------------------------------------------------------------------------------
# Response plans (预案)


class ApprovalStep(StrEnum):
    """Steps a plan can reserve for a commander's approval."""

    PLAN_ACTIVATION = "plan_activation"
    EVACUATION = "evacuation"
    TRAFFIC_CONTROL = "traffic_control"
    PUBLIC_ALERT = "public_alert"
    OFFICIAL_STATEMENT = "official_statement"
    COVER_STRIPPING = "cover_stripping"
    ALL_CLEAR = "all_clear"


TEMPLATE_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "incident_id",
        "category",
        "level",
        "address",
        "time",
        "isolation_radius_m",
        "evacuation_radius_m",
        "shelter",
        "hotline",
    }
)
"""Placeholders a notification template may use; anything else is a typo caught on load."""


def _check_template(text: str) -> str:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise ValueError(f"template is not well formed: {exc}") from None
    unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
    if "" in names:
        raise ValueError("template has an empty placeholder {}")
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; allowed: {', '.join(sorted(TEMPLATE_FIELDS))}")
    return text


_Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
_Count = Annotated[int, Field(strict=True, ge=1, le=500)]
_Quantity = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
_Radius = Annotated[int, Field(strict=True, ge=0, le=100_000)]
_Template = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_check_template)]


class _PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SupplyLine(_PlanModel):
    """Supplies a level of the plan reserves: an item and how many."""

    item: _Name
    quantity: _Quantity


class LevelPlan(_PlanModel):
    """What the plan asks for at one level: radii in metres, units by stage, supplies, templates, approvals."""

    isolation_radius_m: _Radius
    evacuate: Annotated[bool, Field(strict=True)]
    evacuation_radius_m: _Radius = 0
    isolation_units: dict[UnitType, _Count] = Field(default_factory=dict)
    handling_units: dict[UnitType, _Count] = Field(default_factory=dict)
    supplies: list[SupplyLine] = Field(default_factory=list)
    notification_templates: dict[_Name, _Template] = Field(default_factory=dict)
    approval_required: list[ApprovalStep] = Field(default_factory=list)

    @field_validator("evacuation_radius_m")
    @classmethod
    def _radius_matches_evacuate(cls, radius: int, info: ValidationInfo) -> int:
        evacuate = info.data.get("evacuate")
        if evacuate is True and radius == 0:
            raise ValueError("must be greater than 0 when evacuate is true")
        if evacuate is False and radius != 0:
            raise ValueError("must be 0 (or left out) when evacuate is false")
        return radius

    @field_validator("approval_required")
    @classmethod
    def _steps_once(cls, steps: list[ApprovalStep]) -> list[ApprovalStep]:
        repeated = sorted({s for s in steps if steps.count(s) > 1})
        if repeated:
            raise ValueError(f"step listed twice: {', '.join(repeated)}")
        return steps

    def units_for(self, stage: Stage) -> dict[UnitType, int]:
        """Units the incident should hold during `stage`.

        Handling teams come on top of the isolation units, which stay to hold the perimeter.
        """
        if Stage(stage) is Stage.isolation:
            return dict(self.isolation_units)
        total = dict(self.isolation_units)
        for unit_type, count in self.handling_units.items():
            total[unit_type] = total.get(unit_type, 0) + count
        return total


class PlanLevels(_PlanModel):
    """A plan's four parts, one per level (the YAML keys I..IV)."""

    I: LevelPlan  # noqa: E741
    II: LevelPlan
    III: LevelPlan
    IV: LevelPlan


class ResponsePlan(_PlanModel):
    """A category's response plan (预案), one version of it."""

    category: Category
    version: Annotated[int, Field(strict=True, ge=1)]
    levels: PlanLevels

    def for_level(self, level: int) -> LevelPlan:
        """The plan's part for ``level`` (1..4 or a Level); raises ValueError for another number."""
        return self.by_level[Level(level)]

    @cached_property
    def by_level(self) -> dict[Level, LevelPlan]:
        """The plan's four parts by level; the YAML names them I..IV (``Level.from_name``)."""
        return {Level.from_name(name): part for name, part in self.levels}


def parse_plan(text: str, source: str) -> ResponsePlan:
    """Read one response plan from YAML, or raise PlanError naming each bad field and its line."""
    return load_yaml_model(text, source, ResponsePlan, PlanError, what="plan file")


def plan_catalogue(files: Mapping[str, str]) -> dict[Category, ResponsePlan]:
    """The plans of a folder (``{file name: YAML text}``, other files ignored), by category.

    Raises PlanError when a plan is malformed, when a file is not named after its plan's category
    (``fire.yaml``), or when a category has no plan.
    """
    plans: dict[Category, ResponsePlan] = {}
    for name in sorted(files):
        if not name.endswith(".yaml"):
            continue
        source = f"plans/{name}"
        plan = parse_plan(files[name], source)
        if plan.category != name.removesuffix(".yaml"):
            raise PlanError(source, [PlanProblem("category", 1, f"is {plan.category}, but the file is named {name}")])
        plans[plan.category] = plan
    missing = sorted(set(Category) - set(plans))
    if missing:
        raise PlanError("plans/", [PlanProblem("(folder)", 1, f"no plan for {', '.join(missing)}")])
    return plans


def read_new_plan(category: str, body: str) -> ResponsePlan:
    """An operator's new version of ``category``'s plan, read from its YAML ``body``.

    Raises NotFound for an unknown category, and PlanError (422, each bad field with its line)
    for a malformed plan or one that names another category.
    """
    source = f"plans/{category}.yaml"
    if category not in {c.value for c in Category}:
        raise NotFound(f"no incident category {category!r}", category=category)
    plan = parse_plan(body, source)
    if plan.category != category:
        line = next((n for n, text in enumerate(body.splitlines(), 1) if text.startswith("category:")), 1)
        raise PlanError(
            source, [PlanProblem("category", line, f"is {plan.category}, but this is the plan of {category}")]
        )
    return plan


def check_next_version(plan: ResponsePlan, active_version: int | None) -> None:
    """A new version is the active one + 1 (1 for a category without a plan): raises StaleVersion
    (409) otherwise, so that two commanders editing the same version do not overwrite each other."""
    current = active_version or 0
    if plan.version != current + 1:
        raise StaleVersion(
            f"plan {plan.category} is at version {current}: a new version must say version: {current + 1}",
            current_version=current,
        )


def plan_document(plan: ResponsePlan) -> dict[str, Any]:
    """The plan as stored and published to other services (the body of ecs.contracts.PlanPublished)."""
    return plan.model_dump(mode="json")


def plan_published(plan: ResponsePlan, actor: str, now: datetime) -> PlanPublished:
    """The ``dispatch.plan.published`` event of a plan version that became active at ``now``."""
    return PlanPublished.model_validate({**plan_document(plan), "actor": actor, "published_at": now})


def units_to_add(assigned: Mapping[UnitType, int], required: Mapping[UnitType, int]) -> dict[UnitType, int]:
    """Units to top up so that `assigned` meets `required` (after a level is raised or a stage begins)."""
    return {t: n - assigned.get(t, 0) for t, n in required.items() if n > assigned.get(t, 0)}


def units_to_release(assigned: Mapping[UnitType, int], required: Mapping[UnitType, int]) -> dict[UnitType, int]:
    """Units held beyond `required` (after a level is lowered), to be released."""
    return {t: n - required.get(t, 0) for t, n in assigned.items() if n > required.get(t, 0)}
