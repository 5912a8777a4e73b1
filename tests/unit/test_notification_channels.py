"""public-notification's channel rules and the embedded gateway: which channels an alert reaches,
a live channel refusing anything not Actual (recorded by the caller, never written), the
gateway writing each delivery key once, and the retry backoff."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from public_notification.channels import FileGateway, GatewayAdapter, Message, Refused, check_isolation, sign
from public_notification.domain import ChannelKind, next_attempt, reaches, refusal

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def message(key: str, channel_exercise: bool, cap_status: str) -> Message:
    return Message(key, "ch-1", ChannelKind.sms, channel_exercise, cap_status, b"<alert/>", "黄色预警 text")


@pytest.mark.parametrize("channel_exercise", [False, True])
@pytest.mark.parametrize("alert_exercise", [False, True])
def test_an_alert_reaches_only_channels_of_its_own_kind(channel_exercise: bool, alert_exercise: bool):
    assert reaches(channel_exercise, alert_exercise) is (channel_exercise == alert_exercise)


@pytest.mark.parametrize("status", ["Exercise", "Test", "System", "Draft", "actual", ""])
def test_a_live_channel_refuses_anything_not_actual(status: str):
    assert "not 'Actual'" in refusal(False, status)
    with pytest.raises(Refused):
        check_isolation(message("k", False, status))
    assert refusal(False, "Actual") is None
    assert refusal(True, status) is None  # an exercise channel takes exercise messages


async def test_the_live_gateway_adapter_refuses_and_writes_nothing(tmp_path: Path):
    adapter = GatewayAdapter(FileGateway(tmp_path))
    with pytest.raises(Refused):
        await adapter.send(message("a.ch-1.1", False, "Exercise"))
    assert not (tmp_path / "ch-1.jsonl").exists()
    await adapter.send(message("b.ch-1.1", False, "Actual"))
    lines = [json.loads(x) for x in (tmp_path / "ch-1.jsonl").read_text().splitlines()]
    assert [(x["key"], x["status"]) for x in lines] == [("b.ch-1.1", "Actual")]


async def test_the_file_gateway_writes_each_delivery_key_once_even_after_a_restart(tmp_path: Path):
    await GatewayAdapter(FileGateway(tmp_path)).send(message("a.ch-1.1", False, "Actual"))
    restarted = GatewayAdapter(FileGateway(tmp_path))  # a new process reads what is there
    await restarted.send(message("a.ch-1.1", False, "Actual"))
    await restarted.send(message("a.ch-1.2", False, "Actual"))
    keys = [json.loads(x)["key"] for x in (tmp_path / "ch-1.jsonl").read_text().splitlines()]
    assert keys == ["a.ch-1.1", "a.ch-1.2"]


def test_backoff_doubles_and_stops_at_a_minute():
    waits = [(next_attempt(n, T0) - T0).total_seconds() for n in range(1, 10)]
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0]
    assert waits[-1] == 60.0 and all(b >= a for a, b in zip(waits, waits[1:], strict=False))
    assert next_attempt(0, T0) - T0 == timedelta(seconds=0.5)


def test_the_webhook_signature_is_the_gateway_contract_hmac():
    assert (
        sign("k", "1700000000", b"body")
        == "sha256=" + __import__("hmac").new(b"k", b"1700000000.body", "sha256").hexdigest()
    )
