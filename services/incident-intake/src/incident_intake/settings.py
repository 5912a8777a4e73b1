from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ecs.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore")

    service_name: str = "incident-intake"
    database_url: str = "sqlite:///var/data/intake.db"
    http_port: int = 8001

    # Gateways and their HMAC secrets: a JSON file {"gateways": {"<id>": {"secret": "..."}}}
    # and/or a JSON object in INTAKE_GATEWAYS ({"<id>": "<secret>"}).
    gateways_file: Path | None = None
    gateways: dict[str, str] = Field(default_factory=dict)
    timestamp_window_s: int = Field(default=300, ge=1)

    # Correlation windows per category, overriding the defaults: {"fire": {"distance_m": 800, "window_s": 3600}}.
    correlation_windows: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Independent callers that verify an incident without a dispatcher.
    auto_verify_callers: int = Field(default=3, ge=1)
    # Services whose facts the lifecycle waits for before closing; one that never reported blocks.
    required_participants: list[str] = Field(default_factory=list)
    # Hashing key for caller numbers, so distinct callers are counted without comparing numbers.
    caller_pepper: str = "local-caller-pepper"
    ingest_batch: int = Field(default=500, ge=1, le=5000)
    # Batches fetched from the alarm stream at once: the next is fetched while one is correlated.
    alarm_fetchers: int = Field(default=2, ge=1, le=8)
