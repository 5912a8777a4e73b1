"""Settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service process needs to start.

    A subclass sets ``model_config = SettingsConfigDict(env_prefix="INTAKE_")`` and adds its own
    fields; nothing else in the code reads ``os.environ``.
    """

    model_config = SettingsConfigDict(env_prefix="ECS_", extra="ignore")

    service_name: str = "ecs"
    database_url: str = "sqlite:///var/ecs.db"
    nats_url: str = "nats://127.0.0.1:4222"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    log_json: bool = True

    # Operator tokens. The embedded default signs and verifies HS256 tokens with a local secret;
    # production sets oidc_jwks_url (and issuer/audience) and verifies the issuer's RS256 tokens.
    auth_secret: str = Field(default="change-me-local-secret-at-least-32-bytes", min_length=16)
    oidc_jwks_url: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None

    # Messaging limits: how many messages one consumer fetches at once and how long a poison
    # message may be redelivered before it goes to the dead-letter subject.
    consumer_batch: int = Field(default=500, ge=1, le=5000)
    max_deliver: int = Field(default=8, ge=1)
    stream_replicas: int = Field(default=1, ge=1, le=5)
    outbox_batch: int = Field(default=1000, ge=1, le=10000)
