"""CAP 1.2 alerts (OASIS Common Alerting Protocol v1.2, 2010): the status machine, two-person
approval, the area (circle or polygon) and composing the two ``<info>`` blocks (zh-CN, en-US)
from a response plan's templates and the incident.

An alert is published once; a change is a new alert of ``msgType`` Update or Cancel whose
``references`` names the published one, which becomes ``updated`` or ``cancelled`` when the new
one is published. Its ``identifier`` is fixed when it is drafted and ``sent`` when it is published.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ecs import errors
from ecs.geo import ring_fault
from ecs.vocabulary import Category, Level

__all__ = [
    "AlertStatus",
    "AlertAction",
    "MsgType",
    "CapStatus",
    "TRANSITIONS",
    "EDITABLE",
    "LIVE",
    "TERMINAL",
    "IllegalAlertStep",
    "next_status",
    "allowed_actions",
    "check_approver",
    "check_editable",
    "check_reference",
    "Circle",
    "Polygon",
    "Area",
    "parse_polygon",
    "MAX_POLYGON_POINTS",
    "MIN_POLYGON_POINTS",
    "Info",
    "AlertDraft",
    "cap_status",
    "severity",
    "urgency",
    "headline_zh",
    "headline_en",
    "render",
    "template_fields",
    "compose_infos",
    "CATEGORY_ZH",
    "CAP_CATEGORY",
]


class AlertStatus(StrEnum):
    """Where an alert is in its life (this service's machine; CAP's own ``status`` is CapStatus)."""

    draft = "draft"
    pending_approval = "pending_approval"
    approved = "approved"
    published = "published"
    updated = "updated"  # superseded by a published Update that references it
    cancelled = "cancelled"  # ended by a published Cancel that references it
    expired = "expired"  # its <expires> passed
    withdrawn = "withdrawn"  # never published, dropped by an officer


class AlertAction(StrEnum):
    """What moves an alert on."""

    submit = "submit"  # the author asks for approval (the document must pass the CAP XSD)
    approve = "approve"  # a second person approves
    reject = "reject"  # back to the author
    publish = "publish"
    supersede = "supersede"  # an Update referencing it was published
    cancel = "cancel"  # a Cancel referencing it was published
    expire = "expire"
    withdraw = "withdraw"


TRANSITIONS: dict[tuple[AlertStatus, AlertAction], AlertStatus] = {
    (AlertStatus.draft, AlertAction.submit): AlertStatus.pending_approval,
    (AlertStatus.pending_approval, AlertAction.approve): AlertStatus.approved,
    (AlertStatus.pending_approval, AlertAction.reject): AlertStatus.draft,
    (AlertStatus.approved, AlertAction.publish): AlertStatus.published,
    (AlertStatus.published, AlertAction.supersede): AlertStatus.updated,
    (AlertStatus.published, AlertAction.cancel): AlertStatus.cancelled,
    (AlertStatus.published, AlertAction.expire): AlertStatus.expired,
    (AlertStatus.draft, AlertAction.withdraw): AlertStatus.withdrawn,
    (AlertStatus.pending_approval, AlertAction.withdraw): AlertStatus.withdrawn,
    (AlertStatus.approved, AlertAction.withdraw): AlertStatus.withdrawn,
}
"""``TRANSITIONS[(status, action)] -> status``; a pair not in the table is refused."""

EDITABLE: frozenset[AlertStatus] = frozenset({AlertStatus.draft})
LIVE: frozenset[AlertStatus] = frozenset({AlertStatus.published})
TERMINAL: frozenset[AlertStatus] = frozenset(
    {AlertStatus.updated, AlertStatus.cancelled, AlertStatus.expired, AlertStatus.withdrawn}
)


def allowed_actions(status: AlertStatus) -> list[AlertAction]:
    """The actions the machine has from ``status``, in table order."""
    return [action for (source, action) in TRANSITIONS if source == status]


class IllegalAlertStep(errors.IllegalTransition):
    """The alert machine has no such step (409), naming the actions that are allowed."""

    def __init__(self, status: AlertStatus, action: AlertAction) -> None:
        allowed = allowed_actions(status)
        listed = ", ".join(allowed) if allowed else "none, the alert is finished"
        hint = "; a published alert changes only by a new Update or Cancel" if status in LIVE else ""
        super().__init__(
            f"cannot '{action!s}' an alert that is '{status!s}'; allowed: {listed}{hint}",
            current=str(status),
            action=str(action),
            allowed=[str(a) for a in allowed],
        )


def next_status(status: AlertStatus, action: AlertAction) -> AlertStatus:
    """The status ``action`` leads to; raises IllegalAlertStep (409) if the machine has no such step."""
    try:
        return TRANSITIONS[(status, action)]
    except KeyError:
        raise IllegalAlertStep(status, action) from None


def _article(msg_type: object) -> str:
    """ "an Update", "a Cancel": the article for a CAP msgType named in a sentence."""
    return "an" if str(msg_type)[:1] in "AEIOU" else "a"


def check_approver(author: str, approver: str, what: str = "alert") -> None:
    """Two-person rule: raises Forbidden (403) when the author approves their own ``what``
    (an "alert" or a "statement")."""
    if author == approver:
        raise errors.Forbidden(f"the author of the {what} cannot approve it; a second person must", field="approver")


def check_editable(status: AlertStatus) -> None:
    """Raises Conflict (409) unless the alert is a draft; a published one needs an Update."""
    if status in EDITABLE:
        return
    if status in LIVE:
        raise errors.Conflict("a published alert cannot be edited: issue an Update that references it")
    raise errors.Conflict(f"an alert that is '{status!s}' cannot be edited; only a draft can")


class MsgType(StrEnum):
    """CAP ``msgType``."""

    Alert = "Alert"
    Update = "Update"
    Cancel = "Cancel"


class CapStatus(StrEnum):
    """CAP ``status``: Actual reaches the public; Exercise only exercise channels (DESIGN §8)."""

    Actual = "Actual"
    Exercise = "Exercise"


def cap_status(exercise: bool) -> CapStatus:
    """An exercise incident's alerts are ``Exercise``, every other ``Actual``."""
    return CapStatus.Exercise if exercise else CapStatus.Actual


def check_reference(msg_type: MsgType, referenced_status: AlertStatus | None, same_incident: bool = True) -> None:
    """An Update or Cancel must reference a live (published) alert of the same incident; an Alert
    references nothing. Raises Conflict (409) or InvalidInput (422)."""
    if msg_type is MsgType.Alert:
        if referenced_status is not None:
            raise errors.InvalidInput("an Alert references nothing; use msg_type Update or Cancel", field="references")
        return
    if referenced_status is None:
        raise errors.Conflict(f"{_article(msg_type)} {msg_type} needs a live alert to reference", field="references")
    if not same_incident:
        raise errors.InvalidInput("the referenced alert is about another incident", field="references")
    if referenced_status not in LIVE:
        raise errors.Conflict(
            f"{_article(msg_type)} {msg_type} must reference a published alert; "
            f"the referenced one is '{referenced_status!s}'",
            field="references",
        )


# --- area ----------------------------------------------------------------------------------------

MIN_POLYGON_POINTS = 4
MAX_POLYGON_POINTS = 100


@dataclass(frozen=True, slots=True)
class Circle:
    """A circle around (lat, lon) in WGS-84 degrees, radius in metres (CAP writes kilometres)."""

    lat: float
    lon: float
    radius_m: float

    def cap(self) -> str:
        """CAP ``<circle>``: ``"lat,lon radius_km"``."""
        return f"{self.lat:.6f},{self.lon:.6f} {self.radius_m / 1000:.3f}"


@dataclass(frozen=True, slots=True)
class Polygon:
    """A closed ring of (lat, lon) points in WGS-84 degrees, first point repeated last."""

    points: tuple[tuple[float, float], ...]

    def cap(self) -> str:
        """CAP ``<polygon>``: space-separated ``lat,lon`` pairs."""
        return " ".join(f"{lat:.6f},{lon:.6f}" for lat, lon in self.points)


def parse_polygon(points: Sequence[Sequence[float]], where: str = "area.polygon") -> Polygon:
    """A CAP polygon (CAP 1.2 §3.2.4: at least four pairs, the first and last the same); this
    system also keeps it to at most 100 points (small areas reach the right people).

    Raises InvalidInput (422) naming ``where`` for an open ring, too few or too many points, a
    point outside WGS-84 ranges, or a ring that crosses itself or has
    no area (ecs.geo.ring_fault).
    """
    if len(points) < MIN_POLYGON_POINTS:
        raise errors.InvalidInput(
            f"a polygon needs at least {MIN_POLYGON_POINTS} points (the first repeated last); got {len(points)}",
            field=where,
        )
    if len(points) > MAX_POLYGON_POINTS:
        raise errors.InvalidInput(
            f"a polygon has at most {MAX_POLYGON_POINTS} points; got {len(points)}: split the area", field=where
        )
    ring: list[tuple[float, float]] = []
    for i, point in enumerate(points):
        if len(point) != 2:
            raise errors.InvalidInput(f"point {i} must be [lat, lon]", field=f"{where}.{i}")
        lat, lon = float(point[0]), float(point[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise errors.InvalidInput(f"point {i} ({lat}, {lon}) is outside WGS-84 ranges", field=f"{where}.{i}")
        ring.append((lat, lon))
    if ring[0] != ring[-1]:
        raise errors.InvalidInput("the polygon is not closed: its last point must repeat its first", field=where)
    fault = ring_fault(ring)
    if fault is not None:
        raise errors.InvalidInput(f"the polygon {fault}", field=where)
    return Polygon(tuple(ring))


@dataclass(frozen=True, slots=True)
class Area:
    """CAP ``<area>``: a description, a circle or polygon, and administrative geocodes
    (e.g. ``{"GB/T 2260": "110105"}`` or a 12-digit 统计用区划代码)."""

    description: str
    circle: Circle | None = None
    polygon: Polygon | None = None
    geocodes: tuple[tuple[str, str], ...] = ()


# --- composing -----------------------------------------------------------------------------------

CATEGORY_ZH: dict[Category, str] = {
    Category.fire: "火灾",
    Category.explosion: "爆炸",
    Category.hazmat: "危险化学品泄漏",
    Category.building_collapse: "建筑物坍塌",
    Category.crowd_crush: "人群踩踏",
    Category.traffic_accident: "交通事故",
    Category.flood: "洪涝",
    Category.gas_leak: "燃气泄漏",
    Category.public_security: "社会安全事件",
    Category.medical: "突发公共卫生事件",
    Category.other: "突发事件",
}
"""The incident category in Chinese, for the zh-CN ``<info>``."""

CAP_CATEGORY: dict[Category, str] = {
    Category.fire: "Fire",
    Category.explosion: "Safety",
    Category.hazmat: "CBRNE",
    Category.building_collapse: "Infra",
    Category.crowd_crush: "Safety",
    Category.traffic_accident: "Transport",
    Category.flood: "Met",
    Category.gas_leak: "CBRNE",
    Category.public_security: "Security",
    Category.medical: "Health",
    Category.other: "Other",
}
"""CAP ``<category>`` (CAP 1.2 §3.2.2) of each incident category."""

_SEVERITY = {Level.I: "Extreme", Level.II: "Severe", Level.III: "Moderate", Level.IV: "Minor"}
_URGENCY = {Level.I: "Immediate", Level.II: "Immediate", Level.III: "Expected", Level.IV: "Expected"}
_COLOUR_ZH = {Level.I: "红色", Level.II: "橙色", Level.III: "黄色", Level.IV: "蓝色"}
_ROMAN = {Level.I: "Ⅰ", Level.II: "Ⅱ", Level.III: "Ⅲ", Level.IV: "Ⅳ"}
# The warning grades of the national early-warning release system (特别严重/严重/较重/一般).
_GRADE_ZH = {Level.I: "特别严重", Level.II: "严重", Level.III: "较重", Level.IV: "一般"}


def severity(level: Level) -> str:
    """CAP ``<severity>`` of a response level: I Extreme, II Severe, III Moderate, IV Minor."""
    return _SEVERITY[level]


def urgency(level: Level) -> str:
    """CAP ``<urgency>``: Immediate for levels I and II, Expected for III and IV."""
    return _URGENCY[level]


def headline_zh(level: Level, category: Category) -> str:
    """The zh-CN headline with the colour, as the national system writes it: ``黄色预警[Ⅲ级/较重]``."""
    return f"{CATEGORY_ZH[category]}{_COLOUR_ZH[level]}预警[{_ROMAN[level]}级/{_GRADE_ZH[level]}]"


def headline_en(level: Level, category: Category) -> str:
    """The en-US headline with the colour, e.g. ``Fire Orange Warning (level II)``."""
    name = category.value.replace("_", " ").capitalize()
    return f"{name} {level.colour.capitalize()} Warning (level {level.name})"


def template_fields(template: str) -> list[str]:
    """The placeholders of a ``str.format`` template, in order of first use."""
    names: list[str] = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in names:
            names.append(name)
    return names


def render(template: str, values: Mapping[str, object], what: str = "template") -> str:
    """``template`` filled from ``values``.

    Raises InvalidInput (422) naming every placeholder the incident does not provide (a value of
    None counts as not provided; the field is the first of them under ``values``, where the
    request may give it), and a placeholder that is not a plain name.
    """
    fields = template_fields(template)
    bad = [f for f in fields if not f.isidentifier()]
    if bad:
        raise errors.InvalidInput(f"{what} has placeholders that are not plain names: {', '.join(bad)}", field=what)
    missing = [f for f in fields if values.get(f) is None]
    if missing:
        raise errors.InvalidInput(
            f"{what} needs {', '.join(missing)}, which the incident does not provide: give them in values",
            field=f"values.{missing[0]}",
            missing=missing,
            template=what,
        )
    return template.format_map({f: values[f] for f in fields})


ZH_ALERT = (
    "{time}，{address}发生{category_zh}。请远离周边{evacuation_radius_m}米范围，听从现场指挥。咨询电话{hotline}。"
)
"""The zh-CN description when the plan has no ``cap_alert_zh`` template."""


@dataclass(frozen=True, slots=True)
class Info:
    """One CAP ``<info>`` block: language, headline, description, instruction."""

    language: str
    headline: str
    description: str
    instruction: str = ""


@dataclass(frozen=True, slots=True)
class AlertDraft:
    """An alert as composed, before it is stored: what the CAP document is built from."""

    incident_id: str
    msg_type: MsgType
    cap_status: CapStatus
    category: Category
    level: Level
    infos: tuple[Info, ...]
    area: Area
    references: str | None = None
    expires: datetime | None = None
    note: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def compose_infos(
    templates: Mapping[str, str], values: Mapping[str, object], level: Level, category: Category
) -> tuple[Info, ...]:
    """The zh-CN and en-US ``<info>`` blocks from the plan's ``cap_alert`` (en) and optional
    ``cap_alert_zh`` templates and the incident's ``values``.

    Raises InvalidInput (422) when the plan has no ``cap_alert`` template, or naming a placeholder
    the incident does not provide.
    """
    en = templates.get("cap_alert")
    if en is None:
        known = ", ".join(sorted(templates)) or "none"
        raise errors.InvalidInput(
            f"the response plan has no cap_alert template for this level (it has: {known}); write the text by hand",
            field="description_en",
        )
    zh_values = {**values, "category_zh": CATEGORY_ZH[category]}
    zh = templates.get("cap_alert_zh", ZH_ALERT)
    return (
        Info("zh-CN", headline_zh(level, category), render(zh, zh_values, "cap_alert_zh")),
        Info("en-US", headline_en(level, category), render(en, values, "cap_alert")),
    )
