"""Every JetStream stream of the system, declared once here so that any service that publishes
to or consumes from one declares it with the same settings (creation is idempotent).

One stream per publishing domain: its subjects are ``<domain>.>``."""

from __future__ import annotations

from .bus import StreamSpec
from .vocabulary import Participant

DAY = 24 * 3600

ALARMS = StreamSpec("ALARMS", ("alarm.in.*",), max_age_s=30 * DAY)
INCIDENTS = StreamSpec("INCIDENTS", ("incident.>",), max_age_s=30 * DAY)
DISPATCH = StreamSpec("DISPATCH", ("dispatch.>",), max_age_s=30 * DAY)
STOCKPILE = StreamSpec("STOCKPILE", ("stockpile.>",), max_age_s=30 * DAY)
SHELTER = StreamSpec("SHELTER", ("shelter.>",), max_age_s=30 * DAY)
NOTIFICATION = StreamSpec("NOTIFICATION", ("notification.>",), max_age_s=30 * DAY)
# Vehicle positions: thousands a second and each superseded by the next, so kept briefly.
VEHICLES = StreamSpec("VEHICLES", ("vehicle.location.*",), max_age_s=3600, duplicate_window_s=60, max_bytes=1 << 30)

# The stream each lifecycle participant publishes its facts on.
PARTICIPANT_STREAMS: dict[Participant, StreamSpec] = {
    Participant.dispatch: DISPATCH,
    Participant.stockpile: STOCKPILE,
    Participant.shelter: SHELTER,
    Participant.notification: NOTIFICATION,
}
