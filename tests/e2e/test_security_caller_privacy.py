"""Callers' numbers and names on a need-to-know basis: dispatchers and commanders see them whole,
every other role masked (it sees that they exist); the same rule (ecs.privacy) for any personal
model a service marks."""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from ecs.auth import Principal, Role
from ecs.gateway_client import GatewayClient
from ecs.privacy import disclose
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET
from tests.e2e.test_dispatch_lifecycle import alarm

NUMBER = "13900000007"
NAME = "王小明"


async def test_each_role_sees_callers_as_the_readme_says(intake_factory, tmp_path, operator_headers):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}")
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    api = httpx.AsyncClient(base_url=intake.url, timeout=30)
    try:
        sent = {**alarm(7, casualties=1), "caller": {"number": NUMBER, "name": NAME}}
        incident_id = (await gw.send(sent)).json()["incident_id"]
        for role in Role:
            headers = operator_headers(role.value)
            detail = await api.get(f"/v1/incidents/{incident_id}", headers=headers)
            page = await api.get(f"/v1/incidents/{incident_id}/alarms", headers=headers)
            assert detail.status_code == page.status_code == 200, detail.text
            callers = [a["caller"] for a in detail.json()["alarms"] + page.json()["items"]]
            assert len(callers) == 2
            if role in (Role.DISPATCHER, Role.COMMANDER):
                assert all(c["name"] == NAME and c["number"].endswith(NUMBER[-8:]) for c in callers), callers
            else:
                assert all(c == {"number": "139******07", "name": "王**"} for c in callers), (role, callers)
                for text in (detail.text, page.text):
                    assert NUMBER not in text and NAME not in text
    finally:
        await gw.aclose()
        await api.aclose()


class Contact(BaseModel):
    id_number: str
    phone: str


class Evacuee(BaseModel):
    shelter: str
    contact: Contact


def test_the_same_rule_masks_any_personal_model():
    evacuee = Evacuee(shelter="S-1", contact=Contact(id_number="11010519491231002X", phone="13912345678"))
    assert disclose(evacuee, Principal("d", frozenset({"dispatcher"})), Contact) == evacuee
    seen = disclose(evacuee, Principal("a", frozenset({"auditor"})), Contact)
    assert seen.shelter == "S-1"
    assert seen.contact == Contact(id_number="110*************2X", phone="139******78")
