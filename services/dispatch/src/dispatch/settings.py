from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ecs.settings import ServiceSettings


class DispatchSettings(ServiceSettings):
    """dispatch's settings, from DISPATCH_* environment variables (times in seconds)."""

    model_config = SettingsConfigDict(env_prefix="DISPATCH_", extra="ignore")

    service_name: str = "dispatch"
    database_url: str = "sqlite:///var/data/dispatch.db"
    http_port: int = 8002

    # Available units of each type a district keeps back for its own calls, unless the incident
    # is level I; per-district overrides as {"<district>": {"<unit type>": n}}.
    min_cover: int = Field(default=1, ge=0, le=100)
    min_cover_by_district: dict[str, dict[str, int]] = Field(default_factory=dict)
    # Straight-line distance times this factor approximates the road distance.
    road_factor: float = Field(default=1.4, ge=1.0, le=5.0)

    # Stage-driven automation: assign the plan's units on isolation and handling, release them
    # when the incident enters aftermath (so that it can close), on close and on cancel.
    automatic: bool = True
    release_on_aftermath: bool = True
    # Incident events fetched at once, and incidents worked on side by side (each event in its
    # own transaction); a batch must finish well within the consumer's 10 s ack wait.
    incident_batch: int = Field(default=50, ge=1, le=500)
    automation_concurrency: int = Field(default=8, ge=1, le=64)

    # Vehicle positions: at most this many reports handled (written in one statement) at once.
    location_batch: int = Field(default=2000, ge=1, le=10000)
    # How often this replica re-reads units changed by others (its own changes apply at once).
    refresh_interval_s: float = Field(default=0.5, gt=0, le=60)
    location_sweep_s: float = Field(default=5.0, gt=0, le=600)
    # A position fixed more than this far ahead of dispatch's clock (seconds) is refused: stored, it
    # would count as newer than every true fix after it and freeze the unit where it claims to be.
    max_clock_skew_s: int = Field(default=300, ge=0, le=86_400)
    # A full re-read also forgets units another replica removed.
    full_reload_s: float = Field(default=300.0, gt=0, le=3600)
