"""Channels and deliveries: which channels an alert or a statement goes to, whom an SMS or a cell
broadcast reaches, what a live channel refuses, and when a failed attempt is tried again.

Exercise isolation is structural (DESIGN §8): an exercise alert or statement is queued only for
channels registered as exercise channels, a live one only for live ones; and a live channel
refuses any message whose status is not Actual, recording the refusal without sending.

SMS and cell broadcast are limited to an area (``AREA_TARGET_KINDS``): each of their deliveries
carries exactly the targets inside it, and one with no target inside is recorded as skipped,
never sent to everybody. A webhook and a post have no area: their receivers are systems and
followers, not the people standing somewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "ChannelKind",
    "DeliveryStatus",
    "AREA_TARGET_KINDS",
    "DeliveryPlan",
    "plan_deliveries",
    "reaches",
    "refusal",
    "next_attempt",
    "MAX_BACKOFF_S",
]


class ChannelKind(StrEnum):
    """How a channel reaches people: a webhook (HTTP POST of the CAP XML, signed), SMS and cell
    broadcast (through a gateway), a WeChat/Weibo-style post."""

    webhook = "webhook"
    sms = "sms"
    cell_broadcast = "cell_broadcast"
    social = "social"


class DeliveryStatus(StrEnum):
    pending = "pending"  # due at next_attempt_at
    delivered = "delivered"
    refused = "refused"  # the channel refused it for good (a non-Actual message on a live channel)
    skipped = "skipped"  # never sent: an SMS or cell broadcast with no target inside the area


MAX_BACKOFF_S = 60.0


def reaches(channel_exercise: bool, alert_exercise: bool) -> bool:
    """An alert is queued for a channel only when both are exercise, or both live."""
    return channel_exercise == alert_exercise


def refusal(channel_exercise: bool, cap_status: str) -> str | None:
    """Why a channel refuses a message, or None: a live channel takes only ``Actual``."""
    if not channel_exercise and cap_status != "Actual":
        return f"a live channel refuses a message whose CAP status is {cap_status!r}, not 'Actual'"
    return None


def next_attempt(attempts: int, now: datetime, base_s: float = 0.5, cap_s: float = MAX_BACKOFF_S) -> datetime:
    """When to try again after ``attempts`` failed attempts: exponential backoff from ``base_s``
    seconds, doubling, at most ``cap_s`` seconds."""
    return now + timedelta(seconds=min(cap_s, base_s * 2 ** max(0, attempts - 1)))


AREA_TARGET_KINDS: dict[ChannelKind, frozenset[str]] = {
    ChannelKind.cell_broadcast: frozenset({"cell"}),
    ChannelKind.sms: frozenset({"cell", "district", "subscribers"}),
}
"""The channels limited to an area, and the kinds of target each reaches there: a cell broadcast
goes out on cell sites; an SMS goes to the phones on those cells (the operators' location-based
SMS), to the district lists and to the subscriber groups whose position is inside."""


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """What publication queues for one channel: pending (with the target ids an SMS or a cell
    broadcast carries; None for a channel without an area), or skipped, saying why."""

    channel_id: str
    status: DeliveryStatus
    targets: tuple[str, ...] | None = None
    reason: str | None = None


def plan_deliveries(
    channels: Iterable[tuple[str, ChannelKind]], inside: Sequence[tuple[str, str]] | None, area: str
) -> list[DeliveryPlan]:
    """One delivery per channel. ``inside`` is the (id, kind) of every target inside the area
    (None: there is no area, e.g. a statement about an incident without a perimeter or a plan
    radius); ``area`` says which area it was, for the skip's reason. An SMS or cell-broadcast
    channel carries the ids of its kinds of target, sorted, or is skipped when there are none."""
    plans: list[DeliveryPlan] = []
    for channel_id, kind in channels:
        kinds = AREA_TARGET_KINDS.get(kind)
        if kinds is None:
            plans.append(DeliveryPlan(channel_id, DeliveryStatus.pending))
            continue
        ids = tuple(sorted({t for t, k in inside or () if k in kinds}))
        if ids:
            plans.append(DeliveryPlan(channel_id, DeliveryStatus.pending, ids))
        else:
            wanted = ", ".join(sorted(kinds))
            why = f"no area to target ({area})" if inside is None else f"no target ({wanted}) inside {area}"
            plans.append(DeliveryPlan(channel_id, DeliveryStatus.skipped, (), f"{kind!s}: {why}"))
    return plans
