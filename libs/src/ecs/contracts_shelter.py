"""Message contracts of shelter-registry: the events it publishes on `shelter.>` (stream of the same
domain). proto-schemas/ is generated from `MESSAGES` with the rest (`ecs.catalogue`)."""

from __future__ import annotations

from .contracts import MessageSpec

MESSAGES: tuple[MessageSpec, ...] = ()
