"""shelter-registry's PFIF 1.4 export of an incident's reunification records, in-process against a
real nats-server and both stores: every registered person once, safe with the shelter's public
hotline, the shelter only for those who consented; never an ID number, a phone or an address;
stable record ids (a move keeps them); pages; roles.

The document is validated against ``pfif-1.4-shape.xsd`` beside this file: the official PFIF 1.4
schema (a RELAX NG schema in the specification) could not be obtained here, so that file restates
the specification's data model and XML format as an XML Schema (see its header)."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from ecs.testing import eventually
from tests.integration import test_shelter_service as service
from tests.integration.test_shelter_automation import Lifecycle
from tests.integration.test_shelter_service import FAMILY_ID, FAMILY_PHONE, Registry, family, shelter

shelter_app = service.shelter_app

NS = {"pfif": "http://zesty.ca/pfif/1.4"}
SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).with_name("pfif-1.4-shape.xsd"))))
HOTLINE = "021-63215555"
CONSENTING_PHONE = "13700002222"


def pfif(body: bytes) -> etree._Element:
    """The document, parsed and valid (else the schema's first complaint fails the test)."""
    tree = etree.fromstring(body, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    assert SCHEMA.validate(tree), SCHEMA.error_log
    return tree


def people(tree: etree._Element) -> dict[str, dict[str, str | None]]:
    """``{full name: {record id, note fields}}`` of a document."""
    out = {}
    for person in tree.findall("pfif:person", NS):
        notes = person.findall("pfif:note", NS)
        assert len(notes) == 1
        note = notes[0]
        out[person.findtext("pfif:full_name", namespaces=NS)] = {
            "id": person.findtext("pfif:person_record_id", namespaces=NS),
            "source_date": person.findtext("pfif:source_date", namespaces=NS),
            "entry_date": person.findtext("pfif:entry_date", namespaces=NS),
            "status": note.findtext("pfif:status", namespaces=NS),
            "contact": note.findtext("pfif:author_made_contact", namespaces=NS),
            "location": note.findtext("pfif:last_known_location", namespaces=NS),
            "text": note.findtext("pfif:text", namespaces=NS),
            "note_person": note.findtext("pfif:person_record_id", namespaces=NS),
        }
    return out


async def known(registry: Registry, incident_id: str) -> None:
    async def probe() -> bool:
        return (await registry.get(f"/v1/incidents/{incident_id}/dashboard")).status_code == 200

    await eventually(probe)


async def test_the_pfif_export_says_safe_with_the_hotline_and_where_only_with_consent(shelter_app, db_url):
    async with shelter_app(db_url) as (_, client, bus):
        registry = Registry(client, bus)
        await registry.open(shelter("S1", 1, hotline=HOTLINE), shelter("S2", 2, hotline="021-63219999"))
        fire = Lifecycle(bus, category="fire", level=4)  # no plan service: nothing opens by itself
        await fire.to("isolation")
        await known(registry, fire.id)
        household = await registry.ok("/v1/allocations", family(incident_id=fire.id))
        await registry.ok(f"/v1/registrations/{household['id']}/check-in", {}, 200)
        consenting = family(incident_id=fire.id)
        consenting["household"]["persons"] = [{"name": "张伟", "phone": CONSENTING_PHONE, "consent_to_share": True}]
        consenting["household"]["pets"] = 0
        single = await registry.ok("/v1/allocations", consenting)
        elsewhere = await registry.ok("/v1/allocations", family(incident_id=None))  # another incident's: not listed

        r = await registry.get(f"/v1/incidents/{fire.id}/pfif", "shelter_manager")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/xml")
        assert "link" not in r.headers  # one page
        found = people(pfif(r.content))
        assert sorted(found) == sorted(["王芳", "李强", "李小明", "王秀英", "张伟"])
        for name, p in found.items():
            assert p["status"] == "believed_alive" and p["contact"] == "true", name
            assert p["note_person"] == p["id"] and p["id"].startswith("shelter-registry.ecs.local/person.")
            assert p["source_date"].endswith("Z") and p["entry_date"].endswith("Z")
            assert f"Shelter public hotline: {HOTLINE}." in p["text"]
        assert found["张伟"]["location"] == "避难场所S1 (Shelter S1)"
        assert "避难场所S1" in found["张伟"]["text"]
        assert found["王芳"]["location"] is None and "避难场所" not in found["王芳"]["text"]
        # Nothing identifying beyond names: no ID number, no phone, no address, in any form.
        text = r.content.decode()
        for secret in (FAMILY_ID, FAMILY_PHONE, "13900001111", CONSENTING_PHONE, "黄浦区南京东路100号"):
            assert secret not in text
        for masked in ("138****5678", "139****1111", "137****2222", "110105********002X"):
            assert masked not in text
        assert "避难场所S1" not in text.replace(found["张伟"]["location"], "").replace(found["张伟"]["text"], "")
        assert elsewhere["id"] not in text

        # Stable: the same ids again, and after the consenting man moves to S2 (now shown there).
        assert people(pfif((await registry.get(f"/v1/incidents/{fire.id}/pfif", "commander")).content)) == found
        await registry.ok(f"/v1/registrations/{single['id']}/move", {"to_shelter": "S2"}, 200)
        moved = people(pfif((await registry.get(f"/v1/incidents/{fire.id}/pfif", "commander")).content))
        assert {n: p["id"] for n, p in moved.items()} == {n: p["id"] for n, p in found.items()}
        assert moved["张伟"]["location"] == "避难场所S2 (Shelter S2)"
        assert "021-63219999" in moved["张伟"]["text"]
        assert moved["张伟"]["source_date"] == found["张伟"]["source_date"]

        # Pages of two, each a valid document, together the whole export once.
        ids: list[str] = []
        url: str | None = f"/v1/incidents/{fire.id}/pfif?limit=2"
        pages = 0
        while url is not None:
            r = await client.get(url, headers=service.auth("shelter_manager"))
            assert r.status_code == 200, r.text
            ids += [p["id"] for p in people(pfif(r.content)).values()]
            url = r.links.get("next", {}).get("url")
            pages += 1
        assert pages == 3 and sorted(ids) == sorted(p["id"] for p in moved.values())
        bad = await registry.get(f"/v1/incidents/{fire.id}/pfif", "shelter_manager", cursor="x")
        assert service.problem(bad, 422)


async def test_only_shelter_managers_and_commanders_export_and_a_drill_runner_exercise_only(shelter_app, db_url):
    async with shelter_app(db_url) as (_, client, bus):
        registry = Registry(client, bus)
        live = Lifecycle(bus, category="fire", level=4)
        drill = Lifecycle(bus, category="fire", level=4, exercise=True)
        await live.to("isolation")
        await drill.to("isolation")
        await known(registry, live.id)
        await known(registry, drill.id)
        for role in ("dispatcher", "auditor", "information_officer", "supply_officer"):
            service.problem(await registry.get(f"/v1/incidents/{live.id}/pfif", role), 403)
        body = service.problem(await registry.get(f"/v1/incidents/{live.id}/pfif", "drill_runner"), 403)
        assert "exercise" in body["detail"]
        r = await registry.get(f"/v1/incidents/{drill.id}/pfif", "drill_runner")
        assert r.status_code == 200 and pfif(r.content).findall("pfif:person", NS) == []
        for role in ("shelter_manager", "commander"):
            assert (await registry.get(f"/v1/incidents/{live.id}/pfif", role)).status_code == 200
        body = service.problem(await registry.get("/v1/incidents/nope/pfif", "shelter_manager"), 404)
        assert body["field"] == "incident_id"
