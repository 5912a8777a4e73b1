"""public-notification's channel rules and the embedded gateway: which channels an alert reaches,
a live channel refusing anything not Actual (recorded by the caller, never written), the
gateway writing each delivery key once, the retry backoff; which targets an SMS or a cell
broadcast carries (or why it is skipped), and what a statement looks like on a channel."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from public_notification.channels import (
    FileGateway,
    GatewayAdapter,
    Message,
    Refused,
    check_isolation,
    sign,
    statement_document,
    statement_text,
)
from public_notification.domain import (
    ChannelKind,
    DeliveryPlan,
    DeliveryStatus,
    Reach,
    Target,
    TargetIndex,
    next_attempt,
    plan_deliveries,
    reach_of_area,
    reach_of_perimeter,
    reaches,
    refusal,
)

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


# --- area targeting of SMS and cell broadcast, statements on the channels ------------------------

CHANNELS = [
    ("hook", ChannelKind.webhook),
    ("sms", ChannelKind.sms),
    ("cb", ChannelKind.cell_broadcast),
    ("post", ChannelKind.social),
]


def test_sms_and_cell_broadcast_carry_their_kinds_of_target_inside_and_the_others_none():
    inside = [("c-2", "cell"), ("s-1", "subscribers"), ("c-1", "cell"), ("d-1", "district"), ("c-1", "cell")]
    plans = {p.channel_id: p for p in plan_deliveries(CHANNELS, inside, "the alert's area")}
    assert plans["cb"] == DeliveryPlan("cb", DeliveryStatus.pending, ("c-1", "c-2"))
    assert plans["sms"] == DeliveryPlan("sms", DeliveryStatus.pending, ("c-1", "c-2", "d-1", "s-1"))
    assert plans["hook"] == DeliveryPlan("hook", DeliveryStatus.pending) == replace(plans["post"], channel_id="hook")


def test_a_channel_with_no_target_inside_or_no_area_is_skipped_saying_why():
    plans = {p.channel_id: p for p in plan_deliveries(CHANNELS, [("s-1", "subscribers")], "the alert's area")}
    assert plans["cb"].status is DeliveryStatus.skipped and plans["cb"].targets == ()
    assert plans["cb"].reason == "cell_broadcast: no target (cell) inside the alert's area"
    assert plans["sms"].targets == ("s-1",) and plans["post"].status is DeliveryStatus.pending
    no_area = {p.channel_id: p for p in plan_deliveries(CHANNELS, None, "no perimeter")}
    assert {k: p.status for k, p in no_area.items()} == {
        "hook": DeliveryStatus.pending,
        "sms": DeliveryStatus.skipped,
        "cb": DeliveryStatus.skipped,
        "post": DeliveryStatus.pending,
    }
    assert no_area["sms"].reason == "sms: no area to target (no perimeter)"


def test_an_alert_area_and_an_intake_perimeter_become_closed_reaches():
    assert reach_of_area({"circle": [31.2, 121.4, 500], "polygon": None}) == Reach(circle=(31.2, 121.4, 500))
    square = [[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]]
    assert reach_of_area({"circle": None, "polygon": square}).ring == ((0, 0), (0, 1), (1, 1), (1, 0), (0, 0))
    assert reach_of_area({"description": "", "circle": None, "polygon": None}) is None
    open_ring = {"kind": "polygon", "points": square[:-1]}  # intake stores its ring open
    assert reach_of_perimeter(open_ring).ring == ((0, 0), (0, 1), (1, 1), (1, 0), (0, 0))
    circle = {"kind": "circle", "lat": 31.2, "lon": 121.4, "radius_m": 300}
    assert reach_of_perimeter(circle) == Reach(circle=(31.2, 121.4, 300))
    assert reach_of_perimeter(None) is None
    index = TargetIndex([Target("in", "cell", 0.5, 0.5), Target("out", "cell", 1.5, 0.5)])
    assert [t.id for t in index.within(reach_of_perimeter(open_ring))] == ["in"]


async def test_an_exercise_statement_on_a_live_channel_is_refused_and_never_written(tmp_path: Path):
    statement = SimpleNamespace(
        id="st-1",
        incident_id="inc-1",
        kind="information",
        published_at=T0,
        text_zh="通报",
        text_en="statement",
        answers=[],
    )
    body = statement_document(statement, "Exercise")
    assert json.loads(body)["status"] == "Exercise" and json.loads(body)["text"]["en-US"] == "statement"
    gateway = FileGateway(tmp_path)
    live = Message("k", "live", ChannelKind.sms, False, "Exercise", body, statement_text(ChannelKind.sms, "通报", "x"))
    with pytest.raises(Refused):
        await GatewayAdapter(gateway).send(live)
    assert not gateway.path("live").exists()
    assert statement_text(ChannelKind.sms, "通报", "statement") == "通报"
    assert statement_text(ChannelKind.social, "通报", "statement") == "通报\n\nstatement"


def test_only_a_polygon_perimeter_of_three_points_or_more_is_a_ring():
    triangle = [[0, 0], [0, 1], [1, 1]]
    assert reach_of_perimeter({"kind": "polygon", "points": triangle}).ring == ((0, 0), (0, 1), (1, 1), (0, 0))
    assert reach_of_perimeter({"kind": "polygon", "points": triangle[:2]}) is None
    assert reach_of_perimeter({"kind": "line", "points": triangle}) is None


def test_a_circle_reach_gives_the_targets_inside_the_circle_and_an_empty_reach_none():
    index = TargetIndex([Target("in", "cell", 0.5, 0.5), Target("out", "cell", 1.5, 0.5)])
    assert [t.id for t in index.within(Reach(circle=(0.5, 0.5, 1000)))] == ["in"]
    assert index.within(Reach()) == []


def test_a_skip_lists_every_kind_of_target_the_channel_reaches():
    plans = plan_deliveries([("sms", ChannelKind.sms)], [("x", "other")], "the alert's area")
    assert plans[0].reason == "sms: no target (cell, district, subscribers) inside the alert's area"
