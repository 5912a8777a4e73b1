"""OASIS EDXL-RM 1.0 in and out: a reservation as RequestResource / CommitResource, a release as
ReleaseResource, one ResourceInformation per item (per reservation), threaded by
OriginatingMessageID / PrecedingMessageID; and a neighbour's RequestResource read into request
lines after validation against the official schemas shipped in ``schemas/``.

No I/O but reading the schemas once; the handlers and views give it plain data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path

from lxml import etree

from ecs import errors

MSG = "urn:oasis:names:tc:emergency:EDXL:RM:1.0:msg"
RM = "urn:oasis:names:tc:emergency:EDXL:RM:1.0"
NS = {"rmsg": MSG, "rm": RM}
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "edxl-rm" / "1.0"
MESSAGES = ("RequestResource", "CommitResource", "ReleaseResource")
ITEMS_URN = "urn:ecs:stockpile:item"
"""The value list our catalogue codes belong to (Resource/TypeStructure)."""
UNITS_URN = "urn:ecs:stockpile:unit"
"""The value list of an item's base unit and packs (MeasuredQuantity/UnitOfMeasure)."""
GB_URN = "urn:gb:t:38565-2020"
"""GB/T 38565-2020 emergency-supply codes (Resource/Keyword)."""
MAX_LINES = 100


@cache
def schema(message: str) -> etree.XMLSchema:
    """The official schema of one EDXL-RM message (it imports the common types, CIQ and GML)."""
    return etree.XMLSchema(etree.parse(str(SCHEMAS / f"EDXL-RM{message}.xsd")))


def _parser() -> etree.XMLParser:
    # No entities, no DTDs fetched, nothing from the network: the document is a stranger's.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


# --- out ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One reservation as one ResourceInformation: ``quantity`` of ``item`` in base units."""

    element_id: str
    item: str
    name: str
    base_unit: str
    quantity: int
    gb_code: str | None = None
    requested: int = 0
    missing: int = 0
    preceding_element_id: str | None = None
    near: tuple[float, float] | None = None
    depots: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Header:
    """What every message of one exchange about an incident carries."""

    message_id: str
    sent: datetime
    originating_id: str
    incident_id: str
    incident_description: str
    sender: str
    description: str
    preceding_id: str | None = None


def message_id(sender_urn: str, incident_id: str, message: str, parts: Sequence[object]) -> str:
    """A stable MessageID for ``message`` about these reservations (and quantities): the same
    export gives the same id, a different one another."""
    digest = hashlib.sha256(repr(list(parts)).encode()).hexdigest()[:16]
    return f"{sender_urn}:{incident_id}:{message}:{digest}"


def _el(parent: etree._Element, name: str, text: str | None = None, ns: str = MSG) -> etree._Element:
    child = etree.SubElement(parent, f"{{{ns}}}{name}")
    if text is not None:
        child.text = text
    return child


def _value_list(parent: etree._Element, name: str, urn: str, value: str) -> None:
    holder = _el(parent, name)
    _el(holder, "ValueListURN", urn, RM)
    _el(holder, "Value", value, RM)


def document(message: str, header: Header, lines: Sequence[Line]) -> bytes:
    """An EDXL-RM ``message`` (RequestResource, CommitResource or ReleaseResource), one
    ResourceInformation per line."""
    if message not in MESSAGES:
        raise ValueError(message)
    root = etree.Element(f"{{{MSG}}}{message}", nsmap={None: MSG, "rm": RM})
    _el(root, "MessageID", header.message_id)
    _el(root, "SentDateTime", header.sent.isoformat(timespec="seconds"))
    _el(root, "MessageContentType", message)
    _el(root, "MessageDescription", header.description)
    _el(root, "OriginatingMessageID", header.originating_id)
    if message != "RequestResource" and header.preceding_id is not None:
        _el(root, "PrecedingMessageID", header.preceding_id)
    incident = _el(root, "IncidentInformation")
    _el(incident, "IncidentID", header.incident_id, RM)
    _el(incident, "IncidentDescription", header.incident_description, RM)
    contact = _el(root, "ContactInformation")
    _el(contact, "ContactDescription", header.sender, RM)
    _el(contact, "ContactRole", "RespondingOrg" if message == "CommitResource" else "Sender", RM)
    for line in lines:
        info = _el(root, "ResourceInformation")
        _el(info, "ResourceInfoElementID", line.element_id)
        if message == "CommitResource":
            response = _el(info, "ResponseInformation")
            _el(response, "PrecedingResourceInfoElementID", line.preceding_element_id or line.element_id, RM)
            if line.quantity == 0:
                _el(response, "ResponseType", "Decline", RM)
                _el(response, "ResponseReason", f"none of {line.requested} {line.base_unit} available", RM)
            elif line.missing:
                _el(response, "ResponseType", "Provisional", RM)
                _el(response, "ResponseReason", f"{line.missing} of {line.requested} {line.base_unit} missing", RM)
            else:
                _el(response, "ResponseType", "Accept", RM)
        resource = _el(info, "Resource")
        _el(resource, "ResourceID", line.item)
        _el(resource, "Name", line.name)
        _value_list(resource, "TypeStructure", ITEMS_URN, line.item)
        if line.gb_code:
            _value_list(resource, "Keyword", GB_URN, line.gb_code)
        assignment = _el(info, "AssignmentInformation")
        measured = _el(_el(assignment, "Quantity"), "MeasuredQuantity", ns=RM)
        _el(measured, "Amount", str(line.quantity), RM)
        unit = _el(measured, "UnitOfMeasure", ns=RM)
        _el(unit, "ValueListURN", UNITS_URN, RM)
        _el(unit, "Value", line.base_unit, RM)
        where = _where(message, line)
        if where is not None:
            schedule = _el(info, "ScheduleInformation")
            _el(schedule, "ScheduleType", where[0])
            _el(_el(schedule, "Location"), "LocationDescription", where[1], RM)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _where(message: str, line: Line) -> tuple[str, str] | None:
    if message == "RequestResource" and line.near is not None:
        return "ReportTo", f"{line.near[0]:.6f},{line.near[1]:.6f} (WGS-84)"
    if message == "CommitResource" and line.depots:
        return "Committed", "from depots " + ", ".join(line.depots)
    return None


# --- in -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requested:
    """One ResourceInformation of an imported RequestResource: ``quantity`` of ``unit`` (None: the
    base unit) of ``item`` (a catalogue code; checked by the caller), and where in the document."""

    element_id: str
    item: str
    quantity: Decimal
    unit: str | None
    xpath: str


@dataclass(frozen=True, slots=True)
class Request:
    message_id: str
    lines: list[Requested]


def _invalid(reason: str, xpath: str, line: int | None) -> errors.InvalidInput:
    extra: dict[str, object] = {"field": xpath}
    if line is not None:
        extra["line"] = line
    where = f" (line {line})" if line is not None else ""
    return errors.InvalidInput(f"{xpath}{where}: {reason}", **extra)


def xpath_of(element: etree._Element) -> str:
    """A readable XPath of ``element``: local names, with a position where siblings share a name,
    e.g. ``/RequestResource/ResourceInformation[2]/Resource``."""
    steps = []
    node: etree._Element | None = element
    while node is not None:
        name = etree.QName(node).localname
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        steps.append(name)
        node = parent
    return "/" + "/".join(reversed(steps))


def _schema_error_path(root: etree._Element, path: str | None) -> str:
    if not path:
        return "/"
    try:
        found = root.getroottree().xpath(path, namespaces=NS)
    except etree.XPathError:
        return path
    return xpath_of(found[0]) if found and isinstance(found[0], etree._Element) else path


MAX_ID_CHARS = 255
"""The longest MessageID and ResourceInfoElementID kept (the schema sets no bound: each is stored
with the reservations it made, in a column of this size, and never cut)."""


def read_request(body: bytes) -> Request:
    """A RequestResource document as request lines. Raises InvalidInput naming the XPath (and the
    line) and the reason for anything that is not well-formed, not valid against the EDXL-RM 1.0
    schema, or that gives no item or quantity this service can read."""
    if not body.strip():
        raise _invalid("an EDXL-RM RequestResource document is required", "/", None)
    try:
        root = etree.fromstring(body, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise _invalid(f"not well-formed XML: {exc.msg}", "/", exc.lineno) from None
    if root.getroottree().docinfo.doctype:
        # Entities are never resolved (XXE); a document that needs a DTD is not one we exchange.
        raise _invalid("a DOCTYPE (and entities) is not accepted in an EDXL-RM message", "/", 1)
    if root.tag != f"{{{MSG}}}RequestResource":
        raise _invalid(f"the root element must be RequestResource in {MSG}, not {root.tag}", "/", root.sourceline)
    checker = schema("RequestResource")
    try:
        valid = checker.validate(root)
    except etree.XMLSchemaValidateError as exc:  # e.g. an entity reference left unresolved
        raise _invalid(f"the document cannot be validated: {exc}", "/", None) from None
    if not valid:
        first = checker.error_log[0]
        raise _invalid(first.message, _schema_error_path(root, first.path), first.line)
    infos = root.findall("rmsg:ResourceInformation", NS)
    if len(infos) > MAX_LINES:
        raise _invalid(f"at most {MAX_LINES} ResourceInformation elements", xpath_of(infos[MAX_LINES]), None)
    lines: list[Requested] = []
    for info in infos:
        xpath = xpath_of(info)
        element_id = (info.findtext("rmsg:ResourceInfoElementID", namespaces=NS) or "").strip()
        if len(element_id) > MAX_ID_CHARS:
            where = f"{xpath}/ResourceInfoElementID"
            raise _invalid(f"ResourceInfoElementID is longer than {MAX_ID_CHARS} characters", where, info.sourceline)
        resource = info.find("rmsg:Resource", NS)
        item = _item_code(resource)
        if item is None:
            raise _invalid(
                f"no item: give Resource/TypeStructure with ValueListURN {ITEMS_URN} or Resource/ResourceID",
                f"{xpath}/Resource",
                resource.sourceline if resource is not None else info.sourceline,
            )
        measured = info.find("rmsg:AssignmentInformation/rmsg:Quantity/rm:MeasuredQuantity", NS)
        if measured is None:
            raise _invalid(
                "no quantity: give AssignmentInformation/Quantity/MeasuredQuantity",
                f"{xpath}/AssignmentInformation",
                info.sourceline,
            )
        amount = measured.find("rm:Amount", NS)
        try:
            quantity = Decimal((amount.text or "").strip())
        except (InvalidOperation, AttributeError):
            raise _invalid("Amount must be a number", xpath_of(amount), amount.sourceline) from None
        unit = measured.findtext("rm:UnitOfMeasure/rm:Value", namespaces=NS)
        lines.append(Requested(element_id, item, quantity, unit.strip() if unit else None, xpath_of(amount)))
    message = (root.findtext("rmsg:MessageID", namespaces=NS) or "").strip()
    if not message:
        raise _invalid("MessageID must not be empty", "/RequestResource/MessageID", None)
    if len(message) > MAX_ID_CHARS:
        raise _invalid(f"MessageID is longer than {MAX_ID_CHARS} characters", "/RequestResource/MessageID", None)
    return Request(message, lines)


def _item_code(resource: etree._Element | None) -> str | None:
    if resource is None:
        return None
    for typed in resource.findall("rmsg:TypeStructure", NS) + resource.findall("rmsg:Keyword", NS):
        if (typed.findtext("rm:ValueListURN", namespaces=NS) or "").strip() == ITEMS_URN:
            value = typed.findtext("rm:Value", namespaces=NS)
            if value and value.strip():
                return value.strip()
    resource_id = resource.findtext("rmsg:ResourceID", namespaces=NS)
    return resource_id.strip() if resource_id and resource_id.strip() else None


def errors_of(message: str, document: bytes) -> list[str]:
    """What the official schema finds wrong with an EDXL-RM ``message`` (empty: valid); for tests
    and operators checking a document by hand."""
    root = etree.fromstring(document, parser=_parser())
    checker = schema(message)
    checker.validate(root)
    return [f"{e.line}: {e.path}: {e.message}" for e in checker.error_log]


__all__ = [
    "ITEMS_URN",
    "MESSAGES",
    "UNITS_URN",
    "Header",
    "Line",
    "Request",
    "Requested",
    "document",
    "errors_of",
    "message_id",
    "read_request",
    "xpath_of",
    "schema",
]
