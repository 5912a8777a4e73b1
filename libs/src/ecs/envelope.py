"""The one envelope every message on the bus carries (DESIGN §4)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import Poison

M = TypeVar("M", bound=BaseModel)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """id is stable across retries and doubles as the JetStream ``Nats-Msg-Id``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    type: str = Field(
        min_length=1,
        max_length=128,
        description="the subject of an event, e.g. incident.created",
    )
    schema_version: int = Field(default=1, ge=1)
    occurred_at: datetime
    source: str = Field(min_length=1, max_length=64)
    incident_id: str | None = None
    exercise: bool = False
    correlation_id: str | None = None
    causation_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        # orjson writes datetimes as RFC 3339 itself; skipping model_dump keeps the hot path cheap.
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "schema_version": self.schema_version,
                "occurred_at": self.occurred_at,
                "source": self.source,
                "incident_id": self.incident_id,
                "exercise": self.exercise,
                "correlation_id": self.correlation_id,
                "causation_id": self.causation_id,
                "data": self.data,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate_json(raw)


def make_event(
    type: str,
    data: dict[str, Any] | BaseModel,
    *,
    source: str,
    incident_id: str | None = None,
    exercise: bool = False,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    id: str | None = None,
    schema_version: int = 1,
) -> Envelope:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return Envelope.model_construct(
        id=id or new_id(),
        type=type,
        schema_version=schema_version,
        occurred_at=utcnow(),
        source=source,
        incident_id=incident_id,
        exercise=exercise,
        correlation_id=correlation_id,
        causation_id=causation_id,
        data=data,
    )


def field_path(loc: Any) -> str:
    """A pydantic error location as a dotted field name: ``("body", "location", "lat")`` →
    ``location.lat`` (where the field came from is dropped); ``body`` when nothing is left."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def parse_payload(model: type[M], data: Any, what: str, prefix: str = "data.") -> M:
    """Validate a message's payload (a dict, or raw JSON bytes) into ``model``.

    Raises Poison naming up to five bad fields as ``<prefix><field>: <reason>``: a payload that
    does not fit its contract can never succeed, however often it is delivered.
    """
    try:
        if isinstance(data, bytes | str):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(f"{prefix}{field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise Poison(f"invalid {what}: {reasons}") from None
