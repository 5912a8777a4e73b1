"""The drill runner: runs a scenario's MSEL against the live system as a drill script would, only
through the public contracts (the 110 gateway contract, the operator API as ``drill_runner``, the
NATS events as the subscribe-only ``observer``), with everything ``exercise: true`` (DESIGN §8).

One run:

1. **Preflight** (nothing changed yet): every service answers ``/readyz``; the items the depots are
   to hold are in the catalogue; no unit, depot or shelter id of the scenario is taken (a leftover of
   an earlier drill says to run ``ecs drill purge``); each borrowed live unit is lent to the drill
   (a busy one refuses the start, and the loans made so far are taken back).
2. **Setup**: exercise units, depots with their stock, shelters on standby, an exercise SMS channel.
3. **Run**: the scenario clock starts; each inject runs at its scenario time once the injects it
   waits for are done; the runner plays the crews (an assigned unit reports en route, then on
   scene); every exercise event is recorded on the scenario clock. Pause, resume, stop and the
   real-world emergency stop (ends at once and purges the drill's data) come from ``control`` or
   from the control file ``<out>/control``.
4. **Scoring and report**: objectives measured from the events and rated (``ecs.drill.scoring``),
   the after-action report written (``ecs.drill.report``).

Scenario seconds of an event are the scenario clock when the runner received it, so at a speed
factor S the system's own latency counts S times: ratings at high speeds are pessimistic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog

from ..auth import TokenVerifier
from ..geo import wgs84_to_gcj02
from ..signing import signed_headers
from .clock import ScenarioClock
from .scenario import Action, ActionName, AlarmBurst, Fault, FaultName, Measure, Scenario, unit_id
from .scoring import score

__all__ = ["Credentials", "DrillRefused", "DrillRunner", "Endpoints", "InjectFailed"]

log = structlog.get_logger("ecs.drill")

DOMAINS = ("incident.>", "dispatch.>", "stockpile.>", "shelter.>", "notification.>")

QUIET = frozenset({"incident.alarm.linked", "shelter.registration.changed", "dispatch.unit.status.changed"})
"""Events a drill has by the hundred: counted in the result, kept out of the timeline (an
on-scene report still counts toward the progress shown)."""
"""The event subjects the runner listens to (never the gateways' alarm.in.>)."""


class DrillRefused(Exception):
    """The drill cannot start; nothing of it ran (the message says why and what to do)."""


class InjectFailed(Exception):
    """An inject could not be done; the message names the call and the service's answer."""


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the five services' operator APIs (and intake's gateway endpoint)."""

    intake: str = "http://127.0.0.1:8001"
    dispatch: str = "http://127.0.0.1:8002"
    stockpile: str = "http://127.0.0.1:8003"
    shelter: str = "http://127.0.0.1:8004"
    notification: str = "http://127.0.0.1:8005"

    @classmethod
    def from_env(cls) -> Endpoints:
        """The defaults, each overridden by ``ECS_<SERVICE>_URL`` when set."""
        names = ("intake", "dispatch", "stockpile", "shelter", "notification")
        return cls(**{n: os.environ.get(f"ECS_{n.upper()}_URL", getattr(cls, n)) for n in names})

    def items(self) -> list[tuple[str, str]]:
        """(service name, URL) of every service."""
        return [
            ("incident-intake", self.intake),
            ("dispatch", self.dispatch),
            ("resource-stockpile", self.stockpile),
            ("shelter-registry", self.shelter),
            ("public-notification", self.notification),
        ]


@dataclass(frozen=True)
class Credentials:
    """What the runner acts with: two drill_runner tokens (a second person approves what the first
    drafts), a gateway's id and secret for the exercise alarms, and a NATS URL for the observer
    (credentials in the URL: ``nats://observer:<password>@host:port``)."""

    runner_token: str
    second_token: str
    gateway_id: str
    gateway_secret: str
    nats_url: str

    @classmethod
    def signed(cls, auth_secret: str, gateway_id: str, gateway_secret: str, nats_url: str) -> Credentials:
        """Credentials with drill_runner tokens signed by the shared ``auth_secret`` (the embedded
        default and the tests), valid 12 hours."""
        verifier = TokenVerifier(auth_secret)
        return cls(
            verifier.issue("drill-runner-a", ["drill_runner"]),
            verifier.issue("drill-runner-b", ["drill_runner"]),
            gateway_id,
            gateway_secret,
            nats_url,
        )


@dataclass
class InjectState:
    """How one inject went."""

    id: str
    at_s: float
    kind: str
    status: str = "pending"  # pending, running, done, failed, skipped
    detail: str = ""
    done_at_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at_s": self.at_s,
            "kind": self.kind,
            "status": self.status,
            "detail": self.detail,
            "done_at_s": self.done_at_s,
        }


@dataclass
class Progress:
    """What the live display shows; updated as the drill runs."""

    scenario_s: float = 0.0
    paused: bool = False
    injects_done: int = 0
    injects_failed: int = 0
    injects_total: int = 0
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    units_assigned: int = 0
    units_on_scene: int = 0
    reservations: int = 0
    shelters_open: int = 0
    people_placed: int = 0
    alerts_published: int = 0
    statements_published: int = 0
    events_seen: int = 0
    last: str = ""


class DrillRunner:
    """Runs ``scenario`` at ``speed`` against ``endpoints`` (see the module docstring).

    ``run()`` returns the result (the after-action report's data, see ecs.drill.report) and writes
    the report into ``out_dir``. Raises DrillRefused from the preflight, before anything changed."""

    def __init__(
        self,
        scenario: Scenario,
        source: str,
        endpoints: Endpoints,
        credentials: Credentials,
        speed: float,
        out_dir: Path,
        seed: int = 2014,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.source = source
        self.endpoints = endpoints
        self.creds = credentials
        self.clock = ScenarioClock(speed)
        self.out_dir = out_dir
        self.rng = random.Random(seed)
        self.run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.on_progress = on_progress
        self.progress = Progress(injects_total=len(scenario.msel))
        self.injects = {i.id: InjectState(i.id, i.at, i.kind) for i in scenario.msel}
        self.done = {i.id: asyncio.Event() for i in scenario.msel}
        self.timeline: list[dict[str, Any]] = []
        self.first: dict[Measure, tuple[float, str]] = {}
        self.first_alarm_s: float | None = None
        self.burst_incident: dict[str, str] = {}
        self.incidents: set[str] = set()
        self.registrations: dict[str, list[str]] = {}
        self.alerts: dict[str, list[dict[str, Any]]] = {}
        self.households_wanted = 0
        self.households_placed = 0
        self.lent: list[str] = []
        self.channel_id: str | None = None
        self.status = "completed"
        self.reason: str | None = None
        self._stop = asyncio.Event()
        self._emergency = False
        self._crew_tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._events_in = 0
        self.quiet: Counter[str] = Counter()
        self.missed_clocks = 0
        self._started_at = datetime.now(UTC)

    # --- control -----------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop the scenario clock; injects wait."""
        self.clock.pause()
        self.note("drill paused")

    def resume(self) -> None:
        """Restart the scenario clock where it stood."""
        self.clock.resume()
        self.note("drill resumed")

    def stop(self, reason: str = "stopped by the exercise director") -> None:
        """End the drill now; the report is still written, its data kept for review."""
        if not self._stop.is_set():
            self.status, self.reason = "stopped", reason
            self._stop.set()

    def emergency_stop(self) -> None:
        """A real-world emergency: end the drill at once and purge its data from every service."""
        self._emergency = True
        if self.status != "aborted":
            self.status, self.reason = "aborted", "real-world emergency stop: the drill's data was purged"
        self._stop.set()

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Preflight, setup, the MSEL, scoring and the report; returns the result."""
        control = self.out_dir / "control"
        async with httpx.AsyncClient(timeout=30) as http:
            self._http = http
            try:
                await self._preflight()  # refused: nothing changed, no report folder left behind
            except InjectFailed as exc:  # a 401, an unreachable service
                await self._give_back_loans()
                raise DrillRefused(f"the preflight failed: {exc}") from None
            nc = await self._observe()  # before anything is created: no events, no drill
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                await self._give_back_loans()
                await nc.close()
                raise DrillRefused(f"cannot write the report into {self.out_dir}: {exc}") from None
            control.unlink(missing_ok=True)
            try:
                await self._setup()
            except InjectFailed as exc:
                await self._give_back_loans()
                await nc.close()
                raise DrillRefused(
                    f"setting up the drill's resources failed: {exc} (what was made is exercise data: ecs drill purge)"
                ) from None
            watcher = asyncio.create_task(self._watch_control(control))
            try:
                self.clock.start()
                self.note(f"drill started at speed {self.clock.speed:g}")
                await self._run_msel()
            finally:
                watcher.cancel()
                for task in self._crew_tasks:
                    task.cancel()
                await asyncio.gather(watcher, *self._crew_tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await nc.drain()
            if self._emergency:
                await self.purge_own_data()
            result = await self._result()
        from .report import write_report

        result["report_files"] = {k: str(v) for k, v in write_report(result, self.out_dir).items()}
        return result

    async def _run_msel(self) -> None:
        tasks = [asyncio.create_task(self._inject(i)) for i in self.scenario.msel]
        ticker = asyncio.create_task(self._tick())
        end = asyncio.create_task(self.clock.sleep_until(self.scenario.duration))
        everything = asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait(
                [everything, end, asyncio.create_task(self._stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            if everything.done() and not self._stop.is_set():
                await self._until_terminal(end)
            if end.done() and not self._stop.is_set():
                self.note("the scenario's duration ran out")
        finally:
            for t in (*tasks, ticker, end):
                t.cancel()
            await asyncio.gather(everything, ticker, end, return_exceptions=True)
        for state in self.injects.values():
            if state.status in ("pending", "running"):
                state.status, state.detail = "skipped", state.detail or "the drill ended first"
        failed = [s for s in self.injects.values() if s.status in ("failed", "skipped")]
        if failed and self.status == "completed":
            self.status = "failed"
            self.reason = "; ".join(f"inject {s.id} {s.status}: {s.detail}" for s in failed)[:2000]

    async def _until_terminal(self, end: asyncio.Task[None]) -> None:
        """After the last inject: wait (on the scenario clock) until the drill's incidents end."""
        while not end.done() and not self._stop.is_set():
            stages = [i.get("stage") for i in self.progress.incidents.values()]
            if stages and all(s in ("closed", "cancelled") for s in stages):
                return
            if not stages:
                return
            await asyncio.sleep(0.1)

    async def _tick(self) -> None:
        while True:
            self.progress.scenario_s = self.clock.now_s()
            self.progress.paused = self.clock.paused
            if self.on_progress is not None:
                self.on_progress(self.progress)
            await asyncio.sleep(0.25)

    async def _watch_control(self, path: Path) -> None:
        while True:
            await asyncio.sleep(0.3)
            word = await asyncio.to_thread(_take_word, path)
            if word is None:
                continue
            if word == "pause":
                self.pause()
            elif word == "resume":
                self.resume()
            elif word == "stop":
                self.stop()
            elif word in ("emergency", "emergency-stop"):
                self.emergency_stop()

    # --- recording ---------------------------------------------------------------------------

    def note(self, summary: str, kind: str = "note", subject: str = "", incident_id: str | None = None) -> None:
        """One line of the drill's timeline, on the scenario clock."""
        self.timeline.append(
            {
                "scenario_s": round(self.clock.now_s(), 3),
                "real_s": round(self.clock.real_s(), 3),
                "at": datetime.now(UTC).isoformat(),
                "kind": kind,
                "subject": subject,
                "incident_id": incident_id,
                "summary": summary,
            }
        )
        self.progress.last = summary

    def _first(self, measure: Measure, evidence: str) -> None:
        if measure not in self.first:
            self.first[measure] = (self.clock.now_s(), evidence)

    async def _observe(self) -> Any:
        import nats

        from ..bus import servers_of

        async def on_event(msg: Any) -> None:
            self._events_in += 1
            try:
                env = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                return
            if isinstance(env, dict) and env.get("exercise") is True:
                self._event(msg.subject, env)

        async def quiet(exc: Exception) -> None:  # the client's own reconnect noise
            log.debug("drill.nats_error", error=str(exc))

        try:
            # The first connection is bounded (a wrong URL or a broker that is down refuses the
            # drill at once); once connected, the client reconnects through a broker restart.
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=servers_of(self.creds.nats_url),
                    connect_timeout=5,
                    allow_reconnect=True,
                    max_reconnect_attempts=30,
                    reconnect_time_wait=1,
                    error_cb=quiet,
                ),
                timeout=15,
            )
        except Exception as exc:  # noqa: BLE001 - any failure to connect refuses the drill
            await self._give_back_loans()
            raise DrillRefused(f"cannot listen to the events on NATS ({exc.__class__.__name__}: {exc})") from None
        for subject in DOMAINS:
            await nc.subscribe(subject, cb=on_event)
        return nc

    def _event(self, subject: str, env: dict[str, Any]) -> None:
        """Record one exercise event that concerns this drill, and what it measures."""
        data = env.get("data") if isinstance(env.get("data"), dict) else {}
        incident = env.get("incident_id") or data.get("incident_id")
        ours = incident in self.incidents
        p = self.progress
        p.events_seen += 1
        if subject == "incident.created" and data.get("alarm_id", "").startswith(self.run_id):
            self.incidents.add(incident)
            p.incidents[incident] = {"category": data.get("category"), "level": data.get("level"), "stage": "reported"}
            self._first(Measure.incident_opened, f"incident {incident} opened ({data.get('category')})")
            ours = True
        if not ours and not subject.startswith("shelter.status"):
            return
        if subject == "dispatch.unit.status.changed" and data.get("to_status") == "on_scene":
            p.units_on_scene += 1
        if subject in QUIET:  # counted, not written line by line into the timeline
            self.quiet[subject] += 1
            return
        summary = subject
        if subject == "incident.verified":
            self._first(Measure.incident_verified, f"incident {incident} verified")
        elif subject in ("incident.stage.changed", "incident.level.changed"):
            view = p.incidents.setdefault(incident, {})
            view.update({k: data[k] for k in ("category", "level") if k in data})
            if subject == "incident.stage.changed":
                view["stage"] = data.get("to_stage")
                summary = f"stage {data.get('from_stage')} -> {data.get('to_stage')}"
                if data.get("to_stage") == "closed":
                    self._first(Measure.incident_closed, f"incident {incident} closed")
            else:  # incident.level.changed carries from_level and to_level
                view["level"] = data.get("to_level", view.get("level"))
                summary = f"level {data.get('from_level')} -> {data.get('to_level')}"
        elif subject == "dispatch.unit.assigned":
            p.units_assigned += 1
            summary = f"{data.get('unit_id')} assigned ({data.get('source')})"
            self._first(Measure.first_unit_assigned, f"{data.get('unit_id')} assigned to {incident}")
            self._crew(str(data.get("unit_id")))
        elif subject == "dispatch.incident.perimeter_secured":
            self._first(Measure.perimeter_secured, f"perimeter units of {incident} on scene")
        elif subject == "stockpile.reservation.made":
            p.reservations += 1
            summary = f"reserved {data.get('reserved', '')} {data.get('item', '')}".strip()
            self._first(Measure.supplies_reserved, f"{data.get('item')} reserved for {incident}")
        elif subject == "shelter.status.changed":
            if data.get("to_status") == "open" or data.get("status") == "open":
                p.shelters_open += 1
                summary = f"shelter {data.get('shelter_id')} open"
                self._first(Measure.shelter_opened, f"shelter {data.get('shelter_id')} opened")
            else:
                return
        elif subject == "notification.alert.published":
            p.alerts_published += 1
            self._first(Measure.first_alert_published, f"alert {data.get('alert_id', data.get('identifier', ''))}")
        elif subject == "notification.statement.published":
            p.statements_published += 1
            self._first(Measure.first_statement_published, f"statement {data.get('statement_id', '')}")
        elif subject == "notification.clock.missed":
            self.missed_clocks += 1
        self.note(summary, "event", subject, incident)

    # --- preflight and setup -----------------------------------------------------------------

    def _headers(self, second: bool = False) -> dict[str, str]:
        token = self.creds.second_token if second else self.creds.runner_token
        return {"Authorization": f"Bearer {token}"}

    async def _call(
        self, method: str, url: str, *, second: bool = False, ok: tuple[int, ...] = (200, 201), **kw: Any
    ) -> httpx.Response:
        """One API call; raises InjectFailed naming the call and the answer unless its status is ``ok``."""
        assert self._http is not None
        try:
            r = await self._http.request(method, url, headers=self._headers(second), **kw)
        except httpx.HTTPError as exc:
            raise InjectFailed(f"{method} {url}: unreachable ({exc.__class__.__name__})") from None
        if r.status_code not in ok:
            raise InjectFailed(f"{method} {url}: {r.status_code} {_problem(r)}")
        return r

    async def _preflight(self) -> None:
        down = []
        for name, url in self.endpoints.items():
            try:
                r = await self._http.get(f"{url}/readyz")  # type: ignore[union-attr]
                if r.status_code != 200:
                    down.append(f"{name} at {url} is not ready ({r.status_code})")
            except httpx.HTTPError as exc:
                down.append(f"{name} at {url} is unreachable ({exc.__class__.__name__})")
        if down:
            raise DrillRefused("; ".join(down))
        res = self.scenario.resources
        wanted = {item for d in res.depots for item in d.stock}
        if wanted:
            r = await self._call("GET", f"{self.endpoints.stockpile}/v1/items")
            known = {i["code"] for i in r.json()["items"]}
            missing = sorted(wanted - known)
            if missing:
                raise DrillRefused(
                    f"items not in the catalogue: {', '.join(missing)} (a supply officer adds them, e.g. with"
                    " resource-stockpile-seed)"
                )
        taken = []
        for uid in self.scenario.unit_ids()[: len(self.scenario.unit_ids()) - len(res.borrow_units)]:
            r = await self._call("GET", f"{self.endpoints.dispatch}/v1/units/{uid}", ok=(200, 404))
            if r.status_code == 200:
                taken.append(uid)
        for s in res.shelters:
            r = await self._call("GET", f"{self.endpoints.shelter}/v1/shelters/{s.id}", ok=(200, 404))
            if r.status_code == 200:
                taken.append(s.id)
        depots = {d["id"] for d in (await self._call("GET", f"{self.endpoints.stockpile}/v1/depots")).json()["depots"]}
        taken += [d.id for d in res.depots if d.id in depots]
        if taken:
            raise DrillRefused(
                f"{len(taken)} ids of the scenario are taken (e.g. {', '.join(taken[:3])}): exercise data of an"
                " earlier drill is still there, run `ecs drill purge --yes`"
            )
        for uid in res.borrow_units:
            r = await self._call("PUT", f"{self.endpoints.dispatch}/v1/units/{uid}/lend", ok=(200, 201, 404, 409))
            if r.status_code != 200 and r.status_code != 201:
                await self._give_back_loans()
                raise DrillRefused(f"live unit {uid} cannot be lent to the drill: {r.status_code} {_problem(r)}")
            self.lent.append(uid)

    async def _give_back_loans(self) -> None:
        for uid in self.lent:
            with contextlib.suppress(InjectFailed):
                await self._call("DELETE", f"{self.endpoints.dispatch}/v1/units/{uid}/lend", ok=(200, 204, 404, 409))
        self.lent.clear()

    async def _setup(self) -> None:
        res = self.scenario.resources
        units = []
        for group in res.units:
            for n in range(1, group.count + 1):
                lat, lon = _scatter(self.rng, group.near.lat, group.near.lon, group.spread_m)
                unit = {
                    "id": unit_id(group, n),
                    "unit_type": group.unit_type,
                    "home_station": f"drill-station-{group.district}",
                    "district": group.district,
                    "location": {"lat": lat, "lon": lon},
                    "exercise": True,
                }
                if group.agency:
                    unit["agency"] = group.agency
                units.append(unit)
        for start in range(0, len(units), 500):
            await self._call(
                "POST", f"{self.endpoints.dispatch}/v1/units:batch", json={"units": units[start : start + 500]}
            )
        for d in res.depots:
            body = {
                "id": d.id,
                "name": d.name,
                "district": d.district,
                "lat": d.location.lat,
                "lon": d.location.lon,
                "exercise": True,
            }
            await self._call("POST", f"{self.endpoints.stockpile}/v1/depots", json={"depots": [body]})
            if d.stock:
                lines = [{"item": item, "lot": f"{d.id}-{item}", "quantity": q} for item, q in d.stock.items()]
                await self._call(
                    "POST", f"{self.endpoints.stockpile}/v1/documents/receipts", json={"depot_id": d.id, "lines": lines}
                )
        if res.shelters:
            shelters = [
                {
                    "id": s.id,
                    "name_zh": s.name_zh,
                    "name_en": s.name_en,
                    "kind": s.kind,
                    "district": s.district,
                    "location": {"lat": s.location.lat, "lon": s.location.lon},
                    "area_m2": s.area_m2,
                    "accessible_places": s.accessible_places,
                    "pet_places": s.pet_places,
                    "hotline": "021-12345678",
                    "exercise": True,
                }
                for s in res.shelters
            ]
            await self._call("POST", f"{self.endpoints.shelter}/v1/shelters:batch", json={"shelters": shelters})
        if any(
            isinstance(i, Action) and i.action in (ActionName.alert, ActionName.all_clear) for i in self.scenario.msel
        ):
            r = await self._call(
                "POST",
                f"{self.endpoints.notification}/v1/channels",
                json={"kind": "sms", "name": f"drill {self.run_id}", "exercise": True},
            )
            self.channel_id = r.json()["id"]
        self.note(
            f"set up {len(units)} exercise units, {len(res.depots)} depots, {len(res.shelters)} shelters;"
            f" borrowed {len(self.lent)} live units"
        )

    # --- injects -----------------------------------------------------------------------------

    async def _inject(self, inject: AlarmBurst | Action | Fault) -> None:
        state = self.injects[inject.id]
        try:
            for dep in inject.after:
                await self.done[dep].wait()
                if self.injects[dep].status != "done":
                    state.status, state.detail = "skipped", f"{dep} did not succeed"
                    return
            await self.clock.sleep_until(inject.at)
            state.status = "running"
            self.note(f"inject {inject.id}: {_describe(inject)}", "inject", inject.id)
            if isinstance(inject, AlarmBurst):
                detail = await self._alarms(inject)
            elif isinstance(inject, Action):
                detail = await self._retrying(inject, lambda: self._action(inject))
            else:
                detail = await self._fault(inject)
            state.status, state.detail, state.done_at_s = "done", detail, round(self.clock.now_s(), 3)
            self.progress.injects_done += 1
            self.note(f"inject {inject.id} done: {detail}", "inject", inject.id)
        except (InjectFailed, KeyError, TypeError, ValueError) as exc:
            # KeyError/TypeError/ValueError: an answer not in the shape the API documents.
            why = str(exc) if isinstance(exc, InjectFailed) else f"unexpected answer ({exc.__class__.__name__}: {exc})"
            state.status, state.detail, state.done_at_s = "failed", why[:1000], round(self.clock.now_s(), 3)
            self.progress.injects_failed += 1
            self.note(f"inject {inject.id} failed: {why}", "inject", inject.id)
        finally:
            self.done[inject.id].set()

    async def _retrying(self, inject: Action, attempt: Callable[[], Awaitable[str]]) -> str:
        """An operator retries what a guard refuses (409) or an unavailable service (503, unreachable)
        for the inject's ``retry_for`` scenario seconds, then gives up with the last answer."""
        deadline = self.clock.now_s() + inject.retry_for
        while True:
            try:
                return await attempt()
            except _Retry as exc:
                self.injects[inject.id].detail = f"retrying: {exc}"[:1000]
                if self.clock.now_s() >= deadline:
                    raise InjectFailed(f"still refused after {inject.retry_for:.0f} scenario s: {exc}") from None
            await asyncio.sleep(max(0.05, min(1.0, 10 / self.clock.speed)))

    async def _alarms(self, burst: AlarmBurst) -> str:
        """Send the burst through the gateway contract, signed, spread over its scenario time."""
        assert self._http is not None
        cats = list(burst.categories)
        weights = [burst.categories[c] for c in cats]
        callers = burst.callers or burst.count
        start = self.clock.now_s()
        receipts: Counter[str] = Counter()
        sent = refused = 0
        while sent < burst.count:
            elapsed = self.clock.now_s() - start
            due = burst.count if burst.over <= 0 else min(burst.count, int(burst.count * elapsed / burst.over) + 1)
            batch = []
            for k in range(sent, min(due, sent + 500)):
                category = burst.first if (k == 0 and burst.first) else self.rng.choices(cats, weights)[0]
                lat, lon = _scatter(self.rng, burst.place.lat, burst.place.lon, burst.spread_m)
                crs = "wgs84"
                if self.rng.random() < burst.gcj02_share:
                    lat, lon = wgs84_to_gcj02(lat, lon)
                    crs = "gcj02"
                alarm: dict[str, Any] = {
                    "alarm_id": f"{self.run_id}-{burst.id}-{k}",
                    "received_at": datetime.now(UTC).isoformat(),
                    "category": str(category),
                    "location": {
                        "lat": lat,
                        "lon": lon,
                        "crs": crs,
                        **({"address": burst.address} if burst.address else {}),
                    },
                    "caller": {"number": _caller(self.run_id, burst.id, k % callers)},
                    "description": burst.description or f"drill {self.scenario.name}",
                    "exercise": True,
                }
                if burst.casualties:
                    alarm["casualties"] = burst.casualties
                batch.append(alarm)
            if batch:
                if self.first_alarm_s is None:
                    self.first_alarm_s = self.clock.now_s()
                body = orjson.dumps({"alarms": batch})
                headers = signed_headers(self.creds.gateway_id, self.creds.gateway_secret, body)
                try:
                    r = await self._http.post(f"{self.endpoints.intake}/v1/alarms:batch", content=body, headers=headers)
                except httpx.HTTPError as exc:
                    raise InjectFailed(f"the gateway endpoint is unreachable ({exc.__class__.__name__})") from None
                if r.status_code != 200:
                    raise InjectFailed(f"POST /v1/alarms:batch: {r.status_code} {_problem(r)}")
                for item in r.json()["results"]:
                    if item.get("receipt"):
                        receipts[item["receipt"]["incident_id"]] += 1
                    else:
                        refused += 1
                sent += len(batch)
                if receipts:  # actions on this burst's incident may start while it goes on
                    self.burst_incident[burst.id] = receipts.most_common(1)[0][0]
            if sent < burst.count:
                await asyncio.sleep(max(0.02, min(0.5, 5 / self.clock.speed)))
        if not receipts:
            raise InjectFailed(f"all {burst.count} alarms were refused")
        incident = receipts.most_common(1)[0][0]
        self.burst_incident[burst.id] = incident
        self.incidents.update(receipts)
        detail = f"{sent} alarms sent, {refused} refused, {len(receipts)} incident(s), mostly {incident}"
        if burst.expect_incidents is not None and len(receipts) != burst.expect_incidents:
            raise InjectFailed(
                f"expected {burst.expect_incidents} incident(s), the alarms made {len(receipts)}: {detail}"
            )
        return detail

    async def _incident(self, burst: str) -> dict[str, Any]:
        incident_id = self.burst_incident.get(burst)
        if incident_id is None:
            state = self.injects[burst]
            if state.status in ("pending", "running"):
                raise _Retry(f"the alarms of {burst} have opened no incident yet")
            raise InjectFailed(f"inject {burst} opened no incident")
        r = await self._call("GET", f"{self.endpoints.intake}/v1/incidents/{incident_id}", ok=(200, 503))
        if r.status_code == 503:
            raise _Retry("incident-intake unavailable (503)")
        return r.json()

    async def _act(self, method: str, url: str, body: Any | None = None, second: bool = False) -> httpx.Response:
        """A write the operator retries on 409 (a guard, a stale version) and on 503."""
        assert self._http is not None
        try:
            r = await self._http.request(method, url, json=body, headers=self._headers(second))
        except httpx.HTTPError as exc:
            raise _Retry(f"{method} {url}: unreachable ({exc.__class__.__name__})") from None
        if r.status_code in (409, 503):
            raise _Retry(f"{method} {url}: {r.status_code} {_problem(r)}")
        if r.status_code >= 400:
            raise InjectFailed(f"{method} {url}: {r.status_code} {_problem(r)}")
        return r

    async def _action(self, a: Action) -> str:
        inc = await self._incident(a.incident)
        iid, version = inc["id"], inc["version"]
        base = f"{self.endpoints.intake}/v1/incidents/{iid}"
        if a.action is ActionName.verify:
            if inc.get("verified") or inc.get("facts", {}).get("verified"):
                return "already verified (three independent callers)"
            await self._act("POST", f"{base}/verify", {"version": version})
            return "verified"
        if a.action is ActionName.perimeter:
            lat, lon = inc["location"]["lat"], inc["location"]["lon"]
            perimeter = {"kind": "circle", "lat": lat, "lon": lon, "radius_m": a.radius_m}
            await self._act("PUT", f"{base}/perimeter", {"version": version, "perimeter": perimeter})
            return f"perimeter of {a.radius_m:g} m set"
        if a.action is ActionName.stage:
            if inc["stage"] == a.to:
                return f"already in {a.to}"
            await self._act("POST", f"{base}/stage", {"stage": a.to, "version": version})
            return f"stage {inc['stage']} -> {a.to}"
        if a.action is ActionName.level:
            if inc["level"] == int(a.level):
                return f"already level {int(a.level)}"
            body = {"level": int(a.level), "reason": a.note or "exercise director's inject", "version": version}
            await self._act("POST", f"{base}/level", body)
            return f"level set to {int(a.level)}"
        if a.action is ActionName.fact:
            await self._act("POST", f"{base}/facts", {"fact": a.fact, "version": version})
            return f"fact {a.fact} recorded"
        if a.action is ActionName.evacuate:
            return await self._evacuate(a, inc)
        if a.action is ActionName.send_home:
            return await self._send_home(iid)
        if a.action is ActionName.return_supplies:
            return await self._return_supplies(iid)
        if a.action in (ActionName.alert, ActionName.all_clear, ActionName.statement, ActionName.rumor):
            return await self._inform(a, inc)
        raise InjectFailed(f"unknown action {a.action}")  # pragma: no cover - the scenario model refuses it

    async def _evacuate(self, a: Action, inc: dict[str, Any]) -> str:
        """Register the households as shelter managers do, several at a time (each placed whole in
        the nearest open shelter that takes it); a refusal for want of an open shelter is retried."""
        assert a.households is not None
        near = {"lat": inc["location"]["lat"], "lon": inc["location"]["lon"]}
        placed = self.registrations.setdefault(a.id, [])
        if not placed:
            self.households_wanted += a.households
        start = len(placed)

        async def register(k: int) -> None:
            persons = [{"name": f"演练{a.id}-{k}-{j}"} for j in range(a.people_per_household)]
            body = {
                "near": near,
                "household": {"persons": persons, "origin_address": "drill"},
                "incident_id": inc["id"],
                "exercise": True,
            }
            r = await self._act("POST", f"{self.endpoints.shelter}/v1/allocations", body)
            placed.append(r.json()["id"])
            self.households_placed += 1
            self.progress.people_placed += a.people_per_household

        await _at_most(PARALLEL, [lambda k=k: register(k) for k in range(start, a.households)])
        if self.households_placed >= self.households_wanted:
            self._first(Measure.evacuees_placed, f"{self.households_wanted} households placed")
        return f"{len(placed)} households ({len(placed) * a.people_per_household} people) placed"

    async def _send_home(self, incident_id: str) -> str:
        """Every household the drill placed checks in (if it had not) and out: they go home."""
        gone: list[str] = []

        async def home(rid: str) -> None:
            base = f"{self.endpoints.shelter}/v1/registrations/{rid}"
            status = (await self._call("GET", base)).json().get("status")
            if status == "planned":
                await self._act("POST", f"{base}/check-in", {})
                status = "checked_in"
            if status == "checked_in":
                await self._act("POST", f"{base}/check-out", {})
            gone.append(rid)

        ids = [rid for ids in self.registrations.values() for rid in ids]
        await _at_most(PARALLEL, [lambda rid=rid: home(rid) for rid in ids])
        return f"{len(gone)} households checked out (gone home)"

    async def _return_supplies(self, incident_id: str) -> str:
        r = await self._call("GET", f"{self.endpoints.stockpile}/v1/incidents/{incident_id}/reservations")
        returned = released = 0
        for res in r.json().get("reservations", []):
            out = sum(a.get("out", 0) for a in res.get("allocations", []))
            held = sum(a.get("held", 0) for a in res.get("allocations", []))
            if out:
                await self._act(
                    "POST", f"{self.endpoints.stockpile}/v1/reservations/{res['id']}/return", {"quantity": out}
                )
                returned += out
            if held:
                await self._act("POST", f"{self.endpoints.stockpile}/v1/reservations/{res['id']}/release", {})
                released += held
        return f"{returned} base units returned, {released} released"

    def _values(self, a: Action, inc: dict[str, Any]) -> dict[str, str]:
        burst = next(i for i in self.scenario.msel if isinstance(i, AlarmBurst) and i.id == a.incident)
        shelter = self.scenario.resources.shelters[0].name_zh if self.scenario.resources.shelters else "-"
        values = {
            "address": burst.address or "{lat:.4f},{lon:.4f}".format(**inc["location"]),
            "hotline": "12345",
            "shelter": shelter,
        }
        values.update(a.values)
        return values

    async def _publish(self, kind: str, item: dict[str, Any]) -> dict[str, Any]:
        """submit (first person), approve (second person), publish (first person)."""
        notify = self.endpoints.notification
        for action, second in (("submit", False), ("approve", True), ("publish", False)):
            url = f"{notify}/v1/{kind}/{item['id']}:{action}"
            r = await self._act("POST", url, {"version": item["version"]}, second=second)
            item = r.json()
        return item

    async def _inform(self, a: Action, inc: dict[str, Any]) -> str:
        notify, iid = self.endpoints.notification, inc["id"]
        values = self._values(a, inc)
        if a.action is ActionName.alert:
            r = await self._act("POST", f"{notify}/v1/incidents/{iid}/alerts", {"values": values})
            alert = await self._publish("alerts", r.json())
            self.alerts.setdefault(iid, []).append(alert)
            return f"CAP alert {alert['id']} published ({alert.get('status', '')})"
        if a.action is ActionName.all_clear:
            cancelled = 0
            for alert in self.alerts.get(iid, []):
                body = {"msg_type": "Cancel", "references": alert["id"], "values": values}
                r = await self._act("POST", f"{notify}/v1/incidents/{iid}/alerts", body)
                await self._publish("alerts", r.json())
                cancelled += 1
            return f"{cancelled} alert(s) cancelled (all clear)"
        if a.action is ActionName.statement:
            body = {"values": values, **({"text_en": a.text} if a.text else {})}
            r = await self._act("POST", f"{notify}/v1/incidents/{iid}/statements", body)
            statement = await self._publish("statements", r.json())
            return f"official statement {statement['id']} published"
        body = {"source": a.source, "text": a.text, "first_seen": datetime.now(UTC).isoformat()}
        r = await self._act("POST", f"{notify}/v1/incidents/{iid}/rumors", body)
        rumor = r.json()
        rumor = (
            await self._act("POST", f"{notify}/v1/rumors/{rumor['id']}:refute", {"version": rumor["version"]})
        ).json()
        body = {"kind": "rebuttal", "values": values, "answers_rumors": [rumor["id"]]}
        r = await self._act("POST", f"{notify}/v1/incidents/{iid}/statements", body)
        rebuttal = await self._publish("statements", r.json())
        rumor = (await self._call("GET", f"{notify}/v1/rumors/{rumor['id']}")).json()
        await self._act("POST", f"{notify}/v1/rumors/{rumor['id']}:close", {"version": rumor["version"]})
        return f"rumor {rumor['id']} refuted, answered by {rebuttal['id']} and closed"

    async def _fault(self, f: Fault) -> str:
        if f.fault is FaultName.unit_out_of_service:
            await self._call(
                "POST", f"{self.endpoints.dispatch}/v1/units/{f.unit}/status", json={"status": "out_of_service"}
            )
            return f"unit {f.unit} out of service"
        assert f.depot and f.item and f.quantity
        body = {
            "depot_id": f.depot,
            "item": f.item,
            "lot": f"{f.depot}-{f.item}",
            "delta": -f.quantity,
            "reason": "lost",
        }
        await self._call("POST", f"{self.endpoints.stockpile}/v1/documents/adjustments", json=body)
        return f"depot {f.depot} lost {f.quantity} {f.item}"

    # --- the crews ---------------------------------------------------------------------------

    def _crew(self, unit: str) -> None:
        task = asyncio.create_task(self._crew_moves(unit))
        self._crew_tasks.add(task)
        task.add_done_callback(self._crew_tasks.discard)

    async def _crew_moves(self, unit: str) -> None:
        crews = self.scenario.crews
        start = self.clock.now_s()
        for status, after in (("en_route", crews.en_route_after), ("on_scene", crews.arrive_after)):
            await self.clock.sleep_until(start + after)
            for _ in range(20):
                try:
                    r = await self._http.post(  # type: ignore[union-attr]
                        f"{self.endpoints.dispatch}/v1/units/{unit}/status",
                        json={"status": status},
                        headers=self._headers(),
                    )
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
                    continue
                if r.status_code != 503:
                    break
                await asyncio.sleep(0.5)

    # --- the result --------------------------------------------------------------------------

    async def _get(self, url: str, **params: Any) -> Any:
        try:
            r = await self._call("GET", url, params=params)
        except InjectFailed as exc:
            self.note(f"could not read {url} for the report: {exc}")
            return {}
        return r.json()

    async def _items(self, url: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged listing."""
        out: list[dict[str, Any]] = []
        cursor = None
        for _ in range(50):
            page = await self._get(url, **params, **({"cursor": cursor} if cursor else {}))
            out.extend(page.get(key, []))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    async def _live_channel_leaks(self) -> int:
        """Deliveries of this drill's alerts to a live channel (must be 0: a drill never reaches the public)."""
        channels = await self._get(f"{self.endpoints.notification}/v1/channels")
        live = {c["id"] for c in channels.get("channels", channels.get("items", [])) if not c.get("exercise")}
        leaks = 0
        for alerts in self.alerts.values():
            for alert in alerts:
                d = await self._get(f"{self.endpoints.notification}/v1/alerts/{alert['id']}/deliveries")
                leaks += sum(1 for x in d.get("deliveries", []) if x.get("channel_id") in live)
        return leaks

    async def _result(self) -> dict[str, Any]:
        e = self.endpoints
        incidents = []
        for iid in sorted(self.progress.incidents):
            inc = await self._get(f"{e.intake}/v1/incidents/{iid}")
            if inc.get("location"):
                perimeter = inc.get("perimeter")
                incidents.append(
                    {
                        "id": iid,
                        "category": inc.get("category"),
                        "level": inc.get("level"),
                        "stage": inc.get("stage"),
                        "lat": inc["location"]["lat"],
                        "lon": inc["location"]["lon"],
                        "perimeter": perimeter if perimeter and perimeter.get("kind") == "circle" else None,
                    }
                )
        ours = set(self.scenario.unit_ids())
        units = [
            {
                "id": u["id"],
                "kind": u.get("unit_type", ""),
                "lat": u["location"]["lat"],
                "lon": u["location"]["lon"],
                "status": u.get("status", ""),
            }
            for u in await self._items(f"{e.dispatch}/v1/units", "items", limit=500)
            if u["id"] in ours and u.get("location")
        ]
        depot_ids = {d.id for d in self.scenario.resources.depots}
        depots = [
            {"id": d["id"], "name": d.get("name", d["id"]), "lat": d["lat"], "lon": d["lon"]}
            for d in (await self._get(f"{e.stockpile}/v1/depots")).get("depots", [])
            if d["id"] in depot_ids
        ]
        shelter_ids = {s.id for s in self.scenario.resources.shelters}
        shelters = [
            {
                "id": s["id"],
                "name": s.get("name_zh", s["id"]),
                "lat": s["location"]["lat"],
                "lon": s["location"]["lon"],
                "capacity": s.get("capacity", 0),
                "occupied": s.get("occupied", 0),
            }
            for s in await self._items(f"{e.shelter}/v1/shelters", "items", exercise="true", limit=1000)
            if s["id"] in shelter_ids
        ]
        short = 0
        for iid in self.progress.incidents:
            view = await self._get(f"{e.stockpile}/v1/incidents/{iid}/reservations")
            short += sum(int(r.get("missing", 0)) for r in view.get("reservations", []))
        leaks = await self._live_channel_leaks()
        await self._give_back_loans()
        zero = self.first_alarm_s or 0.0
        measured: dict[Measure, float | None] = {m: t - zero for m, (t, _) in self.first.items()}
        evidence = {m: why for m, (_, why) in self.first.items()}
        measured[Measure.items_short] = float(short)
        evidence[Measure.items_short] = f"{short} base units the reservations could not find"
        measured[Measure.clocks_missed] = float(self.missed_clocks)
        evidence[Measure.clocks_missed] = "notification.clock.missed events"
        measured[Measure.incidents_opened] = float(len(self.progress.incidents))
        evidence[Measure.incidents_opened] = (
            f"incidents the drill's alarms opened: {', '.join(sorted(self.progress.incidents))}"
        )
        objectives = score(self.scenario.objectives, measured, evidence)
        if leaks:
            self.status = "failed"
            self.reason = f"{leaks} exercise message(s) reached a live channel: the drill fails outright"
        real = max(self.clock.real_s(), 1e-9)
        return {
            "scenario": {
                "name": self.scenario.name,
                "type": self.scenario.type.value,
                "file": self.source,
                "speed": self.clock.speed,
                "description": self.scenario.description,
            },
            "run_id": self.run_id,
            "started_at": self._started_at.isoformat(),
            "ended_at": datetime.now(UTC).isoformat(),
            "status": self.status,
            "reason": self.reason,
            "objectives": objectives,
            "injects": sorted((s.as_dict() for s in self.injects.values()), key=lambda i: (i["at_s"], i["id"])),
            "timeline": self.timeline,
            "incidents": incidents,
            "units": units,
            "depots": depots,
            "shelters": shelters,
            "counts": {
                "events_seen": self.progress.events_seen,
                "events_received": self._events_in,
                "events_per_s": round(self._events_in / real, 2),
                "real_s": round(real, 2),
                "scenario_s": round(self.clock.now_s(), 1),
                "injects_done": self.progress.injects_done,
                "injects_failed": self.progress.injects_failed,
                **{f"events {subject} (not in the timeline)": n for subject, n in sorted(self.quiet.items())},
            },
            "live_channel_exercise_messages": leaks,
            "improvement_plan": [],
        }

    async def purge_own_data(self) -> dict[str, Any]:
        """Purge exercise data from every service (the real-world emergency stop); loans given back."""
        await self._give_back_loans()
        assert self._http is not None
        purged = await purge_exercise(self._http, self.endpoints, self._headers())
        self.note(f"exercise data purged: {purged}")
        return purged


PARALLEL = 8
"""Operator calls the runner makes at once within one inject (households placed, sent home)."""


async def _at_most(n: int, calls: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``calls`` with at most ``n`` at once; the first failure cancels the rest and is raised."""
    gate = asyncio.Semaphore(n)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    tasks = [asyncio.create_task(one(call)) for call in calls]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _Retry(Exception):
    """A refusal the operator would try again (a guard not yet met, a stale version, 503)."""


PURGE_CALLS = (
    ("incident-intake", "intake", "/v1/exercise/incidents", {}),
    ("dispatch", "dispatch", "/v1/exercise", {"units": "true"}),
    ("resource-stockpile", "stockpile", "/v1/exercise", {"depots": "true"}),
    ("shelter-registry", "shelter", "/v1/exercise", {"shelters": "true"}),
    ("public-notification", "notification", "/v1/exercise", {"channels": "true"}),
)
"""Each service's exercise-data endpoint (GET lists, DELETE purges, drill_runner only)."""


async def exercise_data(http: httpx.AsyncClient, endpoints: Endpoints, headers: dict[str, str]) -> dict[str, Any]:
    """What exercise data each service holds (its ``GET`` exercise endpoint), by service name; a
    service without the endpoint or unreachable says so."""
    out: dict[str, Any] = {}
    for name, attr, path, _ in PURGE_CALLS:
        url = getattr(endpoints, attr) + ("/v1/exercise" if attr == "intake" else path)
        out[name] = await _json_or_problem(http, "GET", url, headers, {})
    return out


async def purge_exercise(http: httpx.AsyncClient, endpoints: Endpoints, headers: dict[str, str]) -> dict[str, Any]:
    """Purge every service's exercise data (its ``DELETE`` exercise endpoint, drill_runner); live
    data is never touched. Returns each service's answer (counts purged) or what went wrong."""
    out: dict[str, Any] = {}
    for name, attr, path, params in PURGE_CALLS:
        out[name] = await _json_or_problem(http, "DELETE", getattr(endpoints, attr) + path, headers, params)
    return out


async def _json_or_problem(
    http: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], params: dict[str, str]
) -> Any:
    try:
        r = await http.request(method, url, headers=headers, params=params)
    except httpx.HTTPError as exc:
        return {"error": f"unreachable ({exc.__class__.__name__})"}
    if r.status_code >= 400:
        return {"error": f"{r.status_code} {_problem(r)}"}
    return r.json()


def _take_word(path: Path) -> str | None:
    """The word written into the control file, which is then removed; None when there is none."""
    try:
        word = path.read_text(encoding="utf-8").strip().lower()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return word


def _problem(r: httpx.Response) -> str:
    """A refusal in plain words: the problem+json title and detail, else the body's start."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("title", "detail") if body.get(k)]
        return ": ".join(parts)[:500] or str(body)[:300]
    return str(body)[:300]


def _caller(run_id: str, burst_id: str, n: int) -> str:
    """The ``n``-th distinct caller of a burst: a mobile number of its own for each run and burst."""
    digest = hashlib.blake2b(f"{run_id}/{burst_id}/{n}".encode(), digest_size=8).digest()
    return f"139{int.from_bytes(digest, 'big') % 10**8:08d}"


def _scatter(rng: random.Random, lat: float, lon: float, spread_m: float) -> tuple[float, float]:
    """A point uniformly within ``spread_m`` metres of (lat, lon)."""
    if spread_m <= 0:
        return lat, lon
    r = spread_m * math.sqrt(rng.random())
    theta = rng.uniform(0, 2 * math.pi)
    dlat = r * math.cos(theta) / 111_195
    dlon = r * math.sin(theta) / (111_195 * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def _describe(inject: AlarmBurst | Action | Fault) -> str:
    if isinstance(inject, AlarmBurst):
        return f"{inject.count} alarms over {inject.over:.0f} s ({', '.join(inject.categories)})"
    if isinstance(inject, Action):
        extra = next(
            (f" {getattr(inject, k)}" for k in ("to", "radius_m", "level", "fact", "households") if getattr(inject, k)),
            "",
        )
        return f"{inject.action}{extra}"
    return f"{inject.fault} {inject.unit or inject.depot or ''}"
