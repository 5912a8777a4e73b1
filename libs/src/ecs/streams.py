"""Every JetStream stream of the system, declared once here so that any service that publishes
to or consumes from one declares it with the same settings (creation is idempotent).

One stream per publishing domain: its subjects are ``<domain>.>``. ``USES`` says which service
owns which stream and runs which durable consumer: the services' NATS permissions on the
JetStream API are derived from it (ecs.identities)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .bus import ConsumerSpec, StreamSpec
from .feed import FEED_PREFIX, FeedSpec
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


@dataclass(frozen=True)
class Durable:
    """A durable consumer a service runs on a stream, by name; ``push`` for a feed (ecs.feed),
    which the server delivers to ``feed_subject``, else a pull consumer (ecs.bus.ConsumerRunner).
    The service's own ConsumerSpec or FeedSpec adds what it filters and how long it may take:
    ``pull(...)`` and ``feed(...)`` build them from here, so stream and name are written once."""

    stream: StreamSpec
    name: str
    push: bool = False

    @property
    def feed_subject(self) -> str:
        """Where the server pushes a feed's messages: outside every stream's subjects."""
        return f"{FEED_PREFIX}.{self.name}"

    def pull(self, filter_subjects: tuple[str, ...], ack_wait_s: float = 30, **kwargs: Any) -> ConsumerSpec:
        if self.push:
            raise ValueError(f"{self.name} is declared a feed (push), not a pull consumer")
        return ConsumerSpec(self.stream.name, self.name, filter_subjects, ack_wait_s=ack_wait_s, **kwargs)

    def feed(self, filter_subject: str, ack_wait_s: float = 30, **kwargs: Any) -> FeedSpec:
        if not self.push:
            raise ValueError(f"{self.name} is declared a pull consumer, not a feed (push)")
        return FeedSpec(self.stream.name, self.name, filter_subject, ack_wait_s=ack_wait_s, **kwargs)


@dataclass(frozen=True)
class Uses:
    """What one service does on JetStream: the streams it owns (it creates them and brings them
    to what the code declares; they hold its own facts, or what it alone consumes) and the
    durable consumers it runs. Its NATS identity (ecs.identities) is derived from this and allows
    nothing else on the JetStream API, so a consumer is added here or the broker refuses it."""

    owns: tuple[StreamSpec, ...]
    consumers: tuple[Durable, ...] = ()

    @property
    def reads(self) -> tuple[StreamSpec, ...]:
        """Streams it consumes from and does not own: it may create one that is missing (with the
        settings declared here, so start-up order does not matter) but never change it."""
        found: dict[str, StreamSpec] = {}
        for c in self.consumers:
            if c.stream not in self.owns:
                found.setdefault(c.stream.name, c.stream)
        return tuple(found.values())

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        """Every stream it declares at start: its own, then those it reads."""
        return (*self.owns, *self.reads)

    def durable(self, name: str) -> Durable:
        """The consumer ``name``; KeyError when this service declares none of that name."""
        for c in self.consumers:
            if c.name == name:
                return c
        raise KeyError(f"no consumer {name!r} declared (ecs.streams.USES)")


# The durable consumers, by service.
INTAKE_ALARMS = Durable(ALARMS, "intake-alarms")
INTAKE_FACTS: dict[Participant, Durable] = {
    participant: Durable(stream, f"intake-facts-{participant}") for participant, stream in PARTICIPANT_STREAMS.items()
}
DISPATCH_INCIDENTS = Durable(INCIDENTS, "dispatch-incidents")
DISPATCH_LOCATIONS = Durable(VEHICLES, "dispatch-locations", push=True)
STOCKPILE_INCIDENTS = Durable(INCIDENTS, "stockpile-incidents")
SHELTER_INCIDENTS = Durable(INCIDENTS, "shelter-incidents")
NOTIFICATION_INCIDENTS = Durable(INCIDENTS, "notification-incidents")
NOTIFICATION_PLANS = Durable(DISPATCH, "notification-plans")

USES: dict[str, Uses] = {
    # The alarms gateways post are intake's alone to read, so it keeps their stream.
    "incident-intake": Uses(owns=(ALARMS, INCIDENTS), consumers=(INTAKE_ALARMS, *INTAKE_FACTS.values())),
    # Likewise the vehicle positions the feeds post, which only dispatch reads.
    "dispatch": Uses(owns=(DISPATCH, VEHICLES), consumers=(DISPATCH_INCIDENTS, DISPATCH_LOCATIONS)),
    "resource-stockpile": Uses(owns=(STOCKPILE,), consumers=(STOCKPILE_INCIDENTS,)),
    "shelter-registry": Uses(owns=(SHELTER,), consumers=(SHELTER_INCIDENTS,)),
    "public-notification": Uses(owns=(NOTIFICATION,), consumers=(NOTIFICATION_INCIDENTS, NOTIFICATION_PLANS)),
}
"""Every service's streams and consumers, by service name (ecs.identities.SERVICES has the same
keys). The dead-letter stream (ecs.bus.DEAD_LETTERS) is everyone's: each may create it if it is
missing and publish its own dead letters to it; no service may change it."""
