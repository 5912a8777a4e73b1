"""Messaging on NATS JetStream: streams declared in code, publishing with Nats-Msg-Id, a batched
pull-consumer runner that acks only after the handler committed, dead-letters poison, and naks
transient failures with backoff; plus request/reply for queries that need an answer now."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.msg import Msg
from nats.js import api
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from .envelope import Envelope
from .errors import Poison, Transient
from .retry import db_error_text, refused_input
from .stopping import step, stop_task

log = structlog.get_logger("ecs.bus")

MIN_SERVER_VERSION = (2, 10, 0)
"""The oldest nats-server the code runs on: consumers with several filter subjects
(``filter_subjects``) exist from 2.10; an older server ignores the field without an error and
delivers the whole stream. The project pins a newer release (``NATS_SERVER_VERSION`` in the
Makefile); this is the floor a service refuses to start below."""

DEAD_LETTER_STREAM = "DEADLETTER"
DEAD_LETTER_PREFIX = "deadletter"

PROCESSED = Counter("ecs_messages_processed_total", "Messages handled and acked", ["consumer"])
DEAD_LETTERED = Counter(
    "ecs_messages_dead_lettered_total",
    "Messages sent to the dead-letter subject",
    ["consumer"],
)
RETRIED = Counter("ecs_messages_retried_total", "Messages nak'ed for a later retry", ["consumer"])
BATCH_SECONDS = Histogram("ecs_consumer_batch_seconds", "Time to handle one fetched batch", ["consumer"])
PUBLISHED = Counter("ecs_messages_published_total", "Messages published to JetStream", ["service"])


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float = 7 * 24 * 3600
    duplicate_window_s: float = 120
    max_bytes: int = -1


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30
    max_ack_pending: int = 20_000


DEAD_LETTERS = StreamSpec(DEAD_LETTER_STREAM, (f"{DEAD_LETTER_PREFIX}.>",), max_age_s=30 * 24 * 3600)

# The handler gets one fetched batch and returns {index: reason} for the messages it refused as
# poison; everything else is acked once it returns (so it must have committed by then).
BatchHandler = Callable[[list[Msg]], Awaitable[dict[int, str]]]


def msg_id_headers(envelope_id: str, correlation_id: str | None = None) -> dict[str, str]:
    headers = {"Nats-Msg-Id": envelope_id}
    if correlation_id:
        # W3C trace context: the correlation is the trace, the message the span (both as hex).
        headers["traceparent"] = f"00-{_hex(correlation_id, 32)}-{_hex(envelope_id, 16)}-01"
    return headers


def _hex(value: str, width: int) -> str:
    if len(value) == width and all(c in "0123456789abcdef" for c in value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:width]


def decode_envelope(msg: Msg) -> Envelope:
    """The message's envelope; raises Poison for one that is not valid, or whose ``source`` is not
    the owner of the subject it came on (ecs.identities.check_source): a forged fact."""
    try:
        env = Envelope.from_bytes(msg.data)
    except ValueError as exc:
        raise Poison(f"not a valid envelope: {_envelope_errors(exc)}") from exc
    # Imported here: the identities are derived from ecs.streams, which imports this module.
    from .identities import check_source

    check_source(msg.subject, env.source)
    return env


def _envelope_errors(exc: ValueError) -> str:
    """What is wrong with an envelope, field by field (at most five): ``id: Field required``,
    ``envelope: Invalid JSON: ...`` for bytes that are not a JSON object at all."""
    if not isinstance(exc, ValidationError):
        return _first_line(exc)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'envelope'}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)[:300]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def servers_of(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` → the list of seed servers; a cluster tells the client the
    rest of its members itself, so one reachable seed is enough to start."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError("the NATS URL names no server")
    return servers


class Bus:
    """One NATS connection per process; JetStream context for streams and publishing.

    ``url`` is one server or a comma-separated list of a cluster's members. ``user`` and
    ``password`` are the service's NATS identity (ecs.identities); without them, the URL's own
    ``user:password@`` (if any) is used."""

    def __init__(
        self, url: str, service: str, stream_replicas: int = 1, user: str | None = None, password: str | None = None
    ) -> None:
        self.url = url
        self.service = service
        self.stream_replicas = stream_replicas
        self.user = user
        self.password = password
        self.nc: nats.NATS | None = None
        self.js: Any = None

    async def connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.warning("nats.error", error=_first_line(exc))

        async def on_disconnect() -> None:
            log.warning("nats.disconnected")

        async def on_reconnect() -> None:
            log.info("nats.reconnected")

        servers = servers_of(self.url)
        credentials: dict[str, str] = {}
        user = urlsplit(servers[0]).username
        if self.user:
            # The identity given wins over one written into the URL.
            servers = [re.sub(r"^(\w+://)[^@/]*@", r"\1", s) for s in servers]
            credentials = {"user": self.user, "password": self.password or ""}
            user = self.user
        if user:
            # Replies (requests, JetStream API answers, pulled messages) come to this identity's
            # own inboxes, which no other identity may subscribe to.
            from .identities import inbox_prefix

            credentials["inbox_prefix"] = inbox_prefix(unquote(user))
        self.nc = await nats.connect(
            servers,
            name=self.service,
            **credentials,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            pending_size=64 * 1024 * 1024,
        )
        self.js = self.nc.jetstream(timeout=10, publish_async_max_pending=20_000)
        self.check_server_version()

    @property
    def server_version(self) -> str:
        """The connected server's version as it reports it, e.g. ``2.12.8``."""
        if self.nc is None:
            return ""
        v = self.nc.connected_server_version
        return f"{v.major}.{v.minor}.{v.patch}"

    def check_server_version(self) -> None:
        """Raise RuntimeError naming the minimum when the server is older than MIN_SERVER_VERSION."""
        v = self.nc.connected_server_version
        found = (v.major, v.minor, v.patch)
        if found < MIN_SERVER_VERSION:
            wanted = ".".join(map(str, MIN_SERVER_VERSION))
            raise RuntimeError(
                f"nats-server {self.server_version} at {self.url} is too old: {self.service} needs {wanted} or "
                "later (consumers with several filter subjects); run the release the project pins (make setup)"
            )

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def close(self) -> None:
        """Drain, then close; each within a bound (ecs.stopping), a server gone or stuck included."""
        if self.nc is not None and not self.nc.is_closed:
            await step(self.nc.drain(), f"{self.service}: drain the NATS connection")
            if not self.nc.is_closed:
                await step(self.nc.close(), f"{self.service}: close the NATS connection", within_s=5.0)

    async def declare(self, streams: Sequence[StreamSpec], consumers: Sequence[ConsumerSpec] = ()) -> None:
        """Create or update streams and durable consumers; safe to run from every replica at start.

        A service named in ``ecs.streams.USES`` brings to the declared settings only the streams
        it owns; one it reads, and the dead-letter stream, it creates when missing and otherwise
        leaves as they are (its identity may not change them). A consumer not declared there for
        it is refused here, naming where to declare it, before the broker would refuse it."""
        from .streams import USES

        uses = USES.get(self.service)
        if uses is not None:
            declared = {(c.stream.name, c.name) for c in uses.consumers}
            for c in consumers:
                if (c.stream, c.durable) not in declared:
                    raise RuntimeError(
                        f"consumer {c.durable} on {c.stream} is not declared for {self.service} in "
                        "ecs.streams.USES: its NATS identity may not create it"
                    )
        for spec in (DEAD_LETTERS, *streams):
            config = api.StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=spec.max_age_s,
                max_bytes=spec.max_bytes,
                duplicate_window=spec.duplicate_window_s,
                num_replicas=self.stream_replicas,
            )
            try:
                await self.js.stream_info(spec.name)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(config)
                    continue
                except nats.js.errors.BadRequestError as exc:
                    # Another replica may have created it a moment ago; anything else is a real conflict.
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await self.js.stream_info(spec.name)
                        continue
                    raise RuntimeError(f"cannot create stream {spec.name}: {exc.description}") from exc
            if uses is None or spec in uses.owns:
                # Already there: bring it to what the code declares.
                await self.js.update_stream(config)
        for c in consumers:
            info = await self.js.add_consumer(c.stream, self.consumer_config(c))
            # A server that does not know a field ignores it silently; read back what it took.
            applied = tuple(info.config.filter_subjects or ()) or (
                (info.config.filter_subject,) if info.config.filter_subject else ()
            )
            if sorted(applied) != sorted(c.filter_subjects):
                raise RuntimeError(
                    f"consumer {c.durable} on {c.stream} filters {list(applied) or 'nothing'}, "
                    f"not {list(c.filter_subjects)}: the server does not apply the declared subjects"
                )

    @staticmethod
    def consumer_config(c: ConsumerSpec) -> api.ConsumerConfig:
        many = len(c.filter_subjects) > 1
        return api.ConsumerConfig(
            name=c.durable,
            durable_name=c.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=c.ack_wait_s,
            max_ack_pending=c.max_ack_pending,
            filter_subject=None if many else c.filter_subjects[0],
            filter_subjects=list(c.filter_subjects) if many else None,
        )

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        await self.js.publish(subject, payload, headers=headers)
        PUBLISHED.labels(self.service).inc()

    async def publish_event(self, envelope: Envelope, subject: str | None = None) -> None:
        await self.publish(
            subject or envelope.type,
            envelope.to_bytes(),
            msg_id_headers(envelope.id, envelope.correlation_id),
        )

    async def publish_batch(
        self, items: Sequence[tuple[str, bytes, dict[str, str]]], ack_timeout_s: float = 10.0
    ) -> None:
        """Publish in order without waiting for each ack, then wait for all of them.

        The writes leave in the order given; JetStream deduplicates on Nats-Msg-Id, so a batch that
        is retried after a partial failure does not double anything. Acks lost to a broker restart
        never come: after ack_timeout_s the batch counts as failed, to be retried whole. Sending
        them is bounded by the same time, once for the whole batch: a publisher stalled behind
        too many unacknowledged publishes fails the batch too. (nats-py's own per-publish bound,
        ``wait_stall``, is Python 3.11's ``asyncio.wait_for``, which starts a task for every
        publish: three times the cost of the publish itself.)
        """
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(ack_timeout_s):
                for subject, payload, headers in items:
                    futures.append(await self.js.publish_async(subject, payload, headers=headers))
            done, pending = await asyncio.wait(futures, timeout=ack_timeout_s) if futures else (set(), set())
        except TimeoutError as exc:
            for f in futures:
                f.cancel()
            raise Transient(
                f"publishing stalled: {len(futures)} of {len(items)} sent within {ack_timeout_s:g} s"
            ) from exc
        except (nats.js.errors.TooManyStalledMsgsError, nats.errors.Error, OSError) as exc:
            for f in futures:
                f.cancel()
            raise Transient(f"publishing failed: {_first_line(exc)}") from exc
        for f in pending:
            f.cancel()  # frees its place among the pending publishes
        if pending:
            raise Transient(f"{len(pending)} of {len(items)} publishes not acknowledged within {ack_timeout_s:g} s")
        failed = [f.exception() for f in done if f.exception() is not None]
        if failed:
            raise Transient(f"{len(failed)} of {len(items)} publishes refused: {_first_line(failed[0])}")
        PUBLISHED.labels(self.service).inc(len(items))

    async def dead_letter(self, msg: Msg, reason: str, consumer: str) -> None:
        headers = {
            "Ecs-Reason": reason[:1000],
            "Ecs-Original-Subject": msg.subject,
            "Ecs-Consumer": consumer,
            "Ecs-Service": self.service,
        }
        original_id = (msg.headers or {}).get("Nats-Msg-Id")
        if original_id:
            headers["Nats-Msg-Id"] = f"dl:{consumer}:{original_id}"
        await self.publish(f"{DEAD_LETTER_PREFIX}.{msg.subject}", msg.data, headers)
        DEAD_LETTERED.labels(consumer).inc()
        log.warning(
            "message.dead_lettered",
            subject=msg.subject,
            reason=reason,
            consumer=consumer,
            message_id=original_id,
        )

    async def request(self, subject: str, payload: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any]:
        reply = await self.nc.request(subject, orjson.dumps(payload), timeout=timeout_s)
        return orjson.loads(reply.data)

    async def serve(
        self,
        subject: str,
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    ) -> None:
        """Answer requests on subject; replicas share the load through a queue group."""

        async def on_request(msg: Msg) -> None:
            try:
                answer = await handler(orjson.loads(msg.data))
            except Exception as exc:  # the asker gets the reason instead of a time-out
                answer = {"error": _first_line(exc)}
            await msg.respond(orjson.dumps(answer))

        await self.nc.subscribe(subject, queue=f"{self.service}.{subject}", cb=on_request)


@dataclass
class ConsumerRunner:
    """Fetches batches from one durable pull consumer and hands them to a handler.

    In flight is bounded by batch × fetchers. With more than one fetcher the next batch is
    fetched while the previous one is being handled, so the broker round trip and the acks overlap
    the database work. Acks go out only after the handler returned, i.e. after its database commit;
    an unexpected error in a batch is retried message by message so one poison message cannot hold
    the rest back.
    """

    bus: Bus
    spec: ConsumerSpec
    handle: BatchHandler
    batch: int = 500
    max_deliver: int = 8
    fetch_timeout_s: float = 1.0
    fetchers: int = 1
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _stopping: bool = field(default=False, init=False)
    _subs: list[Any] = field(default_factory=list, init=False)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"consumer:{self.spec.durable}:{i}") for i in range(self.fetchers)
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            await stop_task(task, f"consumer {self.spec.durable}")
        for sub in self._subs:
            # A fetch cancelled mid-way leaves its pull request open, and the connection's drain
            # would wait for it until its timeout (30 s) on every shutdown.
            await step(sub.unsubscribe(), f"consumer {self.spec.durable}: unsubscribe", within_s=5.0)
        self._subs.clear()

    async def _subscribe(self) -> Any:
        return await self.bus.js.pull_subscribe_bind(durable=self.spec.durable, stream=self.spec.stream)

    async def _run(self) -> None:
        sub = None
        while not self._stopping:
            try:
                if sub is None:
                    sub = await self._subscribe()
                    self._subs.append(sub)
                msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout_s)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "consumer.fetch_failed",
                    consumer=self.spec.durable,
                    error=_first_line(exc),
                )
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                continue
            try:
                with BATCH_SECONDS.labels(self.spec.durable).time():
                    await self.process(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not acked, so JetStream redelivers after ack_wait; nothing is lost.
                log.warning(
                    "consumer.settle_failed",
                    consumer=self.spec.durable,
                    error=_first_line(exc),
                )
                await asyncio.sleep(0.5)

    async def process(self, msgs: list[Msg]) -> None:
        try:
            rejected = await self.handle(msgs)
        except Transient as exc:
            await self._retry_later(msgs, exc)
            return
        except Poison as exc:
            if len(msgs) == 1:
                await self._settle(msgs, {0: exc.reason})
                return
            for m in msgs:  # find which one it was
                await self.process([m])
            return
        except Exception as exc:
            if len(msgs) == 1 and refused_input(exc):
                # The database refused what the message says (a value too long for its column,
                # out of range): the same message would be refused on every delivery.
                await self._settle(msgs, {0: f"the database refused it: {db_error_text(exc)}"})
                return
            if len(msgs) == 1:
                await self._failed(msgs[0], exc)
                return
            log.warning(
                "consumer.batch_failed_isolating",
                consumer=self.spec.durable,
                size=len(msgs),
                error=_first_line(exc),
            )
            for m in msgs:
                await self.process([m])
            return
        await self._settle(msgs, rejected)

    async def _settle(self, msgs: list[Msg], rejected: dict[int, str]) -> None:
        for i, reason in rejected.items():
            await self.bus.dead_letter(msgs[i], reason, self.spec.durable)
        acks = [m.ack() for m in msgs]
        for res in await asyncio.gather(*acks, return_exceptions=True):
            if isinstance(res, BaseException):
                # The work is committed and the inbox makes a redelivery harmless.
                log.warning(
                    "consumer.ack_failed",
                    consumer=self.spec.durable,
                    error=_first_line(res),
                )
        PROCESSED.labels(self.spec.durable).inc(len(msgs) - len(rejected))

    async def _retry_later(self, msgs: list[Msg], exc: BaseException) -> None:
        RETRIED.labels(self.spec.durable).inc(len(msgs))
        delivered = max((_delivered(m) for m in msgs), default=1)
        delay = min(30.0, 0.25 * 2 ** (delivered - 1))
        log.warning(
            "consumer.retry_later",
            consumer=self.spec.durable,
            size=len(msgs),
            delay_s=delay,
            error=_first_line(exc),
        )
        for m in msgs:
            with contextlib.suppress(Exception):
                await m.nak(delay=delay)

    async def _failed(self, msg: Msg, exc: BaseException) -> None:
        if _delivered(msg) >= self.max_deliver:
            await self.bus.dead_letter(
                msg,
                f"failed {_delivered(msg)} times: {_first_line(exc)}",
                self.spec.durable,
            )
            with contextlib.suppress(Exception):
                await msg.ack()
            return
        log.exception("consumer.message_failed", consumer=self.spec.durable, subject=msg.subject)
        await self._retry_later([msg], exc)


def _delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
