from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ecs.settings import ServiceSettings


class NotificationSettings(ServiceSettings):
    """public-notification's settings, from NOTIFICATION_* environment variables (times in seconds)."""

    model_config = SettingsConfigDict(env_prefix="NOTIFICATION_", extra="ignore")

    service_name: str = "public-notification"
    database_url: str = "sqlite:///var/data/notification.db"
    http_port: int = 8005

    # The release clocks of 国办发〔2016〕80号: authoritative information within 5 h of a major
    # emergency (level II or I), a press conference within 24 h; a warning this long before one is due.
    first_information_s: float = Field(default=5 * 3600, gt=0, le=7 * 24 * 3600)
    press_conference_s: float = Field(default=24 * 3600, gt=0, le=7 * 24 * 3600)
    clock_warning_s: float = Field(default=3600, ge=0, le=24 * 3600)
    clock_sweep_s: float = Field(default=30.0, gt=0, le=3600)

    # What the alerts say about who sends them (CAP <sender>, <senderName>) and the public hotline.
    sender: str = Field(default="ecs@emergency.example.gov.cn", min_length=1, max_length=255)
    sender_name: str = Field(default="城市应急指挥中心 City Emergency Command Centre", max_length=255)
    hotline: str = Field(default="12345", min_length=1, max_length=32)

    # Channels: the embedded default's SMS / cell-broadcast / social outbox folder, and how deliveries
    # are sent (up to delivery_batch at once, each leased for delivery_lease_s while it is tried).
    channel_outbox: str = "var/channel-outbox"
    delivery_batch: int = Field(default=200, ge=1, le=5000)
    delivery_lease_s: float = Field(default=30.0, gt=0, le=600)
    delivery_poll_s: float = Field(default=0.2, gt=0, le=60)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)

    # How often this replica indexes the cells, districts and subscriber groups others registered.
    targets_refresh_s: float = Field(default=5.0, gt=0, le=3600)

    incident_batch: int = Field(default=50, ge=1, le=500)
