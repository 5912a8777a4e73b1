"""The operators' CLI (``ecs``) against the services as real processes, the way an operator uses
it: log in, list and show, verify, cordon and move an incident, read a refusal in plain words;
and ``ecs watch`` seeing an incident a gateway alarm opened, over NATS as the observer."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from ecs.cli import app, output
from ecs.gateway_client import GatewayClient
from ecs.testing import console_script, free_port, observer_credentials
from resource_stockpile import seed as stockpile_seed
from shelter_registry import seed as shelter_seed
from tests.conftest import AUTH_SECRET, GATEWAY_ID, GATEWAY_SECRET

SCENE = (31.2304, 121.4737)


def alarm(exercise: bool = False, category: str = "fire") -> dict[str, Any]:
    return {
        "alarm_id": f"cli-{uuid.uuid4().hex[:10]}",
        "received_at": datetime.now(UTC).isoformat(),
        "category": category,
        "location": {"lat": SCENE[0], "lon": SCENE[1], "address": "88 Zhongshan East Road"},
        "caller": {"number": "13900000001"},
        "description": "smoke from the third floor",
        "exercise": exercise,
    }


def send_alarm(intake_url: str, **kwargs: Any) -> str:
    async def send() -> str:
        gw = GatewayClient(intake_url, GATEWAY_ID, GATEWAY_SECRET)
        try:
            r = await gw.send(alarm(**kwargs))
        finally:
            await gw.aclose()
        assert r.status_code == 202, r.text
        return r.json()["incident_id"]

    return asyncio.run(send())


class Operator:
    """Runs ``ecs`` commands in this process with the operator's own environment."""

    def __init__(self, tmp_path: Path, **urls: str) -> None:
        self.env: dict[str, str | None] = {
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "ECS_AUTH_SECRET": AUTH_SECRET,
            "ECS_TOKEN": None,
            "COLUMNS": "200",
            **{f"ECS_{k.upper()}_URL": v for k, v in urls.items()},
        }
        self.runner = CliRunner()
        # The CLI's console took its width from COLUMNS when it was imported, and a pytest-xdist
        # worker's environment says 80: without this, tables are cut to 80 columns there.
        output.out.width = 200

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == code, f"ecs {' '.join(args)}: exit {result.exit_code}\n{result.output}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


def test_an_operator_logs_in_and_drives_an_incident_with_the_cli(intake_factory, dispatch_factory, tmp_path):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}")
    dispatch = dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0")
    ecs = Operator(tmp_path, intake=intake.url, dispatch=dispatch.url)

    ecs("incidents", "list", code=1)  # not logged in yet
    login = ecs("login", "--role", "dispatcher", "--subject", "alice")
    assert "logged in as alice (dispatcher)" in login.stdout
    token_file = tmp_path / "config" / "ecs" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert ecs.json("whoami")["sub"] == "alice"

    incident_id = send_alarm(intake.url)
    listed = ecs("incidents", "list")
    assert incident_id in listed.stdout and "fire" in listed.stdout
    assert [i["id"] for i in ecs.json("incidents", "list", "--live")["items"]] == [incident_id]
    assert ecs.json("incidents", "list", "--exercise")["items"] == []
    assert ecs.json("incidents", "list", "--stage", "isolation")["items"] == []

    shown = ecs("incidents", "show", incident_id)
    assert "reported" in shown.stdout
    assert "incident not verified by a dispatcher; no perimeter set" in shown.stdout
    assert "incident.created" in shown.stdout or "created" in shown.stdout  # the timeline's tail

    # The lifecycle refuses, and says what is missing, on stderr; exit 1.
    refused = ecs("incidents", "stage", incident_id, "isolation", code=1)
    assert (
        "409" in refused.stderr and "missing: incident not verified by a dispatcher; no perimeter set" in refused.stderr
    )

    assert ecs.json("incidents", "verify", incident_id)["verified"] is True
    # A bad radius is the service's 422, naming the field.
    bad = ecs(
        "incidents", "perimeter", incident_id, "--lat", "31.23", "--lon", "121.47", "--radius-m", "900000", code=1
    )
    assert "422" in bad.stderr and "radius_m" in bad.stderr
    cordoned = ecs.json(
        "incidents", "perimeter", incident_id, "--lat", "31.2304", "--lon", "121.4737", "--radius-m", "300"
    )
    assert cordoned["perimeter"]["radius_m"] == 300
    moved = ecs("incidents", "stage", incident_id, "isolation")
    assert "isolation" in moved.stdout
    assert ecs.json("incidents", "show", incident_id)["stage"] == "isolation"

    # A dispatcher may not set the level: the service's 403, in plain words.
    forbidden = ecs("incidents", "level", incident_id, "2", "--reason", "spreading", code=1)
    assert "403" in forbidden.stderr
    ecs("incidents", "level", incident_id, "9", "--reason", "x", code=2)  # bad usage is typer's 2
    ecs("assign", incident_id, code=2)  # neither --unit nor --recommended

    # Units: register two, list and show them, send one by name.
    units = [
        {
            "id": f"engine-{n}",
            "callsign": f"Engine {n}",
            "unit_type": "fire_engine",
            "home_station": "Huangpu station",
            "district": "huangpu",
            "location": {"lat": SCENE[0] + 0.01 * n, "lon": SCENE[1]},
        }
        for n in (1, 2)
    ]
    token = ecs("token", "--role", "dispatcher").stdout.strip()
    r = httpx.post(
        dispatch.url + "/v1/units:batch", json={"units": units}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 201, r.text
    assert "engine-1" in ecs("units", "list").stdout
    assert ecs.json("units", "show", "engine-2")["callsign"] == "Engine 2"
    assert "fire_engine" in ecs("units", "show", "engine-2").stdout
    unknown = ecs("units", "show", "nope", code=1)
    assert "404" in unknown.stderr


def test_an_unreachable_service_is_named_with_its_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    ecs = Operator(tmp_path, intake=url)
    ecs("login", "--role", "auditor", "--subject", "carol")
    failed = ecs("incidents", "list", code=1)
    assert f"cannot reach incident-intake at {url}" in failed.stderr and "ECS_INTAKE_URL" in failed.stderr
    ecs("logout")
    assert "not logged in" in ecs("whoami", code=1).stderr


def test_stock_shelters_and_alerts_with_the_cli(intake_factory, service_factory, tmp_path):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}")
    stockpile = service_factory("resource-stockpile", "STOCKPILE_", f"sqlite:///{tmp_path / 'stockpile.db'}")
    shelter = service_factory("shelter-registry", "SHELTER_", f"sqlite:///{tmp_path / 'shelter.db'}")
    notification = service_factory("public-notification", "NOTIFICATION_", f"sqlite:///{tmp_path / 'notice.db'}")
    ecs = Operator(
        tmp_path, intake=intake.url, stockpile=stockpile.url, shelter=shelter.url, notification=notification.url
    )
    ecs("login", "--role", "commander", "--subject", "bob")
    token = ecs("token", "--role", "commander", "--role", "shelter_manager").stdout.strip()
    stockpile_seed.seed(stockpile.url, token)
    shelter_seed.seed(shelter.url, token)

    water = ecs.json("stock", "list", "--item", "drinking_water_bottle")["lines"]
    assert water and {line["item"] for line in water} == {"drinking_water_bottle"}
    assert "drinking_water_bottle" in ecs("stock", "list", "--depot", water[0]["depot_id"]).stdout

    incident_id = send_alarm(intake.url, exercise=True)
    deadline = time.monotonic() + 30
    while True:  # resource-stockpile learns of the incident from incident.created
        result = ecs.runner.invoke(
            app, ["reserve", incident_id, "drinking_water_bottle", "2", "--unit", "case", "--json"], env=ecs.env
        )
        if result.exit_code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.exit_code == 0, result.output
    reservation = json.loads(result.stdout)
    assert reservation["requested"] == 48 and reservation["reserved"] == 48 and reservation["exercise"] is True

    assert len(ecs.json("shelters", "list", "--exercise")["items"]) == len(shelter_seed.SHELTERS)
    assert ecs.json("shelters", "list", "--live")["items"] == []
    century = ecs("shelters", "show", "drill-century-park")
    assert "40000 at night" in century.stdout and "standby" in century.stdout

    assert ecs.json("alerts", "list")["alerts"] == []
    missing = ecs("alerts", "approve", "no-such-alert", code=1)
    assert "public-notification refused (404" in missing.stderr


def test_watch_sees_an_incident_a_gateway_alarm_opened(intake_factory, nats_private, tmp_path):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}")
    user, password = observer_credentials()
    env = {**os.environ, "ECS_NATS_USER": user, "ECS_NATS_PASSWORD": password, "COLUMNS": "200"}
    watch = subprocess.Popen(
        [
            console_script("ecs"),
            "watch",
            "--nats-url",
            nats_private.bare_url,
            "--until-events",
            "1",
            "--duration",
            "60",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stderr is not None
        announced = watch.stderr.readline()
        assert "watching incident.>" in announced and "as observer" in announced, announced
        incident_id = send_alarm(intake.url)
        out, rest = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, rest
    assert incident_id in out and "fire" in out and "incident.created" in out, out


def test_watch_without_credentials_says_what_is_missing(tmp_path):
    ecs = Operator(tmp_path)
    ecs.env.update({"ECS_NATS_USER": None, "ECS_NATS_PASSWORD": None, "ECS_VAR_DIR": str(tmp_path / "var")})
    failed = ecs("watch", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--duration", "1", code=1)
    assert "no NATS password for observer" in failed.stderr


@pytest.mark.parametrize("wrong", ["password", "url"])
def test_watch_refused_or_unreachable_exits_1(nats_private, tmp_path, wrong):
    ecs = Operator(tmp_path)
    url = nats_private.bare_url if wrong == "password" else f"nats://127.0.0.1:{free_port()}"
    ecs.env.update({"ECS_NATS_USER": "observer", "ECS_NATS_PASSWORD": "not-the-password-0123456789"})
    failed = ecs("watch", "--nats-url", url, "--duration", "1", code=1)
    assert f"cannot watch NATS at {url} as observer" in failed.stderr
