"""public-notification in-process against a real nats-server and a real database, every test on
both stores (``db_url``: SQLite and PostgreSQL): the release clocks started by a major incident,
alerts composed from the published plan, validated against the CAP 1.2 schema, approved by a
second person and published; statements that tell the lifecycle; the rumor register; the
all-clear and settlement; exercise isolation; and every bad input of the operator API."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from lxml import etree

from ecs.bus import Bus
from ecs.contracts import IncidentCreated, LevelChanged, PlanPublished, StageChanged
from ecs.envelope import make_event
from ecs.testing import eventually
from public_notification.capdoc import cap_errors

from ..conftest import AUTH_SECRET

CENTRE = (31.2304, 121.4737)
CIRCLE = {"description": "黄浦区南京东路", "circle": {"lat": CENTRE[0], "lon": CENTRE[1], "radius_m": 500}}
TEMPLATES = {
    "cap_alert": "Major fire at {address}. Stay away within {evacuation_radius_m} m; "
    "go to {shelter}. Hotline {hotline}.",
    "official_statement": "At {time} a fire broke out at {address}. Roads within {isolation_radius_m} m are closed.",
}


def plan(category: str = "fire", version: int = 1) -> PlanPublished:
    level = {
        "isolation_radius_m": 300,
        "evacuate": True,
        "evacuation_radius_m": 400,
        "isolation_units": {"patrol_car": 1},
        "handling_units": {"fire_engine": 1},
        "supplies": [],
        "notification_templates": TEMPLATES,
        "approval_required": ["public_alert"],
    }
    return PlanPublished(
        category=category,
        version=version,
        levels={name: level for name in ("I", "II", "III", "IV")},
        actor="planner",
        published_at=datetime.now(UTC),
    )


class Intake:
    """Plays incident-intake (and dispatch's plan): publishes their events on NATS."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.versions: dict[str, int] = {}
        self.stages: dict[str, str] = {}

    async def create(self, incident_id: str, level: int = 2, exercise: bool = False, category: str = "fire") -> None:
        data = IncidentCreated(
            incident_id=incident_id,
            category=category,
            level=level,
            lat=CENTRE[0],
            lon=CENTRE[1],
            first_alarm_at=datetime.now(UTC),
            alarm_id="a-1",
            gateway_id="gw-1",
            exercise=exercise,
        )
        self.versions[incident_id] = 1
        self.stages[incident_id] = "reported"
        await self.bus.publish_event(
            make_event("incident.created", data, source="incident-intake", incident_id=incident_id, exercise=exercise)
        )

    async def stage_to(
        self, incident_id: str, stage: str, level: int = 2, exercise: bool = False, category: str = "fire"
    ) -> None:
        self.versions[incident_id] += 1
        data = StageChanged(
            incident_id=incident_id,
            from_stage=self.stages[incident_id],
            to_stage=stage,
            actor="commander-1",
            version=self.versions[incident_id],
            category=category,
            level=level,
            lat=CENTRE[0],
            lon=CENTRE[1],
        )
        self.stages[incident_id] = stage
        await self.bus.publish_event(
            make_event(
                "incident.stage.changed", data, source="incident-intake", incident_id=incident_id, exercise=exercise
            )
        )

    async def level_to(self, incident_id: str, from_level: int, to_level: int) -> None:
        self.versions[incident_id] += 1
        data = LevelChanged(
            incident_id=incident_id,
            from_level=from_level,
            to_level=to_level,
            reason="assessment",
            actor="commander-1",
            version=self.versions[incident_id],
        )
        await self.bus.publish_event(
            make_event("incident.level.changed", data, source="incident-intake", incident_id=incident_id)
        )

    async def publish_plan(self, published: PlanPublished | None = None) -> None:
        await self.bus.publish_event(make_event("dispatch.plan.published", published or plan(), source="dispatch"))


class Facts:
    """Everything public-notification publishes, as core NATS delivers it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def on(self, msg: Any) -> None:
        self.events.append({"subject": msg.subject, **orjson.loads(msg.data)})

    def of(self, subject: str, incident_id: str | None = None) -> list[dict[str, Any]]:
        wanted = [e for e in self.events if e["subject"] == subject]
        return [e for e in wanted if incident_id is None or e["incident_id"] == incident_id]


@pytest.fixture
async def wired(nats_private):
    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    facts = Facts()
    await bus.nc.subscribe("notification.>", cb=facts.on)
    yield Intake(bus), facts
    await bus.close()


@pytest.fixture
def notification_app(nats_private):
    """``async with notification_app(database_url, **settings) as api``: the app's lifespan for real."""

    @contextlib.asynccontextmanager
    async def run(database_url: str, **overrides: object):  # type: ignore[no-untyped-def]
        from public_notification.main import build_app
        from public_notification.settings import NotificationSettings

        settings = NotificationSettings(
            database_url=database_url,
            nats_url=nats_private.url,
            auth_secret=AUTH_SECRET,
            log_level="WARNING",
            **overrides,
        )
        app = build_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notification") as client,
        ):
            yield client

    return run


@pytest.fixture
def as_(operator_headers):
    def make(role: str, subject: str | None = None) -> dict[str, str]:
        return operator_headers(role, subject=subject or role)

    return make


def new_incident() -> str:
    return uuid.uuid4().hex


async def known(api: httpx.AsyncClient, incident: str, headers: dict[str, str], **expect: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        r = await api.get(f"/v1/incidents/{incident}", headers=headers)
        if r.status_code != 200:
            return None
        view = r.json()
        return view if all(view.get(k) == v for k, v in expect.items()) else None

    return await eventually(probe, f"incident {incident} with {expect}")


async def ready_incident(api, intake, incident: str, headers, *, level: int = 2, exercise: bool = False) -> dict:
    await intake.publish_plan()
    await intake.create(incident, level=level, exercise=exercise)
    await intake.stage_to(incident, "isolation", level=level, exercise=exercise)
    await intake.stage_to(incident, "handling", level=level, exercise=exercise)
    await intake.stage_to(incident, "opinion_control", level=level, exercise=exercise)
    await known(api, incident, headers, stage="opinion_control")
    # The plan travels on its own stream: wait until the service holds it, or a draft from its
    # templates would be refused (tested below).
    return await known(api, incident, headers, stage="opinion_control", plan_version=1)


async def draft(api, incident, headers, **body) -> httpx.Response:
    body.setdefault("values", {"address": "南京东路100号", "shelter": "人民广场避难所"})
    return await api.post(f"/v1/incidents/{incident}/alerts", json=body, headers=headers)


async def step(api, kind: str, item: dict, action: str, headers, **body) -> httpx.Response:
    return await api.post(
        f"/v1/{kind}/{item['id']}:{action}", json={"version": item["version"], **body}, headers=headers
    )


async def test_a_major_incident_gets_clocks_an_approved_cap_alert_a_statement_and_settles(
    notification_app, db_url, wired, as_
):
    intake, facts = wired
    officer, commander = as_("information_officer", "officer-li"), as_("commander", "commander-wang")
    async with notification_app(db_url) as api:
        incident = new_incident()
        view = await ready_incident(api, intake, incident, officer)
        # Level II: the 5 h and 24 h clocks run from the first event that made it major.
        clocks = {c["kind"]: c for c in view["clocks"]}
        assert set(clocks) == {"first_information", "press_conference"}
        first = clocks["first_information"]
        started, due = datetime.fromisoformat(first["started_at"]), datetime.fromisoformat(first["due_at"])
        assert due - started == timedelta(hours=5)
        assert first["state"] == "running"
        # The clocks' events leave through the outbox relay: wait for them, then count them exactly.

        def started() -> set[str]:
            return {e["data"]["kind"] for e in facts.of("notification.clock.started", incident)}

        await eventually(lambda: _async(started() == set(clocks)), "both clock.started events")
        assert len(facts.of("notification.clock.started", incident)) == 2

        # Composed from the plan once it arrived (its own consumer), in Chinese and English.
        async def composed():
            r = await draft(api, incident, officer)
            return r if r.status_code == 201 else None

        alert = (await eventually(composed, "an alert composed from the plan")).json()
        assert alert["status"] == "draft" and alert["cap_status"] == "Actual" and alert["sent"] is None
        zh, en = alert["infos"]
        assert zh["language"] == "zh-CN" and zh["headline"] == "火灾橙色预警[Ⅱ级/严重]"
        assert "南京东路100号" in zh["description"]
        assert en["description"].startswith("Major fire at 南京东路100号. Stay away within 400 m")
        assert alert["area"]["circle"] == [CENTRE[0], CENTRE[1], 400]
        assert cap_errors(alert["cap_xml"].encode()) == []

        r = await step(api, "alerts", alert, "submit", officer)
        assert r.status_code == 200, r.text
        pending = r.json()
        # The author cannot approve their own alert, even holding the commander role.
        r = await step(api, "alerts", pending, "approve", as_("commander", "officer-li"))
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
        r = await step(api, "alerts", pending, "approve", commander)
        assert r.status_code == 200, r.text
        approved = r.json()
        assert approved["approver"] == "commander-wang"
        r = await step(api, "alerts", approved, "publish", officer)
        assert r.status_code == 200, r.text
        published = r.json()
        assert published["status"] == "published" and published["sent"] is not None
        doc = etree.fromstring(published["cap_xml"].encode())
        ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
        assert doc.findtext("cap:identifier", namespaces=ns) == alert["identifier"]
        assert doc.findtext("cap:status", namespaces=ns) == "Actual"
        assert doc.findtext("cap:info/cap:severity", namespaces=ns) == "Severe"
        assert cap_errors(published["cap_xml"].encode()) == []

        # Published is final: an edit is refused with the way forward, and sent never moves.
        r = await api.patch(
            f"/v1/alerts/{alert['id']}", json={"version": published["version"], "description_en": "x"}, headers=officer
        )
        assert r.status_code == 409 and "Update" in r.json()["detail"]
        again = (await api.get(f"/v1/alerts/{alert['id']}", headers=officer)).json()
        assert again["sent"] == published["sent"] and again["identifier"] == alert["identifier"]

        # The public feed lists it and serves its XML.
        feed = await api.get("/cap/feed.xml")
        assert feed.status_code == 200 and alert["identifier"] in feed.text
        xml = await api.get(f"/cap/alerts/{alert['id']}.xml")
        assert xml.status_code == 200 and xml.headers["content-type"] == "application/cap+xml"
        assert cap_errors(xml.content) == []

        # A statement: drafted from the plan, approved by a second person, published.
        r = await api.post(
            f"/v1/incidents/{incident}/statements", json={"values": {"address": "南京东路100号"}}, headers=officer
        )
        assert r.status_code == 201, r.text
        statement = r.json()
        assert "Roads within 300 m are closed" in statement["text_en"]
        statement = (await step(api, "statements", statement, "submit", officer)).json()
        assert (await step(api, "statements", statement, "approve", officer)).status_code == 403
        statement = (await step(api, "statements", statement, "approve", commander)).json()
        r = await step(api, "statements", statement, "publish", officer)
        assert r.status_code == 200, r.text
        await eventually(lambda: _async(facts.of("notification.statement.published", incident)), "statement.published")
        view = (await api.get(f"/v1/incidents/{incident}", headers=officer)).json()
        clocks = {c["kind"]: c for c in view["clocks"]}
        assert clocks["first_information"]["state"] == "met"
        assert clocks["first_information"]["met_by"] == statement["id"]
        assert clocks["press_conference"]["state"] == "running"

        # A rumor: reported, refuted, answered by a rebuttal, closed; listed while open.
        r = await api.post(
            f"/v1/incidents/{incident}/rumors",
            json={
                "source": "weibo @someone",
                "text": "dozens dead, the mall collapsed",
                "link": "https://weibo.example/123",
                "first_seen": datetime.now(UTC).isoformat(),
                "reach": 120000,
            },
            headers=officer,
        )
        assert r.status_code == 201, r.text
        rumor = r.json()
        view = (await api.get(f"/v1/incidents/{incident}", headers=officer)).json()
        assert [x["id"] for x in view["open_rumors"]] == [rumor["id"]]
        rumor = (await step(api, "rumors", rumor, "refute", officer)).json()
        assert (await step(api, "rumors", rumor, "close", officer)).status_code == 409  # answer it first
        r = await api.post(
            f"/v1/incidents/{incident}/statements",
            json={"kind": "rebuttal", "values": {"address": "南京东路100号"}, "answers_rumors": [rumor["id"]]},
            headers=officer,
        )
        assert r.status_code == 201, r.text
        rebuttal = r.json()
        assert "false" in rebuttal["text_en"] and "不实" in rebuttal["text_zh"]
        rebuttal = (await step(api, "statements", rebuttal, "submit", officer)).json()
        rebuttal = (await step(api, "statements", rebuttal, "approve", commander)).json()
        assert (await step(api, "statements", rebuttal, "publish", officer)).status_code == 200
        rumor = (await api.get(f"/v1/rumors/{rumor['id']}", headers=officer)).json()
        assert rumor["status"] == "answered" and rumor["answered_by"] == [rebuttal["id"]]
        assert (await step(api, "rumors", rumor, "close", officer)).status_code == 200

        # Aftermath: unsettled while the alert is live; the all-clear (a Cancel) settles it.
        await intake.stage_to(incident, "aftermath")
        await eventually(
            lambda: _async(
                [e for e in facts.of("notification.incident.settled", incident) if not e["data"]["settled"]]
            ),
            "settled: false in aftermath",
        )
        cancel = await draft(api, incident, officer, msg_type="Cancel", references=alert["id"])
        assert cancel.status_code == 201, cancel.text
        cancel = cancel.json()
        cancel = (await step(api, "alerts", cancel, "submit", officer)).json()
        cancel = (await step(api, "alerts", cancel, "approve", commander)).json()
        r = await step(api, "alerts", cancel, "publish", officer)
        assert r.status_code == 200, r.text
        references = etree.fromstring(r.json()["cap_xml"].encode()).findtext("cap:references", namespaces=ns)
        assert references.split(",")[1] == alert["identifier"]
        assert (await api.get(f"/v1/alerts/{alert['id']}", headers=officer)).json()["status"] == "cancelled"
        settled = await eventually(
            lambda: _async([e for e in facts.of("notification.incident.settled", incident) if e["data"]["settled"]]),
            "settled: true",
        )
        assert len(settled) == 1 and settled[0]["data"]["participant"] == "notification"
        assert alert["identifier"] not in (await api.get("/cap/feed.xml")).text


async def _async(value: Any) -> Any:
    return value or None


async def test_an_update_or_cancel_needs_a_live_alert_and_two_cannot_both_end_it(notification_app, db_url, wired, as_):
    intake, _ = wired
    officer, commander = as_("information_officer", "officer-li"), as_("commander", "commander-wang")
    async with notification_app(db_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        text = {"description_zh": "中文", "description_en": "English", "area": CIRCLE}
        r = await draft(api, incident, officer, msg_type="Cancel", **text)
        assert r.status_code == 409 and r.json()["field"] == "references"
        first = (await draft(api, incident, officer, **text)).json()
        r = await draft(api, incident, officer, msg_type="Update", references=first["id"], **text)
        assert r.status_code == 409 and "published" in r.json()["detail"]  # a draft is not live
        first = (await step(api, "alerts", first, "submit", officer)).json()
        first = (await step(api, "alerts", first, "approve", commander)).json()
        first = (await step(api, "alerts", first, "publish", officer)).json()

        changes = []
        for msg_type in ("Update", "Cancel"):
            c = (await draft(api, incident, officer, msg_type=msg_type, references=first["id"], **text)).json()
            c = (await step(api, "alerts", c, "submit", officer)).json()
            changes.append((await step(api, "alerts", c, "approve", commander)).json())
        assert (await step(api, "alerts", changes[0], "publish", officer)).status_code == 200
        r = await step(api, "alerts", changes[1], "publish", officer)
        assert r.status_code == 409  # the alert it references is no longer live
        assert (await api.get(f"/v1/alerts/{changes[1]['id']}", headers=officer)).json()["status"] == "approved"
        assert (await api.get(f"/v1/alerts/{first['id']}", headers=officer)).json()["status"] == "updated"


def ring(n: int) -> list[list[float]]:
    points = [[CENTRE[0] + 0.001 * (i % 2), CENTRE[1] + 0.001 * i] for i in range(n - 1)]
    return [*points, points[0]]


async def test_a_draft_from_templates_before_the_plan_arrives_is_refused_naming_the_plan(
    notification_app, sqlite_url, wired, as_
):
    intake, _ = wired
    officer = as_("information_officer")
    async with notification_app(sqlite_url) as api:
        incident = new_incident()
        await intake.create(incident, category="traffic_accident")
        await intake.stage_to(incident, "isolation", category="traffic_accident")
        view = await known(api, incident, officer, stage="isolation")
        assert view["plan_version"] is None
        for path, body, field in (
            (f"/v1/incidents/{incident}/alerts", {"values": {"address": "南京东路100号"}}, "description_en"),
            (f"/v1/incidents/{incident}/statements", {"values": {"address": "南京东路100号"}}, "text_en"),
        ):
            r = await api.post(path, json=body, headers=officer)
            assert r.status_code == 422, r.text
            assert r.json()["field"] == field
            assert "no response plan for traffic_accident has reached" in r.json()["detail"]
        view = await known(api, incident, officer, stage="isolation")
        assert view["alerts"] == [] and view["statements"] == []
        # Text and an area written by hand need no plan.
        area = {"description": "现场", "circle": {"lat": CENTRE[0], "lon": CENTRE[1], "radius_m": 300}}
        r = await draft(api, incident, officer, description_zh="撤离", description_en="evacuate", area=area)
        assert r.status_code == 201, r.text
        await intake.publish_plan(plan("traffic_accident"))
        await known(api, incident, officer, plan_version=1)
        r = await api.post(f"/v1/incidents/{incident}/statements", json={"values": {"address": "x"}}, headers=officer)
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"area": {"polygon": ring(3)}}, 422, "area.polygon", "at least 4"),
        ({"area": {"polygon": ring(101)}}, 422, "area.polygon", "at most 100"),
        ({"area": {"polygon": ring(6)[:-1]}}, 422, "area.polygon", "not closed"),
        ({"values": {"address": "X"}}, 422, "values.shelter", "cap_alert"),
        ({"msg_type": "Update"}, 409, "references", "live alert"),
        ({"area": {"circle": {"lat": 91, "lon": 0, "radius_m": 10}}}, 422, "area.circle.lat", ""),
        ({"expires": "2026-12-01T08:00:00"}, 422, "expires", ""),
        ({"expires": "2000-01-01T00:00:00Z"}, 422, "expires", "must be in the future"),
        (
            {"area": {"circle": {"lat": 31.23, "lon": 121.47, "radius_m": 500}, "polygon": ring(6)}},
            422,
            "area.polygon",
            "a circle or a polygon, not both",
        ),
        ({"colour": "red"}, 422, "colour", ""),
    ],
)
async def test_bad_alert_input_is_refused_naming_the_field_and_changes_nothing(
    notification_app, sqlite_url, wired, as_, body, status, field, words
):
    intake, _ = wired
    officer = as_("information_officer")
    async with notification_app(sqlite_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        before = (await api.get("/v1/alerts", params={"incident_id": incident}, headers=officer)).json()
        r = await draft(api, incident, officer, **body)
        assert r.status_code == status, r.text
        problem = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        named = problem.get("field") or " ".join(e.get("field", "") for e in problem.get("errors", []))
        assert field in named, problem
        assert words in problem["detail"]
        after = (await api.get("/v1/alerts", params={"incident_id": incident}, headers=officer)).json()
        assert after == before
        r = await api.get("/v1/alerts", params={"cursor": "not an alert id!"}, headers=officer)
        assert r.status_code == 422 and "cursor" in r.text, r.text  # one rule for a cursor of another form


async def test_an_exercise_alert_is_exercise_and_never_on_the_public_feed(notification_app, db_url, wired, as_):
    intake, _ = wired
    drill_a, drill_b = as_("drill_runner", "drill-a"), as_("drill_runner", "drill-b")
    officer = as_("information_officer", "officer-li")
    async with notification_app(db_url) as api:
        live, drill = new_incident(), new_incident()
        await ready_incident(api, intake, live, officer)
        await ready_incident(api, intake, drill, drill_a, exercise=True)
        text = {"description_zh": "演练", "description_en": "drill", "area": CIRCLE}
        assert (await draft(api, live, drill_a, **text)).status_code == 403  # a drill runner: exercise only
        a = (await draft(api, drill, drill_a, **text)).json()
        assert a["cap_status"] == "Exercise" and a["exercise"] is True
        a = (await step(api, "alerts", a, "submit", drill_a)).json()
        assert (await step(api, "alerts", a, "approve", drill_a)).status_code == 403
        a = (await step(api, "alerts", a, "approve", drill_b)).json()
        a = (await step(api, "alerts", a, "publish", drill_a)).json()
        assert a["status"] == "published"
        assert (
            etree.fromstring(a["cap_xml"].encode()).findtext("{urn:oasis:names:tc:emergency:cap:1.2}status")
            == "Exercise"
        )
        assert a["identifier"] not in (await api.get("/cap/feed.xml")).text
        assert (await api.get(f"/cap/alerts/{a['id']}.xml")).status_code == 404


async def test_a_level_raised_to_ii_starts_the_clocks_and_a_sweep_records_them_missed(
    notification_app, db_url, wired, as_
):
    intake, facts = wired
    officer = as_("information_officer")
    # A clock of one second, warned at once and swept often: missed is recorded, once.
    async with notification_app(db_url, first_information_s=1, clock_warning_s=1, clock_sweep_s=0.2) as api:
        incident = new_incident()
        await intake.create(incident, level=4)
        view = await known(api, incident, officer, level=4)
        assert view["clocks"] == []
        await intake.level_to(incident, 4, 2)
        view = await known(api, incident, officer, level=2)
        assert {c["kind"] for c in view["clocks"]} == {"first_information", "press_conference"}

        async def missed():
            r = await api.get("/v1/clocks", params={"due_within_s": 0}, headers=officer)
            found = [c for c in r.json()["clocks"] if c["incident_id"] == incident and c["missed_at"]]
            return found or None

        (clock,) = await eventually(missed, "the first-information clock recorded missed")
        assert clock["kind"] == "first_information" and clock["state"] == "missed"
        await eventually(lambda: _async(facts.of("notification.clock.missed", incident)), "clock.missed")
        assert len(facts.of("notification.clock.missed", incident)) == 1


async def test_roles_readers_read_and_only_writers_write(notification_app, sqlite_url, wired, as_):
    intake, _ = wired
    async with notification_app(sqlite_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, as_("auditor"))
        assert (await api.get(f"/v1/incidents/{incident}", headers=as_("auditor"))).status_code == 200
        r = await draft(api, incident, as_("dispatcher"), description_zh="z", description_en="e")
        assert r.status_code == 403
        r = await api.get(f"/v1/incidents/{incident}")
        assert r.status_code == 401


async def test_a_closed_incident_gets_no_new_alert_statement_or_rumor(notification_app, db_url, wired, as_):
    """Once closed (or cancelled), nothing new is said about an incident: a draft alert, a statement
    and a rumor are each 409 naming incident_id, nothing is stored and no settled fact is told."""
    intake, facts = wired
    officer = as_("information_officer")
    async with notification_app(db_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        for stage in ("aftermath", "closed"):
            await intake.stage_to(incident, stage)
        await known(api, incident, officer, stage="closed")

        async def settled_told() -> int:
            return len(facts.of("notification.incident.settled", incident))

        told = await eventually(settled_told, "the settled fact of the closed incident")
        before = (await api.get(f"/v1/incidents/{incident}", headers=officer)).json()
        now = datetime.now(UTC).isoformat()
        for path, body in (
            (
                "alerts",
                {"description_zh": "测试", "description_en": "test", "values": {"address": "a", "shelter": "b"}},
            ),
            ("statements", {"text_zh": "说明", "text_en": "statement"}),
            ("rumors", {"source": "weibo", "text": "a rumor", "first_seen": now}),
        ):
            r = await api.post(f"/v1/incidents/{incident}/{path}", json=body, headers=officer)
            assert r.status_code == 409, (path, r.text)
            assert r.json()["field"] == "incident_id" and "is closed" in r.json()["detail"], r.text
        listed = (await api.get("/v1/alerts", params={"incident_id": incident}, headers=officer)).json()
        assert listed["alerts"] == []
        after = (await api.get(f"/v1/incidents/{incident}", headers=officer)).json()
        assert {k: v for k, v in after.items() if k != "clocks"} == {k: v for k, v in before.items() if k != "clocks"}
        assert len(facts.of("notification.incident.settled", incident)) == told
