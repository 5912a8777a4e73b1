from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ecs.settings import ServiceSettings


class StockpileSettings(ServiceSettings):
    """resource-stockpile's settings, from STOCKPILE_* environment variables (times in seconds)."""

    model_config = SettingsConfigDict(env_prefix="STOCKPILE_", extra="ignore")

    service_name: str = "resource-stockpile"
    database_url: str = "sqlite:///var/data/resource-stockpile.db"
    http_port: int = 8003

    # Stock expiring within this many days of today is never reserved (nor is expired stock).
    min_shelf_life_days: int = Field(default=30, ge=0, le=3650)
    # Travel time from a depot is estimated as straight-line distance x road_factor / speed.
    road_factor: float = Field(default=1.4, ge=1.0, le=5.0)
    truck_speed_kmh: float = Field(default=30.0, gt=0, le=200)
    # A depot further than this (estimated travel, seconds) is never reserved from: what it holds
    # could not arrive in time, and a reservation would keep it from those it could reach. The
    # shortfall is reported as missing. 8 h is 171 km straight at the defaults: the whole city.
    max_travel_s: float = Field(default=28_800.0, gt=0, le=7 * 86_400)

    # Stage-driven automation: reserve the plan's supplies on handling, follow the level, and
    # ask for returns on aftermath.
    automatic: bool = True
    incident_batch: int = Field(default=50, ge=1, le=500)
    # Reserve-and-claim rounds before a shortfall is reported: each round the stock others took
    # meanwhile gives way to the next nearest.
    reserve_rounds: int = Field(default=4, ge=1, le=20)
    # Lots with stock on hand expiring within this many days are warned of (once per lot), by a
    # sweep every alert_sweep_s seconds, which also checks every minimum's low-stock alert again.
    expiry_warning_days: int = Field(default=60, ge=0, le=3650)
    alert_sweep_s: float = Field(default=300.0, ge=1, le=86400)
    # Who this service is in the EDXL-RM 1.0 messages it exports (ContactDescription), and the
    # prefix of their MessageIDs.
    edxl_sender: str = Field(default="Shanghai emergency command, resource-stockpile", min_length=1, max_length=255)
    edxl_sender_urn: str = Field(default="urn:ecs:stockpile", min_length=1, max_length=100)
    # How long to wait for dispatch's answer to rpc.dispatch.plan.get.
    plan_request_timeout_s: float = Field(default=2.0, gt=0, le=30)
