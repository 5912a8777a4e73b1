"""The shared machinery intake brought to libs/: the gateway v1 signature (``ecs.signing``) and the
micro-batcher every alarm goes through (``ecs.batching``)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest

from ecs import signing
from ecs.batching import MicroBatcher
from ecs.errors import Transient
from ecs.gateway_client import signature, signed_headers

SECRET = "gw-secret-0123456789"


def documented(secret: str, timestamp: str, body: bytes) -> str:
    """DESIGN §7, written out independently of the code under test."""
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


# --- ecs.signing --------------------------------------------------------------------------------


def test_the_signature_is_the_documented_hmac():
    body = b'{"alarm_id": "a-1"}'
    assert signing.sign(SECRET, "1700000000", body) == documented(SECRET, "1700000000", body)
    assert signing.sign(SECRET.encode(), "1700000000", body) == documented(SECRET, "1700000000", body)
    assert signature is signing.sign  # the client gateway teams copy is the same function


def test_a_signature_matches_only_its_secret_timestamp_and_body():
    body = b'{"alarm_id": "a-1"}'
    good = documented(SECRET, "1700000000", body)
    assert signing.matches(SECRET, "1700000000", body, good)
    assert signing.matches(SECRET, "1700000000", body, "  " + good.upper().replace("SHA256=", "sha256=") + " ")
    assert not signing.matches(SECRET + "x", "1700000000", body, good)
    assert not signing.matches(SECRET, "1700000001", body, good)
    assert not signing.matches(SECRET, "1700000000", body + b" ", good)
    assert not signing.matches(SECRET, "1700000000", body, good.removeprefix("sha256="))


def test_signed_headers_carry_the_gateway_the_time_and_the_signature():
    body = b"{}"
    headers = signed_headers("gw-x", SECRET, body, now=1_700_000_000.9)
    assert headers == {
        "Content-Type": "application/json",
        "X-Gateway-Id": "gw-x",
        "X-Timestamp": "1700000000",
        "X-Signature": documented(SECRET, "1700000000", body),
    }


# --- ecs.batching -------------------------------------------------------------------------------


class Recorder:
    """A flush that records its batches and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.fail_with: Exception | None = None
        self.short = False

    async def __call__(self, items: list[int]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        results = [f"r{i}" for i in items]
        return results[:-1] if self.short else results


async def started(flush: Recorder, max_batch: int = 500, **kw: object) -> MicroBatcher[int, str]:
    batcher: MicroBatcher[int, str] = MicroBatcher(flush, max_batch, name="test-batcher", **kw)  # type: ignore[arg-type]
    await batcher.start()
    return batcher


async def test_items_arriving_together_share_one_flush_and_each_gets_its_result():
    flush = Recorder()
    batcher = await started(flush)
    try:
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), batcher.submit_many([3, 4]))
        assert results == ["r1", "r2", ["r3", "r4"]]
        assert flush.batches == [[1, 2, 3, 4]]
    finally:
        await batcher.stop()


async def test_a_lone_item_goes_through_at_once():
    flush = Recorder()
    batcher = await started(flush)
    try:
        assert await batcher.submit(7) == "r7"
        assert await batcher.submit(8) == "r8"
        assert flush.batches == [[7], [8]]
    finally:
        await batcher.stop()


async def test_what_arrives_during_a_flush_waits_for_the_next_batch_of_at_most_max_batch():
    flush = Recorder()
    flush.release.clear()
    batcher = await started(flush, max_batch=3)
    try:
        first = asyncio.ensure_future(batcher.submit(0))
        await flush.entered.wait()
        rest = asyncio.ensure_future(batcher.submit_many(list(range(1, 8))))
        flush.release.set()
        assert await first == "r0"
        assert await rest == [f"r{i}" for i in range(1, 8)]
        assert flush.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    finally:
        await batcher.stop()


async def test_a_failed_flush_fails_its_batch_only_with_the_mapped_error():
    flush = Recorder()
    batcher = await started(flush, failure=lambda exc: Transient(f"mapped: {exc}"))
    try:
        flush.fail_with = RuntimeError("disk on fire")
        with pytest.raises(Transient, match="mapped: disk on fire"):
            await batcher.submit(1)
        with pytest.raises(Transient):
            await batcher.submit_many([2, 3])
        flush.fail_with = None
        assert await batcher.submit(4) == "r4"  # the batcher goes on
    finally:
        await batcher.stop()


async def test_a_flush_error_reaches_the_submitter_as_it_is_by_default():
    flush = Recorder()
    flush.fail_with = ValueError("bad item")
    batcher = await started(flush)
    try:
        with pytest.raises(ValueError, match="bad item"):
            await batcher.submit(1)
    finally:
        await batcher.stop()


async def test_a_flush_that_miscounts_its_results_fails_its_batch():
    flush = Recorder()
    flush.short = True
    batcher = await started(flush)
    try:
        with pytest.raises(RuntimeError, match="2 results for 3 items"):
            await batcher.submit_many([1, 2, 3])
    finally:
        await batcher.stop()


async def test_stopping_refuses_what_is_in_flight_or_waiting_as_transient():
    flush = Recorder()
    flush.release.clear()
    batcher = await started(flush, max_batch=1)
    in_flight = asyncio.ensure_future(batcher.submit(1))
    waiting = asyncio.ensure_future(batcher.submit(2))
    await flush.entered.wait()
    await batcher.stop()
    for fut in (in_flight, waiting):
        with pytest.raises(Transient, match="test-batcher is shutting down"):
            await fut


def test_a_batch_holds_at_least_one_item():
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), 0)


def test_a_signature_with_a_character_beyond_ascii_is_simply_not_the_signature():
    """hmac.compare_digest refuses non-ASCII text: this was a 500 before authentication."""
    body = b'{"alarm_id":"x"}'
    assert not signing.matches(SECRET, "1700000000", body, "sha256=é")
    assert not signing.matches(SECRET, "1700000000", body, "sha256=" + "é" * 64)


GOOD_ALARM = {
    "alarm_id": "A-1",
    "received_at": "2026-05-01T08:30:00+08:00",
    "category": "fire",
    "location": {"lat": 31.2, "lon": 121.4},
    "description": "smoke",
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"received_at": 1796153899}, ("received_at",)),
        ({"received_at": "1796153899"}, ("received_at",)),
        ({"location": {"lat": 31.2, "lon": 121.4, "accuracy_m": True}}, ("location", "accuracy_m")),
        ({"location": {"lat": 31.2, "lon": 121.4, "accuracy_m": "20"}}, ("location", "accuracy_m")),
    ],
    ids=["received_at a number", "received_at digits", "accuracy_m true", "accuracy_m text"],
)
def test_the_gateway_contract_takes_times_as_rfc3339_text_and_numbers_as_numbers(change, field):
    from pydantic import ValidationError

    from ecs.contracts import GatewayAlarm

    GatewayAlarm.model_validate({**GOOD_ALARM, "location": {**GOOD_ALARM["location"], "accuracy_m": 20}})
    with pytest.raises(ValidationError) as caught:
        GatewayAlarm.model_validate({**GOOD_ALARM, **change})
    assert [e["loc"] for e in caught.value.errors()] == [field]


@pytest.mark.parametrize(
    "perimeter",
    [
        {"kind": "circle", "lat": 31, "lon": 121, "radius_m": True},
        {"kind": "circle", "lat": "31.2", "lon": "121.4", "radius_m": "100"},
        {"kind": "polygon", "points": [[True, 121], [31.1, 121], [31, 121.1]]},
        {"kind": "polygon", "points": [["31", 121], [31.1, 121], [31, 121.1]]},
    ],
    ids=["radius true", "numbers as text", "a point's lat true", "a point's lat text"],
)
def test_a_perimeter_takes_numbers_only(perimeter):
    """``true`` was stored as a 1 m circle, or a corner at latitude 1: a cordon from 1°N to 31°N."""
    from pydantic import ValidationError

    from incident_intake.api import PerimeterChange

    PerimeterChange.model_validate(
        {"version": 2, "perimeter": {"kind": "circle", "lat": 31, "lon": 121, "radius_m": 100}}
    )
    with pytest.raises(ValidationError):
        PerimeterChange.model_validate({"version": 2, "perimeter": perimeter})
