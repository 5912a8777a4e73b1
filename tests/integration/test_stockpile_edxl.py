"""resource-stockpile's EDXL-RM 1.0 in and out, in-process against a real nats-server and a real
database (both stores): a reservation exported as RequestResource / CommitResource and a release as
ReleaseResource, one ResourceInformation per item, threaded, each valid against the official OASIS
schemas shipped with the service (lxml); a neighbour's RequestResource imported into reservations,
and a document failing the schema refused with its XPath, line and reason, nothing written."""

from __future__ import annotations

from typing import Any

import httpx
from lxml import etree
from sqlalchemy import text

from ecs.db import Database
from resource_stockpile import edxl_rm
from tests.integration import test_stockpile_service as service
from tests.integration.test_stockpile_service import Stockpile, depot

stockpile_app, headers = service.stockpile_app, service.headers

NS = {"m": edxl_rm.MSG, "rm": edxl_rm.RM}
XML = {"Content-Type": "application/xml"}


def valid(message: str, document: bytes) -> etree._Element:
    root = etree.fromstring(document)
    assert edxl_rm.schema(message).validate(root), edxl_rm.errors_of(message, document)
    return root


def texts(root: etree._Element, path: str) -> list[str]:
    return [e.text for e in root.findall(path, NS)]


NEIGHBOUR = b"""<?xml version="1.0" encoding="UTF-8"?>
<RequestResource xmlns="urn:oasis:names:tc:emergency:EDXL:RM:1.0:msg"
                 xmlns:rm="urn:oasis:names:tc:emergency:EDXL:RM:1.0">
  <MessageID>suzhou-ecs-2026-0042</MessageID>
  <SentDateTime>2026-12-01T10:00:00+08:00</SentDateTime>
  <MessageContentType>RequestResource</MessageContentType>
  <OriginatingMessageID>suzhou-ecs-2026-0042</OriginatingMessageID>
  <ContactInformation>
    <rm:ContactDescription>Suzhou emergency command</rm:ContactDescription>
    <rm:ContactRole>Requester</rm:ContactRole>
  </ContactInformation>
  <ResourceInformation>
    <ResourceInfoElementID>sz-1</ResourceInfoElementID>
    <Resource>
      <TypeStructure><rm:ValueListURN>urn:ecs:stockpile:item</rm:ValueListURN><rm:Value>stretcher</rm:Value></TypeStructure>
    </Resource>
    <AssignmentInformation><Quantity><rm:MeasuredQuantity><rm:Amount>4</rm:Amount></rm:MeasuredQuantity></Quantity></AssignmentInformation>
  </ResourceInformation>
  <ResourceInformation>
    <ResourceInfoElementID>sz-2</ResourceInfoElementID>
    <Resource><ResourceID>first_aid_kit</ResourceID></Resource>
    <AssignmentInformation><Quantity><rm:MeasuredQuantity><rm:Amount>2</rm:Amount>
      <rm:UnitOfMeasure><rm:ValueListURN>urn:ecs:stockpile:unit</rm:ValueListURN><rm:Value>carton</rm:Value></rm:UnitOfMeasure>
    </rm:MeasuredQuantity></Quantity></AssignmentInformation>
  </ResourceInformation>
</RequestResource>
"""


async def test_a_reservation_and_its_release_are_exported_threaded_and_valid(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 3.0)])
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 3})
        await s.receive("B", {"item": "stretcher", "lot": "S", "quantity": 10})
        incident = await s.incident()
        batch = await s.ok(
            f"/v1/incidents/{incident}/reservations:batch",
            {"lines": [{"item": "stretcher", "quantity": 5}, {"item": "first_aid_kit", "quantity": 2}]},
        )
        stretchers, kits = (r["id"] for r in batch["reservations"])
        await s.ok(f"/v1/reservations/{stretchers}/release", {"quantity": 2}, 200)

        docs = {}
        for message in edxl_rm.MESSAGES:
            r = await s.get(f"/v1/incidents/{incident}/edxl-rm/{message}")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("application/xml")
            docs[message] = valid(message, r.content)
        request, commit, release = (docs[m] for m in edxl_rm.MESSAGES)

        # One ResourceInformation per item, not only the first.
        assert texts(request, "m:ResourceInformation/m:Resource/m:ResourceID") == ["stretcher", "first_aid_kit"]
        assert texts(request, ".//rm:Amount") == ["5", "2"]
        assert texts(commit, ".//rm:Amount") == ["5", "0"]
        assert texts(commit, ".//rm:ResponseType") == ["Accept", "Decline"]
        assert texts(release, "m:ResourceInformation/m:Resource/m:ResourceID") == ["stretcher"]
        assert texts(release, ".//rm:Amount") == ["2"]
        # Threaded: the request originates all; the commit follows it, the release the commit.
        [request_id] = texts(request, "m:MessageID")
        [commit_id] = texts(commit, "m:MessageID")
        for doc in (request, commit, release):
            assert texts(doc, "m:OriginatingMessageID") == [request_id]
        assert texts(commit, "m:PrecedingMessageID") == [request_id]
        assert texts(release, "m:PrecedingMessageID") == [commit_id]
        assert texts(commit, ".//rm:PrecedingResourceInfoElementID") == [str(stretchers), str(kits)]
        # The same export again is the same message; one reservation alone, another.
        again = await s.get(f"/v1/incidents/{incident}/edxl-rm/RequestResource")
        assert texts(etree.fromstring(again.content), "m:MessageID") == [request_id]
        one = await s.get(f"/v1/incidents/{incident}/edxl-rm/CommitResource", reservation_id=kits)
        assert texts(valid("CommitResource", one.content), "m:ResourceInformation/m:ResourceInfoElementID") == [
            str(kits)
        ]

        assert (await s.get(f"/v1/incidents/{incident}/edxl-rm/CommitResource", reservation_id=999)).status_code == 404
        assert (await s.get("/v1/incidents/nope/edxl-rm/RequestResource")).status_code == 404
        assert (
            await s.get(f"/v1/incidents/{incident}/edxl-rm/ReleaseResource", reservation_id=kits)
        ).status_code == 409


async def stocked_for_the_neighbour(client: httpx.AsyncClient, bus: Any, headers: Any) -> Stockpile:
    """The catalogue, depot A, and the stretchers and first-aid kits NEIGHBOUR asks for."""
    s = Stockpile(client, bus, headers)
    await s.setup([depot("A", 1.0)])
    await s.receive(
        "A",
        {"item": "stretcher", "lot": "S", "quantity": 10},
        {"item": "first_aid_kit", "lot": "K", "quantity": 50},
    )
    return s


async def test_the_same_message_for_another_incident_is_that_incidents_request_and_long_ids_are_422(
    stockpile_app, db_url, headers
):
    """The same MessageID imported for a second incident answered the first incident's
    reservations and reserved nothing for the second; a MessageID or ResourceInfoElementID past
    255 characters was a 500 (the inbox key, the column)."""
    async with stockpile_app(db_url) as (_, client, bus):
        s = await stocked_for_the_neighbour(client, bus, headers)
        first, second = await s.incident(), await s.incident()
        officer = {**s.officer, **XML}

        async def post(incident: str, document: bytes) -> httpx.Response:
            return await client.post(
                "/v1/edxl-rm/requests", params={"incident_id": incident}, content=document, headers=officer
            )

        a = await post(first, NEIGHBOUR)
        b = await post(second, NEIGHBOUR)
        assert a.status_code == b.status_code == 201, (a.text, b.text)
        assert {x["incident_id"] for x in b.json()["reservations"]} == {second}
        for incident in (first, second):
            assert len((await s.get(f"/v1/incidents/{incident}/reservations")).json()["reservations"]) == 2
        long_message = NEIGHBOUR.replace(b"suzhou-ecs-2026-0042", b"m" * 256)
        long_element = NEIGHBOUR.replace(
            b"<ResourceInfoElementID>sz-1<", b"<ResourceInfoElementID>" + b"e" * 5000 + b"<"
        )
        for document, field in ((long_message, "MessageID"), (long_element, "ResourceInfoElementID")):
            r = await post(first, document)
            assert r.status_code == 422 and r.json()["field"].endswith(field), r.text
        assert len((await s.get(f"/v1/incidents/{first}/reservations")).json()["reservations"]) == 2


async def test_a_message_imported_under_the_earlier_key_is_not_reserved_again(stockpile_app, db_url, headers):
    """Before its key named the incident, an import was kept under ``edxl:<MessageID>``: the same
    message sent again after an upgrade answers what it made then, never a second reservation."""
    async with stockpile_app(db_url) as (_, client, bus):
        s = await stocked_for_the_neighbour(client, bus, headers)
        incident = await s.incident()
        officer = {**s.officer, **XML}
        params = {"incident_id": incident}
        first = await client.post("/v1/edxl-rm/requests", params=params, content=NEIGHBOUR, headers=officer)
        assert first.status_code == 201, first.text
        db = Database(db_url)
        try:
            async with db.uow() as uow:  # as the earlier version kept it
                await uow.conn.execute(
                    text("UPDATE reservations SET request_key = 'edxl:suzhou-ecs-2026-0042' WHERE source = 'edxl'")
                )
                await uow.commit()
        finally:
            await db.dispose()
        again = await client.post("/v1/edxl-rm/requests", params=params, content=NEIGHBOUR, headers=officer)
        assert again.status_code == 201, again.text
        assert [x["id"] for x in again.json()["reservations"]] == [x["id"] for x in first.json()["reservations"]]
        assert len((await s.get(f"/v1/incidents/{incident}/reservations")).json()["reservations"]) == 2


async def test_a_neighbours_request_becomes_reservations_threaded_to_its_message(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = await stocked_for_the_neighbour(client, bus, headers)
        incident = await s.incident()
        officer = {**s.officer, **XML}

        r = await client.post(
            "/v1/edxl-rm/requests", params={"incident_id": incident}, content=NEIGHBOUR, headers=officer
        )
        assert r.status_code == 201, r.text
        made = [(x["item"], x["requested"], x["reserved"], x["source"]) for x in r.json()["reservations"]]
        assert made == [("stretcher", 4, 4, "edxl"), ("first_aid_kit", 20, 20, "edxl")]
        # The same message again makes nothing new.
        again = await client.post(
            "/v1/edxl-rm/requests", params={"incident_id": incident}, content=NEIGHBOUR, headers=officer
        )
        assert [x["id"] for x in again.json()["reservations"]] == [x["id"] for x in r.json()["reservations"]]
        assert len((await s.get(f"/v1/incidents/{incident}/reservations")).json()["reservations"]) == 2

        commit = valid("CommitResource", (await s.get(f"/v1/incidents/{incident}/edxl-rm/CommitResource")).content)
        assert texts(commit, "m:OriginatingMessageID") == ["suzhou-ecs-2026-0042"]
        assert texts(commit, "m:PrecedingMessageID") == ["suzhou-ecs-2026-0042"]
        assert texts(commit, ".//rm:PrecedingResourceInfoElementID") == ["sz-1", "sz-2"]


async def test_a_document_failing_the_schema_is_refused_with_xpath_line_and_reason_and_nothing_written(
    stockpile_app, db_url, headers
):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0)])
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 10})
        incident = await s.incident()
        officer = {**s.officer, **XML}

        async def refused(document: bytes, status: int = 422, **extra_headers: str) -> dict:
            r = await client.post(
                "/v1/edxl-rm/requests",
                params={"incident_id": incident},
                content=document,
                headers={**officer, **extra_headers},
            )
            assert r.status_code == status, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            return r.json()

        bad_amount = NEIGHBOUR.replace(b"<rm:Amount>2</rm:Amount>", b"<rm:Amount>two</rm:Amount>")
        problem = await refused(bad_amount)
        amount = "/RequestResource/ResourceInformation[2]/AssignmentInformation/Quantity/MeasuredQuantity/Amount"
        assert problem["field"] == amount and problem["line"] == 22 and "xs:double" in problem["detail"]

        problem = await refused(NEIGHBOUR.replace(b"<ContactInformation>", b"<Bogus/><ContactInformation>"))
        assert problem["field"] == "/RequestResource/Bogus" and "not expected" in problem["detail"]
        problem = await refused(b"<RequestResource")
        assert problem["field"] == "/" and "well-formed" in problem["detail"]
        problem = await refused(NEIGHBOUR.replace(b"<ResourceID>first_aid_kit", b"<ResourceID>caviar"))
        assert problem["field"] == "/RequestResource/ResourceInformation[2]/Resource"
        problem = await refused(NEIGHBOUR.replace(b"<rm:Value>carton", b"<rm:Value>barrel"))
        assert problem["field"].endswith(
            "ResourceInformation[2]/AssignmentInformation/Quantity/MeasuredQuantity/UnitOfMeasure/Value"
        )
        problem = await refused(NEIGHBOUR.replace(b"<rm:Amount>4</rm:Amount>", b"<rm:Amount>0.5</rm:Amount>"))
        assert problem["field"].startswith("/RequestResource/ResourceInformation[1]/")
        xxe = NEIGHBOUR.replace(
            b"<RequestResource", b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<RequestResource', 1
        ).replace(b"<rm:Value>carton", b"<rm:Value>&x;carton")
        problem = await refused(xxe)  # was a 500: the schema check choked on the unresolved entity
        assert "DOCTYPE" in problem["detail"] and "root:" not in problem["detail"]
        await refused(NEIGHBOUR, 415, **{"Content-Type": "application/json"})
        r = await client.post(
            "/v1/edxl-rm/requests", params={"incident_id": "nope"}, content=NEIGHBOUR, headers=officer
        )
        assert r.status_code == 404

        # Nothing partial: the first (good) line was not reserved either.
        assert (await s.get(f"/v1/incidents/{incident}/reservations")).json()["reservations"] == []
        assert await s.available("A", "stretcher") == 10
