"""Channel adapters: how a message leaves the service. Every adapter first applies the
isolation rule itself (a live channel refuses anything whose CAP status is not Actual: Refused,
recorded, never sent), then sends; any other failure is retried later with backoff.

- ``WebhookAdapter``: HTTP POST of the message's document — an alert's CAP XML, a statement's
  JSON (``statement_document``) — signed like the gateway contract
  (``X-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``), with the delivery key
  in ``X-Delivery-Key`` so that the receiver can drop a repeat (a send is at least once).
- ``GatewayAdapter``: SMS, cell broadcast and WeChat/Weibo-style posts go through a ``Gateway``;
  the embedded default ``FileGateway`` appends one JSON line per message to a local outbox file
  per channel (``var/channel-outbox/<channel id>.jsonl``), once per delivery key, with the
  targets an SMS or a cell broadcast is limited to.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson

from .domain import ChannelKind, refusal

CAP_XML = "application/cap+xml"
STATEMENT_JSON = "application/vnd.ecs.statement+json"


class Refused(Exception):
    """The channel refuses this message for good."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message to send: the delivery key (stable across attempts of one delivery), the channel,
    the status (CAP's Actual or Exercise, for an alert or a statement alike), the document a
    webhook posts (``body`` of ``content_type``), the short text for SMS, cell broadcast and
    posts, and the targets inside the area an SMS or a cell broadcast is limited to (None: the
    channel has no area)."""

    key: str
    channel_id: str
    channel_kind: ChannelKind
    channel_exercise: bool
    cap_status: str
    body: bytes
    text: str
    url: str | None = None
    secret: str | None = None
    targets: tuple[str, ...] | None = None
    content_type: str = CAP_XML


class Adapter(Protocol):
    async def send(self, message: Message) -> None: ...


def check_isolation(message: Message) -> None:
    """Raises Refused when a live channel is handed a message that is not Actual."""
    reason = refusal(message.channel_exercise, message.cap_status)
    if reason is not None:
        raise Refused(reason)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookAdapter:
    """POSTs the document (CAP XML, or a statement's JSON) to the channel's URL; a 2xx answer is
    delivered, anything else (a redirect included: it is not followed) retried.

    One aiohttp session for every webhook of the process, at most ``max_connections`` open at
    once, kept alive between deliveries, each POST bounded by ``timeout_s`` seconds. aiohttp, not
    httpx: httpx's connection pool spends milliseconds of CPU per request on bookkeeping that grows
    with the number of connections (60 to 250 POSTs a second with 100 connections, measured here,
    where aiohttp sends thousands), and a publication's fan-out is exactly many POSTs at once. TLS
    trusts what httpx would (``httpx.create_ssl_context``: certifi, or SSL_CERT_FILE / SSL_CERT_DIR),
    and a proxy named in the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) is used as it was,
    read once per host rather than on every POST (aiohttp's ``trust_env`` reads the environment
    and ~/.netrc again for each request, in a thread: more CPU than the POST itself)."""

    def __init__(self, timeout_s: float = 5.0, max_connections: int = 100) -> None:
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str] = {}
        self._proxy_of: dict[tuple[str, str], str | None] = {}

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=httpx.create_ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
            self._proxies = urllib.request.getproxies_environment()
            self._proxy_of = {}
        return self._session

    def _proxy(self, url: str) -> str | None:
        """The proxy the environment names for ``url``'s scheme and host, None for a direct one."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxy_of:
            proxy = self._proxies.get(parts.scheme)
            bypass = bool(proxy) and urllib.request.proxy_bypass_environment(key[1], self._proxies)
            self._proxy_of[key] = proxy if proxy and not bypass else None
        return self._proxy_of[key]

    async def send(self, message: Message) -> None:
        """Raises Refused (the isolation rule), RuntimeError (an answer that is not 2xx, or none
        within the timeout) or aiohttp.ClientError (no connection)."""
        check_isolation(message)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": message.content_type,
            "X-Delivery-Key": message.key,
            "X-Timestamp": timestamp,
            "X-Signature": sign(message.secret or "", timestamp, message.body),
        }
        try:
            session = self._client()
            url = message.url or ""
            async with session.post(
                url, data=message.body, headers=headers, allow_redirects=False, proxy=self._proxy(url)
            ) as r:
                await r.read()
                status = r.status
        except TimeoutError:
            raise RuntimeError(f"webhook did not answer within {self.timeout_s:g} s") from None
        if status // 100 != 2:
            raise RuntimeError(f"webhook answered {status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Gateway(Protocol):
    """An SMS, cell-broadcast or social-media gateway."""

    async def submit(self, message: Message) -> None: ...


class FileGateway:
    """The embedded default gateway: one JSON line per message in ``<folder>/<channel id>.jsonl``,
    written once per delivery key (a repeat after a crash between writing and recording is
    dropped here)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: dict[str, set[str]] = {}
        self._lock = asyncio.Lock()

    def path(self, channel_id: str) -> Path:
        return self.folder / f"{channel_id}.jsonl"

    def _keys(self, channel_id: str) -> set[str]:
        if channel_id not in self._seen:
            keys: set[str] = set()
            path = self.path(channel_id)
            if path.exists():
                for line in path.read_bytes().splitlines():
                    if line.strip():
                        keys.add(orjson.loads(line)["key"])
            self._seen[channel_id] = keys
        return self._seen[channel_id]

    async def submit(self, message: Message) -> None:
        async with self._lock:
            keys = self._keys(message.channel_id)
            if message.key in keys:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            line = orjson.dumps(
                {
                    "key": message.key,
                    "channel": message.channel_id,
                    "kind": message.channel_kind.value,
                    "status": message.cap_status,
                    "text": message.text,
                    **({"targets": list(message.targets)} if message.targets is not None else {}),
                }
            )
            with self.path(message.channel_id).open("ab") as f:
                f.write(line + b"\n")
                f.flush()
            keys.add(message.key)


class GatewayAdapter:
    """SMS, cell broadcast and posts through a gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def send(self, message: Message) -> None:
        check_isolation(message)
        await self.gateway.submit(message)


def statement_document(statement: Any, status: str) -> bytes:
    """What a webhook receives for a statement: a small JSON document, not CAP.

    A statement is not a warning: it has no severity, urgency, certainty or area, which CAP asks
    of every ``<info>``, and a CAP receiver (a warning-release system, a siren or sign controller)
    acts on what it gets as an alert. Inventing those values would push public information into
    the receivers' warning path. So statements get their own content type
    (``application/vnd.ecs.statement+json``), with the same signature, delivery key and the same
    ``status`` (Actual or Exercise) a receiver checks, and both languages."""
    return orjson.dumps(
        {
            "type": "statement",
            "id": statement.id,
            "incident_id": statement.incident_id,
            "kind": statement.kind,
            "status": status,
            "published_at": statement.published_at.isoformat() if statement.published_at else None,
            "text": {"zh-CN": statement.text_zh, "en-US": statement.text_en},
            "answers_rumors": list(statement.answers or ()),
        }
    )


def statement_text(kind: ChannelKind, text_zh: str, text_en: str) -> str:
    """A statement's text on a gateway channel: SMS and cell broadcast carry the Chinese text (as
    alerts do: a phone's message is short, and both languages would double its segments); a post
    has room for both, Chinese first."""
    if kind is ChannelKind.social:
        return f"{text_zh}\n\n{text_en}"
    return text_zh


def default_adapters(outbox: Path, webhook_timeout_s: float) -> dict[ChannelKind, Any]:
    """The adapters of the embedded default: webhooks over HTTP, the rest into the outbox folder."""
    gateway = GatewayAdapter(FileGateway(outbox))
    return {
        ChannelKind.webhook: WebhookAdapter(webhook_timeout_s),
        ChannelKind.sms: gateway,
        ChannelKind.cell_broadcast: gateway,
        ChannelKind.social: gateway,
    }
