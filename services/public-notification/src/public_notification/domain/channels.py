"""Channels and deliveries: which channels an alert goes to, what a live channel refuses, and
when a failed attempt is tried again.

Exercise isolation is structural (DESIGN §8): an exercise alert is queued only for channels
registered as exercise channels, a live alert only for live ones; and a live channel refuses any
message whose CAP status is not Actual, recording the refusal without sending.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "ChannelKind",
    "DeliveryStatus",
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
