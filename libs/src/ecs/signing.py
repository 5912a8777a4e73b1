"""The 110 gateway request signature, contract v1 (DESIGN §7), written once for both sides.

``X-Signature: sha256=<hex HMAC-SHA256(gateway secret, "<X-Timestamp>.<raw body>")>``, where the
timestamp is unix seconds as sent in ``X-Timestamp``. intake checks it; the gateway client, the
benchmarks and ``ecs sign`` produce it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

PREFIX = "sha256="
"""What every signature starts with: the one algorithm contract v1 knows."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``<timestamp>.<body>``); ``body`` is the exact raw
    request body, ``timestamp`` the ``X-Timestamp`` header as sent (unix seconds)."""
    mac = hmac.new(_key(secret), timestamp.encode() + b"." + body, hashlib.sha256)
    return PREFIX + mac.hexdigest()


def matches(secret: str | bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """True when ``signature`` is the one ``sign`` gives; hex case and surrounding blanks do not
    matter. The comparison takes the same time wherever the strings differ. A signature holding
    any other character (a header is Latin-1: ``é`` can arrive) is compared as its UTF-8 bytes, so
    it is simply not the signature: ``hmac.compare_digest`` refuses non-ASCII ``str``."""
    given = signature.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(given, sign(secret, timestamp, body).encode())


def signed_headers(gateway_id: str, secret: str | bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers of a signed v1 request: ``Content-Type``, ``X-Gateway-Id``, ``X-Timestamp``
    (``now`` in unix seconds, the clock by default) and ``X-Signature``."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "X-Gateway-Id": gateway_id,
        "X-Timestamp": timestamp,
        "X-Signature": sign(secret, timestamp, body),
    }
