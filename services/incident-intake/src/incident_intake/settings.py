"""incident-intake's settings: one pydantic-settings class, every variable prefixed ``INTAKE_``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from ecs.settings import ServiceSettings
from ecs.vocabulary import Participant

from .correlation import check_service_area


class IntakeSettings(ServiceSettings):
    """What an intake process needs besides the shared service settings."""

    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore")

    service_name: str = "incident-intake"
    database_url: str = "sqlite:///var/data/intake.db"
    http_port: int = 8001

    # Gateways and their HMAC secrets: a JSON file {"gateways": {"<id>": {"secret": "..."}}}
    # and/or a JSON object in INTAKE_GATEWAYS ({"<id>": "<secret>"}).
    gateways_file: Path | None = None
    gateways: dict[str, str] = Field(default_factory=dict)
    timestamp_window_s: int = Field(default=300, ge=1)

    # What an alarm may say and still be taken (DESIGN §7): a received_at at most this far ahead of
    # the intake clock (seconds), at most this old, and a location inside the service area
    # (min_lat, min_lon, max_lat, max_lon, WGS-84 degrees; the default is China's).
    max_clock_skew_s: int = Field(default=300, ge=0, le=86_400)
    max_alarm_age_s: int = Field(default=86_400, ge=60, le=366 * 86_400)
    service_area: tuple[float, float, float, float] = (3.8, 73.4, 53.6, 135.1)
    # Where a caller's number without a country code is from (ISO 3166-1 alpha-2).
    caller_region: str = Field(default="CN", min_length=2, max_length=2)

    # Correlation windows per category, overriding the defaults: {"fire": {"distance_m": 800, "window_s": 3600}}.
    correlation_windows: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Independent callers that verify an incident without a dispatcher.
    auto_verify_callers: int = Field(default=3, ge=1)
    # Services whose facts the lifecycle waits for before closing; one that never reported blocks.
    # Either spelling: the subject prefix ("notification") or the service ("public-notification").
    required_participants: list[Participant] = Field(default_factory=list)
    # Hashing key for caller numbers, so distinct callers are counted without comparing numbers.
    caller_pepper: str = "local-caller-pepper"
    ingest_batch: int = Field(default=500, ge=1, le=5000)
    # Batches fetched from the alarm stream at once: the next is fetched while one is correlated.
    alarm_fetchers: int = Field(default=2, ge=1, le=8)

    def secrets(self) -> Iterator[tuple[str, str, Any]]:
        """The shared secrets, the caller pepper, and each gateway's HMAC secret (from
        INTAKE_GATEWAYS and the gateways file); ecs.settings refuses defaults and short ones."""
        yield from super().secrets()
        table: dict[str, str] = {}
        if self.gateways_file and Path(self.gateways_file).is_file():
            raw = json.loads(Path(self.gateways_file).read_text())
            for gateway_id, entry in (raw.get("gateways") or {}).items():
                table[gateway_id] = entry["secret"] if isinstance(entry, dict) else str(entry)
        table.update(self.gateways)
        for gateway_id, secret in table.items():
            yield f"the secret of gateway {gateway_id} (INTAKE_GATEWAYS or INTAKE_GATEWAYS_FILE)", secret, None

    @field_validator("service_area")
    @classmethod
    def _area(cls, value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        try:
            check_service_area(value)
        except ValueError as exc:
            raise ValueError(f"INTAKE_SERVICE_AREA: {exc}") from None
        return value

    @field_validator("required_participants", mode="before")
    @classmethod
    def _participants(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        parsed = []
        for name in value:
            try:
                parsed.append(name if isinstance(name, Participant) else Participant.parse(str(name)))
            except ValueError as exc:
                raise ValueError(f"INTAKE_REQUIRED_PARTICIPANTS: {exc}") from None
        return list(dict.fromkeys(parsed))
