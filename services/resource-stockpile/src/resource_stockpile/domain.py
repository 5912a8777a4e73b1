"""The rules of resource-stockpile: the catalogue's units and packs, stock conditions and ledger
documents, which stock may be reserved and from where (nearest depot first, earliest expiry first
within a depot), what a reservation's quantities may do (reserved → issued → returned or consumed;
reserved → released), the ledger's history, and when an incident is settled.

Pure: no I/O, no framework. Quantities are whole numbers of an item's base unit; coordinates are
WGS-84 decimal degrees, distances metres, travel times seconds, dates calendar dates (UTC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import MAX_EMAX, MIN_EMIN, Decimal, InvalidOperation, localcontext
from enum import StrEnum

from ecs import errors
from ecs.geo import haversine_m
from ecs.vocabulary import Participant, Stage

SERVICE = Participant.stockpile.service

MAX_QUANTITY = 1_000_000_000
"""The largest quantity, in base units, one line of a document or a request may carry."""

GB_CODE = re.compile(r"^[0-9]{7}$")
"""GB/T 38565-2020 (应急物资分类及编码): a 7-digit code, 4 levels (1 + 2 + 2 + 2 digits)."""


class Condition(StrEnum):
    """The condition of a stock line; only ``good`` stock is ever reserved."""

    good = "good"
    damaged = "damaged"
    quarantined = "quarantined"


class DocumentKind(StrEnum):
    """The documents stock changes through; no balance is ever edited directly."""

    receipt = "receipt"
    issue = "issue"
    return_ = "return"
    transfer = "transfer"
    adjustment = "adjustment"
    assembly = "assembly"  # parts consumed, kits received, at one depot
    disassembly = "disassembly"  # kits consumed, their parts received, at one depot


class AdjustmentReason(StrEnum):
    """Why an adjustment changes a balance."""

    count = "count"
    lost = "lost"
    found = "found"
    damaged = "damaged"
    expired = "expired"
    consumed = "consumed"


# --- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """A catalogue item: ``packs`` maps a pack's name to its size in base units (a case = 24
    bottles); ``shelf_life_days`` is None for what does not expire."""

    code: str
    name_en: str
    name_zh: str
    base_unit: str
    packs: Mapping[str, int] = field(default_factory=dict)
    gb_code: str | None = None
    shelf_life_days: int | None = None
    version: int = 1
    kit_of: Mapping[str, int] = field(default_factory=dict)
    """A kit's parts: item code -> base units of it in one kit (empty: not a kit). Kits are made
    and broken only by assembly and disassembly documents."""


def check_item(item: Item) -> None:
    """Raises InvalidInput naming the field for a GB/T 38565 code that is not 7 digits, a pack
    named like the base unit or of fewer than 2 base units."""
    if item.gb_code is not None and not GB_CODE.match(item.gb_code):
        raise errors.InvalidInput("gb_code must be 7 digits (GB/T 38565-2020)", field="gb_code")
    for name, size in item.packs.items():
        if name == item.base_unit:
            raise errors.InvalidInput(f"pack {name!r} has the base unit's name", field=f"packs.{name}")
        if not isinstance(size, int) or size < 2 or size > MAX_QUANTITY:
            raise errors.InvalidInput(
                f"pack {name!r} must hold a whole number of {item.base_unit} from 2 to {MAX_QUANTITY}",
                field=f"packs.{name}",
            )


def check_kits(new: Sequence[Item], known: Mapping[str, Item]) -> None:
    """Refuse (InvalidInput naming ``items.<i>.kit_of.<part>``) a kit among ``new`` whose part is
    neither in the catalogue (``known``, by code) nor among ``new``, a part quantity that is not a
    whole number from 1 to MAX_QUANTITY base units, or a kit that contains itself, directly or
    through another kit."""
    everything = {**known, **{i.code: i for i in new}}
    for n, item in enumerate(new):
        for part, q in item.kit_of.items():
            where = f"items.{n}.kit_of.{part}"
            if part not in everything:
                raise errors.InvalidInput(f"kit {item.code}: part {part} is not in the catalogue", field=where)
            if not isinstance(q, int) or isinstance(q, bool) or q < 1 or q > MAX_QUANTITY:
                raise errors.InvalidInput(
                    f"kit {item.code}: part {part} must be a whole number of base units from 1 to {MAX_QUANTITY}",
                    field=where,
                )
    _refuse_cycles(new, everything)


def _refuse_cycles(new: Sequence[Item], everything: Mapping[str, Item]) -> None:
    """One walk over the kits' parts, each kit explored once whatever the number of kits (a
    thousand kits of a hundred parts each is linear, not a walk per kit), refusing the first kit
    that contains itself. The catalogue already stored has no cycle, so any cycle runs through
    ``new``."""
    index = {item.code: n for n, item in enumerate(new)}
    ON_PATH, DONE = 1, 2
    state: dict[str, int] = {}
    for root in new:
        if state.get(root.code) == DONE:
            continue
        path, parts = [root.code], [iter(root.kit_of)]
        state[root.code] = ON_PATH
        while parts:
            code = next(parts[-1], None)
            if code is None:
                state[path.pop()] = DONE
                parts.pop()
                continue
            if state.get(code) == ON_PATH:  # back to a kit on the way: it contains itself
                # The cycle's links, kit -> part; one of them is a kit being entered now (the
                # stored catalogue has none): name that kit's part, where the request can change.
                cycle = [*path[path.index(code) :], code]
                kit, part = next((k, p) for k, p in zip(cycle[:-1], cycle[1:], strict=True) if k in index)
                raise errors.InvalidInput(
                    f"kit {kit} contains itself (through {part})"
                    if part != kit
                    else f"kit {kit} lists itself as a part",
                    field=f"items.{index[kit]}.kit_of.{part}",
                )
            if state.get(code) == DONE or code not in everything:
                continue
            state[code] = ON_PATH
            path.append(code)
            parts.append(iter(everything[code].kit_of))


class PartsShort(errors.Conflict):
    """A depot has too little of a kit's parts (or, to break kits down, of the kit) available
    (409): names each short item, the depot and how many base units are short."""

    def __init__(self, depot_id: str, short: Mapping[str, int], kits: int, kit: str) -> None:
        listed = ", ".join(f"{code} short by {n}" for code, n in short.items())
        super().__init__(
            f"depot {depot_id} has too little good, unexpired stock for {kits} {kit}: {listed}",
            depot_id=depot_id,
            part=next(iter(short)),
            short=dict(short),
        )


def _fefo(lines: Iterable[StockLine]) -> list[StockLine]:
    return sorted(lines, key=lambda x: (x.expiry or date.max, x.id))


def plan_assembly(
    kit: Item, kits: int, depot_id: str, lines: Iterable[StockLine], today: date
) -> tuple[list[tuple[StockLine, int]], date | None]:
    """What ``kits`` kits of ``kit`` take from a depot's ``lines``: for each part, kits x its
    quantity, from its good, unexpired (expiry on or after ``today``) lines, earliest expiry
    first (FEFO), never more than a line has available. Returns the takes (line, base units)
    and the kits' expiry, the earliest of the lines taken (None when nothing taken expires).
    Raises PartsShort naming every part short and by how much."""
    by_part: dict[str, list[StockLine]] = {}
    for x in lines:
        if x.condition is Condition.good and x.available > 0 and (x.expiry is None or x.expiry >= today):
            by_part.setdefault(x.item, []).append(x)
    takes: list[tuple[StockLine, int]] = []
    short: dict[str, int] = {}
    for part, per_kit in sorted(kit.kit_of.items()):
        left = per_kit * kits
        for x in _fefo(by_part.get(part, [])):
            if left <= 0:
                break
            q = min(left, x.available)
            takes.append((x, q))
            left -= q
        if left > 0:
            short[part] = left
    if short:
        raise PartsShort(depot_id, short, kits, kit.code)
    expiries = [x.expiry for x, _ in takes if x.expiry is not None]
    return takes, min(expiries) if expiries else None


def plan_disassembly(
    kit: Item, kits: int, depot_id: str, lines: Iterable[StockLine]
) -> tuple[list[tuple[StockLine, int]], date | None]:
    """What breaking ``kits`` kits of ``kit`` down takes from a depot's good ``lines`` of the kit
    (what is not reserved; earliest expiry first), and the expiry its parts get back: the
    earliest of the kits taken (a kit's expiry is its earliest part's). Raises PartsShort naming
    the kit and how many are short."""
    takes: list[tuple[StockLine, int]] = []
    left = kits
    for x in _fefo(x for x in lines if x.item == kit.code and x.condition is Condition.good and x.available > 0):
        if left <= 0:
            break
        q = min(left, x.available)
        takes.append((x, q))
        left -= q
    if left > 0:
        raise PartsShort(depot_id, {kit.code: left}, kits, kit.code)
    expiries = [x.expiry for x, _ in takes if x.expiry is not None]
    return takes, min(expiries) if expiries else None


def to_base(item: Item, quantity: Decimal | int | float | str, unit: str | None, where: str = "quantity") -> int:
    """``quantity`` of ``unit`` (the base unit, or one of the item's packs; None: the base unit)
    in base units. Raises InvalidInput naming ``where`` (or ``unit``) for a quantity ≤ 0, a
    fraction of a base unit, more than MAX_QUANTITY base units, or a unit the item does not have."""
    try:
        q = Decimal(str(quantity))
    except InvalidOperation:
        raise errors.InvalidInput(f"{where} must be a number", field=where) from None
    if not q.is_finite() or q <= 0:
        raise errors.InvalidInput(f"{where} must be greater than 0", field=where)
    if unit is None or unit == item.base_unit:
        size = 1
    elif unit in item.packs:
        size = item.packs[unit]
    else:
        known = ", ".join([item.base_unit, *item.packs])
        unit_field = where.rsplit(".", 1)[0] + ".unit" if "." in where else "unit"
        raise errors.InvalidInput(
            f"{unit!r} is not a unit of {item.code}; one of: {known}", field=unit_field, item=item.code
        )
    # Exact arithmetic, never the default context's 28 digits: there 1e-999999999 × 24 underflows
    # to 0 and 1.00000000000000000000000000000001 rounds to 1, and both would pass as whole.
    if q.adjusted() > len(str(MAX_QUANTITY)):
        raise errors.InvalidInput(f"{where} is more than {MAX_QUANTITY} {item.base_unit}", field=where)
    if q.adjusted() < -len(str(size)):  # less than 1 / size: less than one base unit
        raise errors.InvalidInput(
            f"{where} must be a whole number of {item.base_unit} ({quantity} {unit or item.base_unit} is not)",
            field=where,
        )
    with localcontext() as exact:
        exact.prec = len(q.as_tuple().digits) + len(str(size)) + 2
        exact.Emin, exact.Emax = MIN_EMIN, MAX_EMAX
        base = q * size
    if base != base.to_integral_value():
        raise errors.InvalidInput(
            f"{where} must be a whole number of {item.base_unit} ({quantity} {unit or item.base_unit} is not)",
            field=where,
        )
    if base > MAX_QUANTITY:
        raise errors.InvalidInput(f"{where} is more than {MAX_QUANTITY} {item.base_unit}", field=where)
    return int(base)


def in_packs(item: Item, base: int) -> dict[str, int]:
    """A quantity in base units as whole packs of the largest pack and the rest in base units,
    e.g. ``{"case": 4, "bottle": 2}`` for 98 bottles with 24 to a case."""
    if not item.packs:
        return {item.base_unit: base}
    name, size = max(item.packs.items(), key=lambda p: p[1])
    packs, rest = divmod(base, size)
    return {name: packs, item.base_unit: rest}


# --- depots and stock ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Depot:
    """A depot (应急物资储备库): where it is (WGS-84 degrees), and whether it holds exercise stock."""

    id: str
    name: str
    district: str
    lat: float
    lon: float
    exercise: bool = False
    hours: str = ""
    contact: str = ""
    version: int = 1


@dataclass(frozen=True, slots=True)
class StockLine:
    """One depot's stock of one item, lot and condition: ``on_hand`` in the depot, of which
    ``reserved`` is promised to reservations (base units)."""

    id: int
    depot_id: str
    item: str
    lot: str
    expiry: date | None
    condition: Condition
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        """What may still be reserved."""
        return self.on_hand - self.reserved


def reservable(line: StockLine, today: date, min_shelf_life_days: int) -> bool:
    """True when ``line`` may be reserved: good condition, something available, and not expiring
    within ``min_shelf_life_days`` of ``today`` (expired stock never)."""
    if line.condition is not Condition.good or line.available <= 0:
        return False
    return line.expiry is None or line.expiry >= today + timedelta(days=max(min_shelf_life_days, 0))


def travel_s(depot: Depot, lat: float, lon: float, road_factor: float, speed_kmh: float) -> float:
    """Estimated travel time in seconds from ``depot`` to (lat, lon): straight-line distance
    times ``road_factor`` at ``speed_kmh``."""
    return haversine_m(depot.lat, depot.lon, lat, lon) * road_factor / (speed_kmh / 3.6)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A reservable stock line and the travel time from its depot (seconds)."""

    line: StockLine
    travel_s: float


def order_candidates(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Nearest depot first; within a depot, earliest expiry first (FEFO, what does not expire last)."""
    return sorted(
        candidates,
        key=lambda c: (round(c.travel_s, 3), c.line.depot_id, c.line.expiry or date.max, c.line.id),
    )


@dataclass(frozen=True, slots=True)
class Take:
    """Reserve ``quantity`` from stock line ``line_id`` (of depot ``depot_id``)."""

    line_id: int
    depot_id: str
    quantity: int
    travel_s: float


def allocate(candidates: Sequence[Candidate], wanted: int) -> tuple[list[Take], int]:
    """What to take to meet ``wanted`` from ``candidates`` (nearest first, FEFO within a depot:
    order_candidates), and how much is still missing."""
    takes: list[Take] = []
    left = wanted
    for c in order_candidates(candidates):
        if left <= 0:
            break
        q = min(left, c.line.available)
        if q > 0:
            takes.append(Take(c.line.id, c.line.depot_id, q, c.travel_s))
            left -= q
    return takes, max(left, 0)


def allocate_many(pools: Mapping[str, Sequence[Candidate]], wanted: Sequence[tuple[str, int]]) -> list[list[Take]]:
    """What to take for each of several requests ``wanted`` ((item, base units), in order) from
    each item's candidates ``pools[item]``, nearest first and FEFO within a depot (as
    ``allocate``); two requests for the same item share its lines (the second gets what the
    first left). Returns one list of takes per request, in order; what a list does not cover
    is missing (an item without a pool gets nothing)."""
    left_on: dict[int, int] = {}
    ordered = {item: order_candidates(pool) for item, pool in pools.items()}
    plans: list[list[Take]] = []
    for item, quantity in wanted:
        takes: list[Take] = []
        left = quantity
        for c in ordered.get(item, ()):
            if left <= 0:
                break
            q = min(left, left_on.get(c.line.id, c.line.available))
            if q > 0:
                takes.append(Take(c.line.id, c.line.depot_id, q, c.travel_s))
                left_on[c.line.id] = left_on.get(c.line.id, c.line.available) - q
                left -= q
        plans.append(takes)
    return plans


# --- low stock and expiry ------------------------------------------------------------------------


def is_below(available: int, minimum: int) -> bool:
    """True when what a depot could reserve of an item is below its minimum (0: no minimum)."""
    return minimum > 0 and available < minimum


def expiry_horizon(today: date, warning_days: int) -> date:
    """The last expiry date warned of today: lots expiring within ``warning_days`` (or expired)."""
    return today + timedelta(days=max(warning_days, 0))


# --- what a reservation's quantities may do ----------------------------------------------------


class Bucket(StrEnum):
    """Where a reserved quantity is: held at the depot, out (issued, left the depot), or done."""

    held = "held"
    out = "out"
    returned = "returned"
    consumed = "consumed"
    released = "released"


class Action(StrEnum):
    """What a supply officer (or the automation) does with part of a reservation."""

    issue = "issue"
    release = "release"
    return_ = "return"
    consume = "consume"


TRANSITIONS: dict[tuple[Bucket, Action], Bucket] = {
    (Bucket.held, Action.issue): Bucket.out,
    (Bucket.held, Action.release): Bucket.released,
    (Bucket.out, Action.return_): Bucket.returned,
    (Bucket.out, Action.consume): Bucket.consumed,
}
"""reserved → issued (left the depot) → returned or consumed; reserved → released (back to stock)."""

SOURCE_OF: dict[Action, Bucket] = {action: source for (source, action) in TRANSITIONS}
OPEN_BUCKETS = (Bucket.held, Bucket.out)


class IllegalAction(errors.IllegalTransition):
    """A quantity in ``bucket`` cannot be ``action``-ed (409)."""

    def __init__(self, bucket: Bucket, action: Action) -> None:
        allowed = [str(a) for (b, a) in TRANSITIONS if b == bucket]
        listed = ", ".join(allowed) if allowed else "none, it is done"
        super().__init__(f"cannot {action} what is {bucket}; allowed: {listed}", bucket=str(bucket), action=str(action))


def move(bucket: Bucket, action: Action) -> Bucket:
    """Where ``action`` takes a quantity in ``bucket``; raises IllegalAction."""
    try:
        return TRANSITIONS[(bucket, action)]
    except KeyError:
        raise IllegalAction(bucket, action) from None


@dataclass(frozen=True, slots=True)
class Allocation:
    """The part of a reservation taken from one stock line, by bucket (base units)."""

    id: int
    reservation_id: int
    line_id: int
    depot_id: str
    item: str
    travel_s: float
    held: int
    out: int
    returned: int = 0
    consumed: int = 0
    released: int = 0

    def amount(self, bucket: Bucket) -> int:
        """The quantity in ``bucket``."""
        return int(getattr(self, bucket.value))

    @property
    def open(self) -> int:
        """Held or out: still the incident's to settle."""
        return self.held + self.out


def spread(allocations: Sequence[Allocation], action: Action, quantity: int | None) -> list[tuple[Allocation, int]]:
    """How ``action`` on ``quantity`` of a reservation (None: all it can) falls on its allocations,
    nearest depot first. Raises Conflict naming what there is when ``quantity`` is more (or
    nothing is there)."""
    source = SOURCE_OF[action]
    there = sum(a.amount(source) for a in allocations)
    if quantity is None:
        quantity = there
    if quantity > there or there == 0:
        raise errors.Conflict(
            f"cannot {action} {quantity}: {there} {'is' if there == 1 else 'are'} {source}",
            action=str(action),
            available=there,
        )
    moves: list[tuple[Allocation, int]] = []
    left = quantity
    for a in sorted(allocations, key=lambda a: (a.travel_s, a.id)):
        q = min(left, a.amount(source))
        if q > 0:
            moves.append((a, q))
            left -= q
        if left == 0:
            break
    return moves


def settled(allocations: Iterable[Allocation]) -> bool:
    """True when nothing of the incident's reservations is held or out."""
    return all(a.open == 0 for a in allocations)


def settled_detail(allocations: Iterable[Allocation]) -> str:
    """What the incident still holds, e.g. ``"stretcher: 40 held, 10 out"``, or ``""``."""
    held: dict[str, list[int]] = {}
    for a in allocations:
        h = held.setdefault(a.item, [0, 0])
        h[0] += a.held
        h[1] += a.out
    return "; ".join(f"{item}: {h} held, {o} out" for item, (h, o) in sorted(held.items()) if h or o)


# --- the ledger's history ------------------------------------------------------------------------


class NegativeBalance(errors.Conflict):
    """A document would make a balance negative, now or at some date in the past (409)."""

    def __init__(self, item: str, depot_id: str, at: datetime, balance: int) -> None:
        super().__init__(
            f"{item} at depot {depot_id} would fall to {balance} on {at.date().isoformat()}",
            item=item,
            depot_id=depot_id,
            date=at.date().isoformat(),
        )


def check_history(entries: Sequence[tuple[datetime, int]], at: datetime, delta: int, item: str, depot_id: str) -> None:
    """Refuse (NegativeBalance, with the date and the item) a change of ``delta`` at ``at`` to a
    stock line whose ledger ``entries`` are (effective at, change): the balance after it must stay
    ≥ 0 at every later entry too, so a back-dated issue cannot dig a hole in the past."""
    if delta >= 0:
        return
    balance = 0
    timeline = sorted([*entries, (at, delta)], key=lambda e: e[0])
    for when, change in timeline:
        balance += change
        if when >= at and balance < 0:
            raise NegativeBalance(item, depot_id, when, balance)


# --- the plan's supplies for an incident -----------------------------------------------------------

RESERVING_STAGES: frozenset[Stage] = frozenset({Stage.handling, Stage.opinion_control})
"""The stages in which an incident holds its plan's supplies (reserved on handling)."""
RETURNING_STAGES: frozenset[Stage] = frozenset({Stage.aftermath})
"""Aftermath: nothing more is reserved, what was held is released, what is out is asked back."""
FINISHED_STAGES: frozenset[Stage] = frozenset({Stage.closed, Stage.cancelled})


@dataclass(frozen=True, slots=True)
class Topping:
    """What to do for one item to bring an incident to its plan: reserve ``add`` more, or release
    ``release`` of what is held."""

    item: str
    add: int = 0
    release: int = 0


def reconcile(
    stage: Stage,
    wanted: Mapping[str, int],
    holding: Mapping[str, tuple[int, int]],
    missing: Mapping[str, int] | None = None,
) -> list[Topping]:
    """What to reserve or release for an incident in ``stage`` whose plan wants ``wanted``
    ({item: base units}) and who has ``holding`` ({item: (held, given)}: still reserved in a
    depot, and what left a depot for it, whether out, consumed or returned since): in the
    reserving stages, top up to the plan or release the surplus still held; later, release
    everything held.

    ``missing`` ({item: base units}) is what the incident's automatic reservations already asked
    for and could not get: it is not asked for again, so an event that changes nothing (a repeat,
    a no-op change) reserves nothing and a shortfall is counted once.
    """
    out: list[Topping] = []
    missing = missing or {}
    items = sorted(set(wanted) | set(holding))
    for item in items:
        held, given = holding.get(item, (0, 0))
        if stage in RESERVING_STAGES:
            want = wanted.get(item, 0)
            have = held + given
            asked = have + missing.get(item, 0)
            if asked < want:
                out.append(Topping(item, add=want - asked))
            elif have > want and held > 0:
                out.append(Topping(item, release=min(held, have - want)))
        elif (stage in RETURNING_STAGES or stage in FINISHED_STAGES) and held > 0:
            out.append(Topping(item, release=held))
    return out


__all__ = [
    "FINISHED_STAGES",
    "MAX_QUANTITY",
    "OPEN_BUCKETS",
    "RESERVING_STAGES",
    "RETURNING_STAGES",
    "SOURCE_OF",
    "SERVICE",
    "TRANSITIONS",
    "Action",
    "AdjustmentReason",
    "Allocation",
    "Bucket",
    "Candidate",
    "Condition",
    "Depot",
    "DocumentKind",
    "IllegalAction",
    "Item",
    "NegativeBalance",
    "StockLine",
    "Take",
    "Topping",
    "allocate",
    "allocate_many",
    "check_kits",
    "plan_assembly",
    "plan_disassembly",
    "PartsShort",
    "check_history",
    "check_item",
    "expiry_horizon",
    "is_below",
    "in_packs",
    "move",
    "order_candidates",
    "reconcile",
    "reservable",
    "settled",
    "settled_detail",
    "spread",
    "to_base",
    "travel_s",
]
