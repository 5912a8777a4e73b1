"""Exercise isolation (DESIGN §8) no drill runner can break: with a live incident under way and
live units serving it, a drill_runner token tries every operation of every service's OpenAPI
against the live objects, twice (the second round sees what the first changed). Nothing about the
live incident or the live units serving it may change, and no request may answer 5xx.

A new service is covered by adding one line to SERVICES (its console script and settings prefix)."""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ecs import testing
from ecs.gateway_client import GatewayClient
from ecs.testing import console_script
from ecs.vocabulary import Category, Stage
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET
from tests.e2e.test_dispatch_lifecycle import SCENE, alarm, roster

# (console script, settings prefix, extra settings): every service a drill runner can reach.
SERVICES = [
    ("dispatch", "DISPATCH_", {"min_cover": "0"}),
    ("resource-stockpile", "STOCKPILE_", {}),
    ("shelter-registry", "SHELTER_", {}),
    ("public-notification", "NOTIFICATION_", {}),
]
METHODS = ("post", "put", "patch", "delete", "get")


def installed(script: str) -> bool:
    """The service's console script and its ``main`` module are both installed."""
    try:
        console_script(script)
        return importlib.util.find_spec(script.replace("-", "_") + ".main") is not None
    except (RuntimeError, ModuleNotFoundError):
        return False


class Bodies:
    """Request bodies made from an operation's JSON schema, aimed at the live objects: ids name the
    live incident and units, ``exercise`` is false, ``version`` is the object's current one, and
    one body per value of each enum (every stage, every status)."""

    def __init__(self, spec: dict[str, Any], live: dict[str, Any]) -> None:
        self.spec = spec
        self.live = live

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.spec.get("components", {}).get("schemas", {}).get(name, {})
        return schema

    def value(self, name: str, schema: dict[str, Any], version: int | None) -> Any:
        schema = self.resolve(schema)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [o for o in schema[key] if self.resolve(o).get("type") != "null"]
                return self.value(name, options[0], version)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if name in self.live:
            return copy.deepcopy(self.live[name])
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            out = {
                k: self.value(k, props[k], version)
                for k in props
                if k in schema.get("required", ()) or k in ("exercise", "version", "lat", "lon", "radius_m")
            }
            if "exercise" in props:
                out["exercise"] = False
            return out
        if kind == "array":
            item = self.value(name.removesuffix("s"), schema.get("items", {}), version)
            return [item] * max(1, schema.get("minItems", 1))
        if kind == "integer":
            if name == "version":
                return version or 1
            return max(schema.get("minimum", 1), 1)
        if kind == "number":
            lo, hi = schema.get("minimum", 1.0), schema.get("maximum", None)
            return (lo + hi) / 2 if hi is not None else max(lo, 1.0) * 50
        if kind == "boolean":
            return False
        if schema.get("format") == "date-time":
            return datetime.now(UTC).isoformat()
        return "x" * max(1, schema.get("minLength", 1)) if name not in ("reason", "drill") else f"drill {name}"

    def enums(self, schema: dict[str, Any], depth: int = 0) -> Iterator[tuple[str, list[Any]]]:
        schema = self.resolve(schema)
        for key, prop in schema.get("properties", {}).items():
            prop = self.resolve(prop)
            if "enum" in prop:
                yield key, prop["enum"]
            elif depth < 2:
                yield from self.enums(prop, depth + 1)

    def all(self, schema: dict[str, Any] | None, version: int | None) -> list[Any]:
        if schema is None:
            return [None]
        base = self.value("body", schema, version)
        bodies = [base]
        for key, values in self.enums(schema):
            if isinstance(base, dict) and key in base:
                bodies += [{**base, key: v} for v in values]
        return bodies


async def snapshot(inc_api: httpx.AsyncClient, dsp_api: httpx.AsyncClient, incident_id: str, unit_ids: list[str]):
    """What a drill runner must never change: the live incident in both services, its alarms, and
    the live units serving it."""
    intake_view = (await inc_api.get(f"/v1/incidents/{incident_id}")).json()
    dispatch_view = (await dsp_api.get(f"/v1/incidents/{incident_id}")).json()
    units = [(await dsp_api.get(f"/v1/units/{u}")).json() for u in unit_ids]
    for u in units:
        u.pop("location", None), u.pop("lat", None), u.pop("lon", None), u.pop("location_at", None)
    # Where a unit is and when it arrives change by themselves as it moves.
    for u in dispatch_view.get("units", []):
        for key in ("eta_now_s", "location", "expected_at"):
            u.pop(key, None)
    dispatch_view.get("units", []).sort(key=lambda u: u["unit_id"])
    return intake_view, dispatch_view, units


@pytest.mark.skipif(not installed("dispatch"), reason="dispatch is not installed")
async def test_no_drill_runner_request_changes_a_live_incident_or_a_live_unit_serving_one(
    intake_factory, service_factory, tmp_path, operator_headers
):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}", required_participants='["dispatch"]')
    procs = {"incident-intake": intake}
    for script, prefix, extra in SERVICES:
        if installed(script):
            procs[script] = service_factory(script, prefix, f"sqlite:///{tmp_path / (script + '.db')}", **extra)
    dispatcher, drill = operator_headers("dispatcher"), operator_headers("drill_runner", subject="drill-1")
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    inc_api = httpx.AsyncClient(base_url=intake.url, headers=dispatcher, timeout=30)
    dsp_api = httpx.AsyncClient(base_url=procs["dispatch"].url, headers=dispatcher, timeout=30)
    try:
        assert (await dsp_api.post("/v1/units:batch", json={"units": roster()})).status_code == 201
        incident_id = (await gw.send(alarm(1, casualties=3))).json()["incident_id"]
        elsewhere = {"lat": SCENE[0] + 0.2, "lon": SCENE[1]}
        other = {**alarm(2, casualties=0), "category": Category.traffic_accident.value, "location": elsewhere}
        other_id = (await gw.send(other)).json()["incident_id"]

        async def version() -> int:
            return (await inc_api.get(f"/v1/incidents/{incident_id}")).json()["version"]

        r = await inc_api.post(f"/v1/incidents/{incident_id}/verify", json={"version": await version()})
        assert r.status_code == 200, r.text
        circle = {"kind": "circle", "lat": SCENE[0], "lon": SCENE[1], "radius_m": 100}
        r = await inc_api.put(
            f"/v1/incidents/{incident_id}/perimeter", json={"version": await version(), "perimeter": circle}
        )
        assert r.status_code == 200, r.text
        isolation = {"stage": Stage.isolation.value, "version": await version()}
        r = await inc_api.post(f"/v1/incidents/{incident_id}/stage", json=isolation)
        assert r.status_code == 200, r.text

        async def four_units():
            view = (await dsp_api.get(f"/v1/incidents/{incident_id}")).json()
            return view if len(view.get("units", [])) == 4 else None

        view = await testing.eventually(four_units, within_s=20.0)
        serving = sorted(u["unit_id"] for u in view["units"])
        # One of them on scene, as a live unit would be.
        for status in ("en_route", "on_scene"):
            r = await dsp_api.post(f"/v1/units/{serving[0]}/status", json={"status": status})
            assert r.status_code == 200, r.text
        assignment_id = view["units"][0].get("assignment_id") or view["units"][0].get("id")
        alarms = (await inc_api.get(f"/v1/incidents/{incident_id}/alarms")).json()
        alarm_ids = [a.get("id") or a.get("alarm_id") for a in alarms.get("items", [])]

        async def settled():
            # Dispatch's answer to the on-scene report reaches intake a moment later.
            first = await snapshot(inc_api, dsp_api, incident_id, serving)
            second = await snapshot(inc_api, dsp_api, incident_id, serving)
            on_scene = first[1].get("on_scene") == 1
            return first if first == second and on_scene else None

        before = await testing.eventually(settled, within_s=20.0)

        live = {
            "incident_id": incident_id,
            "unit_id": serving[0],
            "unit_ids": [serving[0]],
            "alarm_ids": alarm_ids[:1],
            "other_incident_id": other_id,
            "source_incident_id": other_id,
            "perimeter": circle,
            "category": "fire",
        }
        tried: list[tuple[str, str, int]] = []
        for _round in range(2):
            for name, proc in procs.items():
                client = httpx.AsyncClient(base_url=proc.url, headers=drill, timeout=30)
                spec = (await client.get("/openapi.json")).json()
                bodies = Bodies(spec, live)
                try:
                    for path, item in spec["paths"].items():
                        for method in METHODS:
                            op = item.get(method)
                            if op is None or path in ("/healthz", "/readyz", "/metrics"):
                                continue
                            for target in serving if "{unit_id}" in path else [serving[0]]:
                                params = {k: v for k, v in live.items() if isinstance(v, str)}
                                params.update(unit_id=target, assignment_id=str(assignment_id))
                                url = re.sub(r"\{(\w+)\}", lambda m, p=params: p.get(m.group(1), "{x}"), path)
                                url = re.sub(r"\{[^}]+\}", "x", url)
                                current = None
                                if "{incident_id}" in path and name == "incident-intake":
                                    current = await version()
                                elif "{unit_id}" in path:
                                    current = (await dsp_api.get(f"/v1/units/{target}")).json().get("version")
                                schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {})).get(
                                    "schema"
                                )
                                for body in bodies.all(schema, current):
                                    r = await client.request(
                                        method.upper(), url, json=body if body is not None else None
                                    )
                                    tried.append((method.upper(), url, r.status_code))
                                    assert r.status_code < 500, (name, method, url, body, r.text)
                                    now = await snapshot(inc_api, dsp_api, incident_id, serving)
                                    assert now == before, (name, method.upper(), url, body, r.status_code, r.text)
                finally:
                    await client.aclose()
        mutations = [t for t in tried if t[0] != "GET"]
        assert len(mutations) >= 30, tried
        # The drill runner was refused on the live objects, not merely ignored.
        assert any(t[2] == 403 for t in mutations), tried
    finally:
        await gw.aclose()
        await inc_api.aclose()
        await dsp_api.aclose()


async def test_a_drill_borrows_only_an_available_live_unit(dispatch_factory, tmp_path, operator_headers):
    dispatch = dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0")
    commander, drill = operator_headers("commander"), operator_headers("drill_runner", subject="drill-1")
    api = httpx.AsyncClient(base_url=dispatch.url, headers=commander, timeout=30)
    try:
        assert (await api.post("/v1/units:batch", json={"units": roster()[:2]})).status_code == 201
        busy, free = roster()[0]["id"], roster()[1]["id"]
        r = await api.post(f"/v1/units/{busy}/status", json={"status": "out_of_service"})
        assert r.status_code == 200, r.text
        r = await api.put(f"/v1/units/{busy}/lend", json={"drill": "d1"}, headers=drill)
        assert r.status_code == 409 and "available live unit" in r.json()["detail"], r.text
        assert (await api.get(f"/v1/units/{busy}")).json()["lent_to_drill"] is None
        r = await api.put(f"/v1/units/{free}/lend", json={"drill": "d1"}, headers=drill)
        assert r.status_code == 200 and r.json()["lent_to_drill"] == "d1", r.text
        # The drill may drive its borrowed unit; a commander recalls it at once.
        r = await api.post(f"/v1/units/{free}/status", json={"status": "out_of_service"}, headers=drill)
        assert r.status_code == 200, r.text
        r = await api.delete(f"/v1/units/{free}/lend")
        assert r.status_code == 200 and r.json()["lent_to_drill"] is None
        r = await api.post(f"/v1/units/{free}/status", json={"status": "available"}, headers=drill)
        assert r.status_code == 403, r.text
    finally:
        await api.aclose()
