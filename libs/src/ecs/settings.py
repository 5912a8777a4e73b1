"""Settings shared by every service; each service subclasses with its own env prefix.

Secrets (DESIGN §6): every setting whose name ends in ``secret``, ``pepper``, ``_key`` or
``password`` is a secret. Outside the embedded default and tests a service refuses to start
(``ServiceSettings.check_secrets``, called before anything is served) on a secret that is a
default shipped with this repository, a placeholder, or shorter than ``MIN_SECRET_LENGTH``
characters; the error names the environment variable to set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_LENGTH = 32
"""Characters a secret needs at least: 32 random URL-safe characters carry about 190 bits."""

SECRET_SUFFIXES = ("secret", "pepper", "_key", "password")
PLACEHOLDERS = ("change-me", "changeme", "replace-with", "placeholder", "example", "demo-secret", "local-")
"""Words that mark a value as a default or a placeholder, never a real secret."""


class InsecureSecret(RuntimeError):
    """A secret setting is a default, a placeholder or too short; the message names the variable."""


class ServiceSettings(BaseSettings):
    """What every service process needs to start.

    A subclass sets ``model_config = SettingsConfigDict(env_prefix="INTAKE_")`` and adds its own
    fields; nothing else in the code reads ``os.environ``.
    """

    model_config = SettingsConfigDict(env_prefix="ECS_", extra="ignore")

    service_name: str = "ecs"
    database_url: str = "sqlite:///var/ecs.db"
    nats_url: str = "nats://127.0.0.1:4222"
    # The service's NATS identity (ecs.identities): user name and password; none on a server
    # without authorization.
    nats_user: str | None = None
    nats_password: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # PostgreSQL connections this process keeps for its work (a fixed pool, ecs.db.Database; the
    # outbox relay's leader holds one more of its own) and how long a unit of work waits for one
    # before it answers unavailable.
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_pool_timeout_s: float = Field(default=30.0, gt=0, le=600)
    log_level: str = "INFO"
    log_json: bool = True

    # Operator tokens. The embedded default signs and verifies HS256 tokens with a local secret;
    # production sets oidc_jwks_url (and issuer/audience) and verifies the issuer's RS256 tokens.
    auth_secret: str = Field(default="change-me-local-secret-at-least-32-bytes", min_length=16)
    oidc_jwks_url: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None

    # Accept default, placeholder and short secrets: for tests and trying things out only, never
    # in a deployment. One switch for every service: ECS_DEV_SECRETS=true.
    dev_secrets: bool = Field(default=False, validation_alias=AliasChoices("dev_secrets", "ECS_DEV_SECRETS"))

    # Messaging limits: how many messages one consumer fetches at once and how long a poison
    # message may be redelivered before it goes to the dead-letter subject.
    consumer_batch: int = Field(default=500, ge=1, le=5000)
    max_deliver: int = Field(default=8, ge=1)
    stream_replicas: int = Field(default=1, ge=1, le=5)
    outbox_batch: int = Field(default=1000, ge=1, le=10000)

    def env_name(self, field: str) -> str:
        """The environment variable that sets ``field``, e.g. ``INTAKE_AUTH_SECRET``."""
        return (str(self.model_config.get("env_prefix") or "") + field).upper()

    def secrets(self) -> Iterator[tuple[str, str, Any]]:
        """(environment variable, value, shipped default) of every secret this service uses.
        A subclass with secrets in other shapes (a gateway table) adds them."""
        for name, info in type(self).model_fields.items():
            if not name.endswith(SECRET_SUFFIXES):
                continue
            if name == "auth_secret" and self.oidc_jwks_url:
                continue  # tokens are verified with the issuer's keys
            value = getattr(self, name)
            if name == "nats_password" and value is None:
                continue  # a broker without authorization (refused by it if it has some)
            if isinstance(value, str) or value is None:
                yield self.env_name(name), value or "", info.default

    def check_secrets(self) -> None:
        """Raises InsecureSecret naming the first secret that is a shipped default, a placeholder
        or shorter than MIN_SECRET_LENGTH characters, unless ``dev_secrets`` is set."""
        if self.dev_secrets:
            return
        for env, value, default in self.secrets():
            if value == default:
                why = "is the default shipped with the code"
            elif any(p in value.lower() for p in PLACEHOLDERS):
                why = "is a placeholder"
            elif len(value) < MIN_SECRET_LENGTH:
                why = f"is shorter than {MIN_SECRET_LENGTH} characters"
            else:
                continue
            raise InsecureSecret(
                f"{env} {why}: set it to a random secret of at least {MIN_SECRET_LENGTH} characters "
                "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
