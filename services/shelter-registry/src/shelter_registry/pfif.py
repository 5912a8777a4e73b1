"""Reunification records as PFIF 1.4 (People Finder Interchange Format, http://zesty.ca/pfif/1.4),
for exchange with Person-Finder-style repositories. Pure: records in, an XML document out.

What a record says follows the reunification search: the person is registered safe at a shelter
(a note with status ``believed_alive``, written by the registrar who met them, so
``author_made_contact`` is true; ``is_note_author`` would claim the person wrote it) and the
shelter's public hotline; the shelter's name only when the person consented to share. ID numbers,
phones and the origin address never appear: they are not even passed in.

Record ids are ``<domain>/person.<registration>.<n>``: the household's first registration (a move
keeps it) and the person's place in the household, so an export repeated later names the same
people with the same ids. Times are UTC, to the second, with ``Z`` (PFIF's format).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

PFIF_NS = "http://zesty.ca/pfif/1.4"
STATUS_SAFE = "believed_alive"
"""PFIF's note status for "registered safe at a shelter": someone (the registrar) has reason to
believe the person is alive."""

ET.register_namespace("pfif", PFIF_NS)


@dataclass(frozen=True, slots=True)
class PfifPerson:
    """One registered person as exported: nothing but what a relative may learn."""

    record_key: str  # "<first registration id>.<place in the household>"
    full_name: str
    registered_at: datetime  # the household's first registration: PFIF source_date
    changed_at: datetime  # the registration's last change: PFIF entry_date
    hotline: str
    shelter_name: str | None  # only when the person consented to share
    expires_at: datetime | None = None
    exercise: bool = False


def pfif_time(t: datetime) -> str:
    """PFIF's UTC time: ``2026-12-01T08:30:00Z``."""
    return t.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def _field(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, f"{{{PFIF_NS}}}{name}").text = value


def note_text(p: PfifPerson) -> str:
    """The note's words: safe, the hotline to call, the shelter only with consent."""
    where = f"Registered safe at a shelter: {p.shelter_name}." if p.shelter_name else "Registered safe at a shelter."
    call = f" Shelter public hotline: {p.hotline}." if p.hotline else ""
    return ("EXERCISE (drill data, not a real person). " if p.exercise else "") + where + call


def person_element(p: PfifPerson, domain: str, author: str) -> ET.Element:
    """A ``pfif:person`` with its one note, fields in the PFIF 1.4 order."""
    person_id = f"{domain}/person.{p.record_key}"
    person = ET.Element(f"{{{PFIF_NS}}}person")
    _field(person, "person_record_id", person_id)
    _field(person, "entry_date", pfif_time(p.changed_at))
    if p.expires_at is not None:
        _field(person, "expiry_date", pfif_time(p.expires_at))
    _field(person, "author_name", author)
    _field(person, "source_name", domain)
    _field(person, "source_date", pfif_time(p.registered_at))
    _field(person, "full_name", p.full_name)
    if p.exercise:
        _field(person, "description", "EXERCISE (drill data)")
    note = ET.SubElement(person, f"{{{PFIF_NS}}}note")
    _field(note, "note_record_id", f"{domain}/note.{p.record_key}")
    _field(note, "person_record_id", person_id)
    _field(note, "entry_date", pfif_time(p.changed_at))
    _field(note, "author_name", author)
    _field(note, "source_date", pfif_time(p.registered_at))
    _field(note, "author_made_contact", "true")
    _field(note, "status", STATUS_SAFE)
    if p.shelter_name:
        _field(note, "last_known_location", p.shelter_name)
    _field(note, "text", note_text(p))
    return person


def pfif_document(persons: Iterable[PfifPerson], domain: str, author: str) -> bytes:
    """The PFIF 1.4 document (UTF-8, with its XML declaration) of ``persons``."""
    root = ET.Element(f"{{{PFIF_NS}}}pfif")
    for p in persons:
        root.append(person_element(p, domain, author))
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


__all__ = ["PFIF_NS", "STATUS_SAFE", "PfifPerson", "note_text", "pfif_document", "pfif_time"]
