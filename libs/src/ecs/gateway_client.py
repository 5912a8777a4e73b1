"""A 110 gateway client for contract v1: signs and sends alarms over HTTP or NATS.

Used by drill scripts, the benchmarks and the tests; it is also the reference for gateway teams."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from .signing import sign as signature
from .signing import signed_headers

__all__ = ["GatewayClient", "signature", "signed_headers"]


class GatewayClient:
    """One gateway's side of contract v1: signed alarms over HTTP (``send``, ``send_batch``, each
    answering the service's response) or over NATS (``publish``, the JetStream ack its receipt)."""

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
