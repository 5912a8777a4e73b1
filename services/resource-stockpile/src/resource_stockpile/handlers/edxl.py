"""A neighbouring city's EDXL-RM 1.0 RequestResource, imported as a reservation request for an
incident: validated against the official schema first (422 naming the XPath, the line and the
reason), every item and quantity checked, then one reservation per ResourceInformation in one
transaction — all or none. The MessageID keys it, per incident: the same message again for the
same incident makes nothing new."""

from __future__ import annotations

from ecs.errors import InvalidInput

from .. import edxl_rm, store
from ..commands import ImportEdxlRequest, RequestLine, ReserveMany, request_key
from ..context import Context
from ..domain import to_base
from .reservations import Reserved, reserve_many


async def import_request(ctx: Context, cmd: ImportEdxlRequest) -> list[Reserved]:
    """Reserve what the RequestResource asks for, nearest the incident first. Raises InvalidInput
    (the document: XPath, line, reason; an item not in the catalogue; a quantity or unit this
    item cannot have) or as reserve_many (the incident)."""
    request = edxl_rm.read_request(cmd.document)
    async with ctx.db.engine.connect() as conn:
        # Imported before its key named the incident (``edxl:<MessageID>``): what it made then.
        earlier = await store.reservations_of_request(conn, f"edxl:{request.message_id}")
        catalogue = await store.get_items(conn, [r.item for r in request.lines])
    if earlier and all(r.incident_id == cmd.incident_id for r in earlier):
        return [Reserved(r.id, r.requested - r.missing, r.missing, []) for r in earlier]
    lines = []
    for r in request.lines:
        resource = r.xpath.split("/AssignmentInformation")[0] + "/Resource"
        item = catalogue.get(r.item)
        if item is None:
            raise InvalidInput(f"{resource}: item {r.item!r} is not in the catalogue", field=resource, item=r.item)
        if r.unit is not None and r.unit != item.base_unit and r.unit not in item.packs:
            unit = r.xpath.removesuffix("/Amount") + "/UnitOfMeasure/Value"
            known = ", ".join([item.base_unit, *item.packs])
            raise InvalidInput(f"{unit}: {r.unit!r} is not a unit of {item.code}; one of: {known}", field=unit)
        to_base(item, r.quantity, r.unit, r.xpath)  # 422 naming the Amount's XPath
        lines.append(RequestLine(r.item, r.quantity, r.unit, r.element_id))
    many = ReserveMany(
        cmd.incident_id,
        lines,
        cmd.actor,
        source="edxl",
        # Per incident: the same message imported for another incident is that incident's request,
        # never an answer with the first incident's reservations.
        request_key=request_key("edxl", cmd.incident_id, request.message_id),
        edxl_message_id=request.message_id,
    )
    return await reserve_many(ctx, many, "edxl")
