"""Correlation of alarms into incidents: the index of open incidents a replica keeps in memory, and
the decision for one batch of alarms (``correlate``).

Pure: no I/O. ``handlers.alarms.Correlator`` ticks the correlation clock, refreshes the index from
the store, calls ``correlate``, and saves and emits what it decided, in one transaction.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import phonenumbers

from ecs.contracts import AlarmLinked, CategoryChanged, GatewayAlarm, IncidentVerified, LevelChanged
from ecs.errors import AppError, Conflict, InvalidInput
from ecs.geo import gcj02_to_wgs84

from .domain import (
    AlarmFacts,
    AlarmKey,
    Category,
    CorrelationWindow,
    Entry,
    Event,
    Incident,
    LevelChange,
    absorb,
    auto_verified,
    find_incident,
    open_incident,
    take_category,
)

ACTOR = "correlation"
"""Who the timeline says made correlation's changes."""

METRES_PER_DEGREE = 111_000


# --- alarms in ------------------------------------------------------------------------------


@dataclass
class IncomingAlarm:
    """An alarm as correlation takes it: the gateway's alarm as sent, how it came (``http`` or
    ``nats``), and its facts with the location in WGS-84 (``lat``, ``lon``)."""

    gateway_id: str
    alarm: GatewayAlarm
    via: str
    facts: AlarmFacts
    lat: float
    lon: float

    @property
    def key(self) -> AlarmKey:
        """(gateway_id, alarm_id): unique per alarm, the gateway's idempotency key."""
        return (self.gateway_id, self.alarm.alarm_id)

    @property
    def ref(self) -> str:
        """``<gateway_id>:<alarm_id>``, as events and messages name the alarm."""
        return f"{self.gateway_id}:{self.alarm.alarm_id}"

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the alarm says, as parsed (not its bytes: key order, spacing, the time's offset and
        the way the number is written do not change it), hashed: a repeat under the same
        alarm_id is a duplicate only if this is the same."""
        a, loc = self.alarm, self.alarm.location
        said = (
            a.alarm_id,
            self.facts.received_at.isoformat(),
            str(a.category),
            loc.lat,
            loc.lon,
            loc.crs,
            loc.accuracy_m,
            loc.address,
            self.facts.caller_key,
            a.caller.name if a.caller else None,
            a.description,
            a.casualties,
            a.exercise,
        )
        return hashlib.blake2b(repr(said).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(slots=True)
class IngestResult:
    """The answer for one alarm (the gateway contract's receipt). A value, never changed once
    made; not frozen, as one is made per alarm."""

    alarm_id: str
    incident_id: str
    duplicate: bool
    correlated: bool


Outcome = IngestResult | AppError
"""One alarm's answer: its receipt, or why it was refused (an ``ecs.errors`` error: 409 for an
alarm_id used for a different alarm, 422 for input that cannot be taken)."""


_CN_MOBILE = re.compile(r"1(?:[3-689][0-9]|7[0-8])[0-9]{8}")  # not 179xx: carrier prefixes


@functools.lru_cache(maxsize=65_536)
def normalise_number(number: str, region: str = "CN") -> str:
    """A caller's number in E.164 (``+8613900000031``), however it was written: spaces, dashes,
    ``+86``, ``0086`` or ``86`` before it. Parsed by ``phonenumbers`` (libphonenumber's metadata),
    a number without a country code as one of ``region``. Raises InvalidInput (422, naming
    ``caller.number``) for what is not a possible phone number."""
    if region == "CN" and _CN_MOBILE.fullmatch(number):
        # The form nearly every call arrives in; the library gives this same answer for it, at
        # a tenth of an alarm's whole correlation cost.
        return "+86" + number
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_possible_number(parsed):
        raise InvalidInput("caller.number is not a phone number", field="caller.number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def caller_key(pepper: str, number: str, region: str = "CN") -> str:
    """A keyed hash of a caller's number in its canonical form (``normalise_number``), so distinct
    callers are counted without storing the comparison key in clear. Raises as ``normalise_number``."""
    canonical = normalise_number(number, region)
    return hmac.new(pepper.encode(), canonical.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class AlarmPolicy:
    """What an alarm may say and still be taken (DESIGN §7), beyond its contract's shape.

    ``max_skew`` how far ahead of the intake clock a ``received_at`` may be, ``max_age`` how far
    behind; ``area`` the service area (min_lat, min_lon, max_lat, max_lon, WGS-84 degrees): the
    distance arithmetic is planar within it, so the antimeridian and the poles never occur.
    """

    max_skew: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=1)
    area: tuple[float, float, float, float] = (3.8, 73.4, 53.6, 135.1)
    region: str = "CN"

    def __post_init__(self) -> None:
        check_service_area(self.area)


MAX_AREA_LAT = 60.0
"""How far from the equator a service area may reach (degrees): the index's cells hold every
candidate up to 60° latitude, where a degree of longitude is half as long."""


def check_service_area(area: tuple[float, float, float, float]) -> None:
    """Raises ValueError unless ``area`` (min_lat, min_lon, max_lat, max_lon) is a box within
    ±60° latitude that does not reach the antimeridian: there, alarms metres apart would fall
    in cells that are not neighbours, and open two incidents."""
    min_lat, min_lon, max_lat, max_lon = area
    if not (-MAX_AREA_LAT <= min_lat < max_lat <= MAX_AREA_LAT and -180 < min_lon < max_lon < 180):
        raise ValueError(
            f"service area must be min_lat,min_lon,max_lat,max_lon with min below max, latitudes within "
            f"±{MAX_AREA_LAT:g}° and longitudes short of ±180°; got {area}"
        )


def _storable(field_name: str, value: str | None) -> None:
    # PostgreSQL's text holds neither U+0000 nor a lone surrogate; refuse them here, naming the
    # field, rather than have the database refuse the whole batch later.
    if not value:
        return
    try:
        ok = "\x00" not in value and bool(value.encode("utf-8"))
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise InvalidInput(
            f"{field_name} holds a character that cannot be stored (U+0000 or a lone surrogate)", field=field_name
        )


def admit(
    gateway_id: str, alarm: GatewayAlarm, via: str, pepper: str, policy: AlarmPolicy, now: datetime
) -> IncomingAlarm:
    """``to_incoming``, once the alarm passed what its contract's shape cannot say: a time within
    the policy's skew and age of ``now`` (UTC), a location inside the service area, a caller's
    number that is a phone number, text the database can store. Raises InvalidInput (422)
    naming the field."""
    received_at = alarm.received_at
    if received_at > now + policy.max_skew:
        raise InvalidInput(
            f"received_at is {(received_at - now).total_seconds():.0f} s ahead of the intake clock; "
            f"at most {policy.max_skew.total_seconds():.0f} s are accepted (is the offset right?)",
            field="received_at",
        )
    if received_at < now - policy.max_age:
        raise InvalidInput(f"received_at is older than {policy.max_age.total_seconds():.0f} s", field="received_at")
    _storable("description", alarm.description)
    _storable("location.address", alarm.location.address)
    if alarm.caller is not None:
        _storable("caller.name", alarm.caller.name)
        _storable("caller.number", alarm.caller.number)
    incoming = to_incoming(gateway_id, alarm, via, pepper, policy.region)
    min_lat, min_lon, max_lat, max_lon = policy.area
    if not (min_lat <= incoming.lat <= max_lat and min_lon <= incoming.lon <= max_lon):
        raise InvalidInput(
            f"location {incoming.lat:.6f},{incoming.lon:.6f} is outside the service area "
            f"{min_lat:g},{min_lon:g} .. {max_lat:g},{max_lon:g}",
            field="location",
        )
    return incoming


def to_incoming(gateway_id: str, alarm: GatewayAlarm, via: str, pepper: str, region: str = "CN") -> IncomingAlarm:
    """A validated gateway alarm as correlation takes it: GCJ-02 converted to WGS-84 (CGCS2000 is
    taken as WGS-84: they differ by centimetres), the time in UTC, the caller hashed. Raises
    InvalidInput for a caller's number that is not one (``normalise_number``)."""
    lat, lon = alarm.location.lat, alarm.location.lon
    if alarm.location.crs == "gcj02":
        lat, lon = gcj02_to_wgs84(lat, lon)
    facts = AlarmFacts(
        category=Category(alarm.category),
        lat=lat,
        lon=lon,
        received_at=alarm.received_at.astimezone(UTC),
        caller_key=caller_key(pepper, alarm.caller.number, region) if alarm.caller else None,
        casualties=alarm.casualties,
        exercise=alarm.exercise,
    )
    return IncomingAlarm(gateway_id, alarm, via, facts, lat, lon)


# --- the index of open incidents -------------------------------------------------------------


class OpenIncidentIndex:
    """The open incidents a replica correlates against, in a grid of square cells.

    Cells are at least as wide as the largest correlation distance (up to 60° latitude, where a
    degree of longitude is half as long), so every incident an alarm can join is in the alarm's
    cell or one of its eight neighbours.

    What the index covers is the caller's bookkeeping, kept here with it: every open incident
    whose last alarm is at or after ``floor``, as of correlation clock ``rev`` in clock ``epoch``
    (None: nothing is known, load it all again).
    """

    def __init__(self, cell_deg: float) -> None:
        if not cell_deg > 0:
            raise ValueError("cell_deg must be positive")
        self.cell_deg = cell_deg
        self.incidents: dict[str, Incident] = {}
        self._grid: dict[tuple[int, int], set[str]] = {}
        self.floor: datetime | None = None
        self.rev: int | None = None
        self.epoch = -1

    @classmethod
    def for_windows(cls, windows: Mapping[Category, CorrelationWindow]) -> OpenIncidentIndex:
        """An index whose cells fit the largest of ``windows`` (at least 0.01°)."""
        widest_m = max(w.distance_m for w in windows.values())
        return cls(max(0.01, widest_m / METRES_PER_DEGREE / 0.5))

    def __len__(self) -> int:
        return len(self.incidents)

    def __contains__(self, incident_id: str) -> bool:
        return incident_id in self.incidents

    def _cell(self, lat: float, lon: float) -> tuple[int, int]:
        return (math.floor(lat / self.cell_deg), math.floor(lon / self.cell_deg))

    def put(self, incident: Incident) -> None:
        """Hold ``incident`` as it is now, replacing what was held; a finished or merged incident
        is dropped instead, since no alarm can join it."""
        self.drop(incident.id)
        if not incident.stage.is_open or incident.merged_into is not None:
            return
        self.incidents[incident.id] = incident
        self._grid.setdefault(self._cell(incident.lat, incident.lon), set()).add(incident.id)

    def put_all(self, incidents: Iterable[Incident]) -> None:
        """``put`` each."""
        for incident in incidents:
            self.put(incident)

    def drop(self, incident_id: str) -> None:
        """Forget one incident, if held."""
        incident = self.incidents.pop(incident_id, None)
        if incident is not None:
            cell = self._cell(incident.lat, incident.lon)
            ids = self._grid.get(cell)
            if ids is not None:
                ids.discard(incident_id)
                if not ids:
                    del self._grid[cell]

    def candidates(self, lat: float, lon: float) -> list[Incident]:
        """The incidents in the cell of (lat, lon) and its eight neighbours."""
        cx, cy = self._cell(lat, lon)
        found = []
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for incident_id in self._grid.get((cx + dx, cy + dy), ()):
                    found.append(self.incidents[incident_id])
        return found

    def evict(self, horizon: datetime) -> int:
        """Forget incidents whose last alarm is older than ``horizon`` and raise ``floor`` to it;
        returns how many went. Nothing happens when the floor is already at or above it."""
        if self.floor is not None and horizon <= self.floor:
            return 0
        stale = [i for i, incident in self.incidents.items() if incident.last_alarm_at < horizon]
        for incident_id in stale:
            self.drop(incident_id)
        self.floor = horizon
        return len(stale)

    def clear(self) -> None:
        """Forget everything, including what the index covers (``rev`` and ``floor``)."""
        self.incidents.clear()
        self._grid.clear()
        self.rev = None
        self.floor = None


# --- the decision for one batch --------------------------------------------------------------


@dataclass
class Correlation:
    """What correlating one batch decided, in the batch's order.

    ``opened`` are new incidents (to insert), ``changed`` the existing ones alarms joined (to
    update, with the level and verification they now have), ``linked`` each new alarm with the
    incident it joined, ``callers`` the (incident_id, caller_key) pairs heard for the first time.
    """

    results: list[Outcome] = field(default_factory=list)
    refused: list[tuple[IncomingAlarm, str]] = field(default_factory=list)
    opened: list[Incident] = field(default_factory=list)
    changed: list[Incident] = field(default_factory=list)
    linked: list[tuple[IncomingAlarm, str]] = field(default_factory=list)
    callers: list[tuple[str, str]] = field(default_factory=list)
    timeline: list[Entry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def correlate(
    items: Sequence[IncomingAlarm],
    index: OpenIncidentIndex,
    taken: Mapping[AlarmKey, str],
    callers: Iterable[tuple[str, str]],
    windows: Mapping[Category, CorrelationWindow],
    auto_verify_callers: int,
    new_id: Callable[[], str],
    fingerprints: Mapping[AlarmKey, str | None] | None = None,
) -> Correlation:
    """Decide where each alarm of a batch goes: a duplicate of one already ``taken`` (or earlier in
    the batch), into the open incident ``find_incident`` picks, or into a new incident.

    ``taken`` maps the batch's alarms already stored to their incident, ``fingerprints`` to what
    they said (``IncomingAlarm.fingerprint``; None: not known, taken as the same): a repeat that
    says something else is refused (Conflict naming ``alarm_id``, in ``refused``). ``callers`` are the
    (incident_id, caller_key) pairs already known for the batch's callers. An incident the batch
    touches has its counts, level (``absorb``) and verification (``auto_verified``) updated in
    place, in ``index`` too: the index is this replica's picture of the database, so a caller
    whose save fails must ``index.clear()``.
    """
    out = Correlation()
    known = set(callers)
    said = dict(fingerprints or {})
    batch: dict[AlarmKey, str] = {}
    opened: set[str] = set()
    changed: dict[str, Incident] = {}

    for item in items:
        key = item.key
        earlier = taken.get(key) or batch.get(key)
        if earlier is not None:
            before = said.get(key)
            if before is not None and before != item.fingerprint:
                reason = (
                    f"alarm_id {item.alarm.alarm_id} of gateway {item.gateway_id} was already used for a "
                    "different alarm: give each alarm its own alarm_id"
                )
                out.results.append(Conflict(reason, field="alarm_id", incident_id=earlier))
                out.refused.append((item, reason))
                continue
            out.results.append(IngestResult(item.alarm.alarm_id, earlier, duplicate=True, correlated=False))
            continue
        facts = item.facts
        match = find_incident(facts, index.candidates(facts.lat, facts.lon), windows)
        if match is None:
            incident = open_incident(new_id(), facts)
            index.put(incident)
            opened.add(incident.id)
            out.opened.append(incident)
            if facts.caller_key:
                known.add((incident.id, facts.caller_key))
                out.callers.append((incident.id, facts.caller_key))
            out.events.append(_created(incident, item))
            detail = {"alarm_id": item.alarm.alarm_id, "gateway_id": item.gateway_id, "level": int(incident.level)}
            out.timeline.append(Entry(incident.id, ACTOR, "created", detail))
        else:
            incident = match
            new_caller = bool(facts.caller_key) and (incident.id, facts.caller_key) not in known
            if new_caller:
                known.add((incident.id, facts.caller_key))  # type: ignore[arg-type]
                out.callers.append((incident.id, facts.caller_key))  # type: ignore[arg-type]
            was = incident.category
            became = take_category(incident, facts)
            raised = absorb(incident, facts, new_caller)
            if became is not None:
                incident.version += 1
                detail = {"category": str(incident.category), "alarm_id": item.alarm.alarm_id, "reason": became}
                out.timeline.append(Entry(incident.id, ACTOR, "category.changed", detail))
                out.events.append(_category_changed(incident, was, item.alarm.alarm_id, became, raised))
            if raised is not None:
                incident.version += 1
                out.events.append(_level_changed(incident, raised.from_level, raised.to_level, raised.reason))
                detail = {"from": int(raised.from_level), "to": int(raised.to_level), "reason": raised.reason}
                out.timeline.append(Entry(incident.id, ACTOR, "level.changed", detail))
            if incident.id not in opened:
                changed[incident.id] = incident
        if not incident.verified and auto_verified(incident.caller_count, False, auto_verify_callers):
            incident.verified = True
            incident.version += 1
            verified = IncidentVerified(incident_id=incident.id, actor=ACTOR, automatic=True, version=incident.version)
            out.events.append(Event(verified, incident.exercise))
            detail = {"automatic": True, "callers": incident.caller_count}
            out.timeline.append(Entry(incident.id, ACTOR, "verified", detail))
        batch[key] = incident.id
        said[key] = item.fingerprint
        out.linked.append((item, incident.id))
        out.events.append(_linked(incident, item, new_incident=match is None))
        out.results.append(
            IngestResult(item.alarm.alarm_id, incident.id, duplicate=False, correlated=match is not None)
        )
    out.changed = list(changed.values())
    return out


def _created(incident: Incident, item: IncomingAlarm) -> Event:
    return Event(incident.created(item.gateway_id, item.alarm.alarm_id), incident.exercise, cause=item.ref)


def _category_changed(
    incident: Incident, was: Category, alarm_id: str, reason: str, raised: LevelChange | None
) -> Event:
    """``incident.category.changed`` at the version the change gave the incident (a level the
    same alarm raised follows it as its own event)."""
    data = CategoryChanged(
        incident_id=incident.id,
        from_category=was,
        to_category=incident.category,
        level=raised.from_level if raised is not None else incident.level,
        alarm_id=alarm_id,
        reason=reason,
        actor=ACTOR,
        version=incident.version,
    )
    return Event(data, incident.exercise)


def _level_changed(incident: Incident, from_level: int, to_level: int, reason: str) -> Event:
    data = LevelChanged(
        incident_id=incident.id,
        from_level=from_level,
        to_level=to_level,
        reason="auto: " + reason,
        actor=ACTOR,
        version=incident.version,
    )
    return Event(data, incident.exercise)


def _linked(incident: Incident, item: IncomingAlarm, new_incident: bool) -> Event:
    data = AlarmLinked(
        incident_id=incident.id,
        alarm_id=item.alarm.alarm_id,
        gateway_id=item.gateway_id,
        category=item.alarm.category,
        received_at=item.facts.received_at,
        lat=item.lat,
        lon=item.lon,
        alarm_count=incident.alarm_count,
        caller_count=incident.caller_count,
        casualties=incident.casualties,
        new_incident=new_incident,
    )
    # Stable id: a replayed alarm maps to the same message, which JetStream then drops.
    return Event(data, incident.exercise, cause=item.ref, id=f"linked:{item.ref}")


def max_window(windows: Mapping[Category, CorrelationWindow]) -> timedelta:
    """The longest time window: how far back an alarm can reach for an incident to join."""
    return timedelta(seconds=max(w.window_s for w in windows.values()))
