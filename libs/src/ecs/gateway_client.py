"""A 110 gateway client for contract v1: signs and sends alarms over HTTP or NATS.

Used by drill scripts, the benchmarks and the tests; it is also the reference for gateway teams."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(gateway_id: str, secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "X-Gateway-Id": gateway_id,
        "X-Timestamp": ts,
        "X-Signature": signature(secret, ts, body),
    }


class GatewayClient:
    def __init__(self, base_url: str, gateway_id: str, secret: str, client: httpx.AsyncClient | None = None) -> None:
        self.gateway_id = gateway_id
        self.secret = secret
        self.http = client or httpx.AsyncClient(base_url=base_url, timeout=30)

    async def send(self, alarm: dict[str, Any]) -> httpx.Response:
        body = orjson.dumps(alarm)
        return await self.http.post(
            "/v1/alarms", content=body, headers=signed_headers(self.gateway_id, self.secret, body)
        )

    async def send_batch(self, alarms: list[dict[str, Any]]) -> httpx.Response:
        body = orjson.dumps({"alarms": alarms})
        return await self.http.post(
            "/v1/alarms:batch", content=body, headers=signed_headers(self.gateway_id, self.secret, body)
        )

    async def publish(self, js: Any, alarm: dict[str, Any]) -> Any:
        """Over NATS: the JetStream ack is the receipt."""
        return await js.publish(
            f"alarm.in.{self.gateway_id}",
            orjson.dumps(alarm),
            headers={"Nats-Msg-Id": f"{self.gateway_id}:{alarm['alarm_id']}"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()
