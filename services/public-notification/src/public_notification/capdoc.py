"""An alert's CAP 1.2 document: built from its stored row, and validated against the OASIS CAP
1.2 schema (``schemas/CAP-v1.2.xsd``, shipped with the package exactly as OASIS publishes it;
nothing is fetched at run time)."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

from ecs.envelope import utcnow
from ecs.errors import InvalidInput
from ecs.vocabulary import Category, Level

from .domain import Area, CapAlert, Circle, Info, MsgType, cap_xml, headline_en, parse_polygon

XSD = Path(__file__).resolve().parent / "schemas" / "CAP-v1.2.xsd"


@cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


def cap_errors(document: bytes) -> list[dict[str, str]]:
    """Every way ``document`` fails the CAP 1.2 schema, each with its element ``path`` (XPath)
    and the ``reason``; empty when valid. A document that is not XML gives one error at ``/``."""
    try:
        tree = etree.fromstring(document, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        return [{"path": "/", "reason": f"not well-formed XML: {exc}"}]
    schema = _schema()
    if schema.validate(tree):
        return []
    return [{"path": e.path or "/", "reason": e.message} for e in schema.error_log]


def check_cap(document: bytes) -> None:
    """Raises InvalidInput (422) naming the path and reason of each schema error."""
    errors = cap_errors(document)
    if errors:
        first = errors[0]
        raise InvalidInput(
            f"the CAP document fails the CAP 1.2 schema at {first['path']}: {first['reason']}",
            field="cap",
            errors=errors,
        )


def area_json(area: Area) -> dict[str, Any]:
    """The area as stored."""
    return {
        "description": area.description,
        "circle": [area.circle.lat, area.circle.lon, area.circle.radius_m] if area.circle else None,
        "polygon": [list(p) for p in area.polygon.points] if area.polygon else None,
        "geocodes": dict(area.geocodes),
    }


def area_from_json(data: dict[str, Any]) -> Area:
    circle = data.get("circle")
    polygon = data.get("polygon")
    return Area(
        data.get("description", ""),
        Circle(*circle) if circle else None,
        parse_polygon(polygon) if polygon else None,
        tuple(sorted((data.get("geocodes") or {}).items())),
    )


def document(alert: Any, ctx: Any, references: str | None = None, sent: datetime | None = None) -> bytes:
    """The alert's CAP XML (before publication ``sent`` is the time of the check)."""
    infos = [Info(i["language"], i["headline"], i["description"], i.get("instruction", "")) for i in alert.infos]
    return cap_xml(
        CapAlert(
            identifier=alert.identifier,
            sender=ctx.settings.sender,
            sender_name=ctx.settings.sender_name,
            sent=sent or alert.sent or utcnow(),
            status=alert.cap_status,
            msg_type=MsgType(alert.msg_type),
            category=Category(alert.category),
            level=Level(alert.level),
            event=headline_en(Level(alert.level), Category(alert.category)),
            infos=infos,
            area=area_from_json(alert.area),
            references=references,
            expires=alert.expires,
        )
    )
