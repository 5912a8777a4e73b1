"""The 110 gateways this intake accepts, and the v1 signature check (DESIGN §7)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ecs import signing
from ecs.contracts import GATEWAY_ID_PATTERN
from ecs.errors import Unauthorized

from .settings import IntakeSettings

_GATEWAY_ID = re.compile(GATEWAY_ID_PATTERN)


class GatewayRegistry:
    """The gateways allowed in, by id, with their secrets; checks a request's v1 signature.

    Raises ValueError for an id outside the contract's pattern or a secret under 16 characters.
    """

    def __init__(self, secrets: dict[str, str], window_s: int = 300) -> None:
        for gateway_id, secret in secrets.items():
            if not _GATEWAY_ID.match(gateway_id):
                raise ValueError(f"gateway id {gateway_id!r} must match {GATEWAY_ID_PATTERN}")
            if len(secret) < 16:
                raise ValueError(f"gateway {gateway_id!r}: the secret must be at least 16 characters")
        self._secrets = {k: v.encode() for k, v in secrets.items()}
        self.window_s = window_s

    @classmethod
    def from_settings(cls, settings: IntakeSettings) -> GatewayRegistry:
        """The gateways of the settings' file and of ``INTAKE_GATEWAYS`` (which wins)."""
        secrets: dict[str, str] = {}
        if settings.gateways_file:
            raw = json.loads(Path(settings.gateways_file).read_text())
            for gateway_id, entry in (raw.get("gateways") or {}).items():
                secrets[gateway_id] = entry["secret"] if isinstance(entry, dict) else str(entry)
        secrets.update(settings.gateways)
        return cls(secrets, settings.timestamp_window_s)

    def __contains__(self, gateway_id: str) -> bool:
        return gateway_id in self._secrets

    def ids(self) -> list[str]:
        """The gateway ids, sorted."""
        return sorted(self._secrets)

    def sign(self, gateway_id: str, timestamp: str, body: bytes) -> str:
        """The signature ``gateway_id`` would send for this body (``ecs.signing.sign``)."""
        return signing.sign(self._secrets[gateway_id], timestamp, body)

    def verify(
        self, gateway_id: str | None, timestamp: str | None, signature: str | None, body: bytes, now: float
    ) -> str:
        """Returns the gateway id, or raises Unauthorized (401) naming the header that is wrong:
        missing, unknown gateway, timestamp (unix seconds) outside the window, bad signature."""
        if not gateway_id:
            raise Unauthorized("missing X-Gateway-Id header", field="X-Gateway-Id")
        if gateway_id not in self._secrets:
            raise Unauthorized(f"unknown gateway {gateway_id[:64]!r}", field="X-Gateway-Id")
        if not timestamp:
            raise Unauthorized("missing X-Timestamp header", field="X-Timestamp")
        # isdigit() alone also takes other scripts' digits ("١٢٣", "²"), which int() refuses.
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            raise Unauthorized("X-Timestamp must be unix seconds", field="X-Timestamp")
        if abs(now - int(timestamp)) > self.window_s:
            raise Unauthorized(f"X-Timestamp is more than {self.window_s} s from now", field="X-Timestamp")
        if not signature:
            raise Unauthorized("missing X-Signature header", field="X-Signature")
        if not signing.matches(self._secrets[gateway_id], timestamp, body, signature):
            raise Unauthorized(
                "bad signature: expected sha256=<hex HMAC-SHA256(secret, '<timestamp>.<raw body>')>",
                field="X-Signature",
            )
        return gateway_id
