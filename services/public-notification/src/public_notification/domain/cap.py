"""The CAP 1.2 document of an alert (OASIS Common Alerting Protocol Version 1.2, 1 July 2010):
``<alert>`` with one ``<info>`` per language and the area in each, in the element order the
standard's schema requires."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from xml.etree import ElementTree as ET

from ecs.vocabulary import Category, Level

from .alerts import CAP_CATEGORY, Area, Info, MsgType, severity, urgency

__all__ = ["CAP_NS", "CapAlert", "cap_time", "cap_xml", "cap_reference"]

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"


def cap_time(t: datetime) -> str:
    """CAP's dateTime: seconds precision with an explicit offset, ``2026-12-01T08:00:00+00:00``
    (CAP 1.2 §3.3.2 forbids the ``Z`` form)."""
    return t.replace(microsecond=0).isoformat()


def cap_reference(sender: str, identifier: str, sent: datetime) -> str:
    """One entry of CAP ``<references>``: ``sender,identifier,sent``."""
    return f"{sender},{identifier},{cap_time(sent)}"


@dataclass(frozen=True, slots=True)
class CapAlert:
    """What a CAP document is built from."""

    identifier: str
    sender: str
    sender_name: str
    sent: datetime
    status: str
    msg_type: MsgType
    category: Category
    level: Level
    event: str
    infos: Sequence[Info]
    area: Area
    references: str | None = None
    expires: datetime | None = None
    note: str = ""


def _sub(parent: ET.Element, tag: str, text: str) -> ET.Element:
    el = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    el.text = text
    return el


def cap_xml(a: CapAlert) -> bytes:
    """The alert as a CAP 1.2 XML document (UTF-8, with the XML declaration)."""
    ET.register_namespace("", CAP_NS)
    root = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(root, "identifier", a.identifier)
    _sub(root, "sender", a.sender)
    _sub(root, "sent", cap_time(a.sent))
    _sub(root, "status", a.status)
    _sub(root, "msgType", a.msg_type.value)
    _sub(root, "scope", "Public")
    if a.note:
        _sub(root, "note", a.note)
    if a.references:
        _sub(root, "references", a.references)
    for info in a.infos:
        el = ET.SubElement(root, f"{{{CAP_NS}}}info")
        _sub(el, "language", info.language)
        _sub(el, "category", CAP_CATEGORY[a.category])
        _sub(el, "event", a.event)
        _sub(el, "responseType", "AllClear" if a.msg_type is MsgType.Cancel else "Avoid")
        _sub(el, "urgency", "Past" if a.msg_type is MsgType.Cancel else urgency(a.level))
        _sub(el, "severity", severity(a.level))
        _sub(el, "certainty", "Observed")
        if a.expires is not None:
            _sub(el, "expires", cap_time(a.expires))
        _sub(el, "senderName", a.sender_name)
        _sub(el, "headline", info.headline)
        _sub(el, "description", info.description)
        if info.instruction:
            _sub(el, "instruction", info.instruction)
        area = ET.SubElement(el, f"{{{CAP_NS}}}area")
        _sub(area, "areaDesc", a.area.description or "-")
        if a.area.polygon is not None:
            _sub(area, "polygon", a.area.polygon.cap())
        if a.area.circle is not None:
            _sub(area, "circle", a.area.circle.cap())
        for name, value in a.area.geocodes:
            code = ET.SubElement(area, f"{{{CAP_NS}}}geocode")
            _sub(code, "valueName", name)
            _sub(code, "value", value)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
