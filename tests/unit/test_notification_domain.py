"""public-notification's pure rules: the alert, statement and rumor machines over every pair,
two-person approval, references, polygons, templates, headlines and the release clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ecs import errors
from ecs.vocabulary import Category, Level, Stage
from public_notification.domain import (
    RUMOR_TRANSITIONS,
    STATEMENT_TRANSITIONS,
    TRANSITIONS,
    AlertAction,
    AlertStatus,
    CapStatus,
    Clock,
    ClockKind,
    ClockState,
    Holdings,
    IllegalAlertStep,
    IllegalRumorStep,
    IllegalStatementStep,
    MsgType,
    RumorAction,
    RumorStatus,
    StatementAction,
    StatementKind,
    StatementStatus,
    cap_status,
    check_approver,
    check_editable,
    check_reference,
    clock_due,
    clock_state,
    clocks_met_by,
    compose_infos,
    headline_zh,
    next_rumor_status,
    next_statement_status,
    next_status,
    parse_polygon,
    render,
    severity,
    starts_clocks,
    unsettled_reasons,
    urgency,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", list(AlertStatus))
@pytest.mark.parametrize("action", list(AlertAction))
def test_alert_machine_over_every_pair(status: AlertStatus, action: AlertAction):
    if (status, action) in TRANSITIONS:
        assert next_status(status, action) is TRANSITIONS[(status, action)]
    else:
        with pytest.raises(IllegalAlertStep) as caught:
            next_status(status, action)
        assert caught.value.status == 409
        assert f"'{action}'" in caught.value.detail


def test_only_an_approved_alert_is_published_and_a_published_one_only_ends():
    assert {s for (s, a) in TRANSITIONS if a is AlertAction.publish} == {AlertStatus.approved}
    assert {a for (s, a) in TRANSITIONS if s is AlertStatus.published} == {
        AlertAction.supersede,
        AlertAction.cancel,
        AlertAction.expire,
    }
    with pytest.raises(IllegalAlertStep, match="Update or Cancel"):
        next_status(AlertStatus.published, AlertAction.submit)


@pytest.mark.parametrize("status", list(StatementStatus))
@pytest.mark.parametrize("action", list(StatementAction))
def test_statement_machine_over_every_pair(status: StatementStatus, action: StatementAction):
    if (status, action) in STATEMENT_TRANSITIONS:
        assert next_statement_status(status, action) is STATEMENT_TRANSITIONS[(status, action)]
    else:
        with pytest.raises(IllegalStatementStep):
            next_statement_status(status, action)


@pytest.mark.parametrize("status", list(RumorStatus))
@pytest.mark.parametrize("action", list(RumorAction))
def test_rumor_machine_over_every_pair(status: RumorStatus, action: RumorAction):
    if (status, action) in RUMOR_TRANSITIONS:
        assert next_rumor_status(status, action) is RUMOR_TRANSITIONS[(status, action)]
    else:
        with pytest.raises(IllegalRumorStep):
            next_rumor_status(status, action)


def test_a_refuted_rumor_closes_only_after_it_was_answered():
    with pytest.raises(IllegalRumorStep, match="allowed: answer"):
        next_rumor_status(RumorStatus.refuted, RumorAction.close)
    answered = next_rumor_status(RumorStatus.refuted, RumorAction.answer)
    assert next_rumor_status(answered, RumorAction.close) is RumorStatus.closed


def test_the_author_cannot_approve_their_own_alert():
    with pytest.raises(errors.Forbidden) as caught:
        check_approver("officer-li", "officer-li")
    assert caught.value.status == 403
    check_approver("officer-li", "commander-wang")


def test_only_a_draft_is_edited_and_a_published_alert_asks_for_an_update():
    check_editable(AlertStatus.draft)
    with pytest.raises(errors.Conflict, match="issue an Update"):
        check_editable(AlertStatus.published)
    for status in set(AlertStatus) - {AlertStatus.draft, AlertStatus.published}:
        with pytest.raises(errors.Conflict):
            check_editable(status)


@pytest.mark.parametrize("msg_type", [MsgType.Update, MsgType.Cancel])
def test_an_update_or_cancel_needs_a_live_alert_of_the_same_incident(msg_type: MsgType):
    check_reference(msg_type, AlertStatus.published)
    with pytest.raises(errors.Conflict, match="needs a live alert"):
        check_reference(msg_type, None)
    for status in set(AlertStatus) - {AlertStatus.published}:
        with pytest.raises(errors.Conflict, match="must reference a published alert"):
            check_reference(msg_type, status)
    with pytest.raises(errors.InvalidInput, match="another incident"):
        check_reference(msg_type, AlertStatus.published, same_incident=False)


def test_an_alert_references_nothing():
    check_reference(MsgType.Alert, None)
    with pytest.raises(errors.InvalidInput):
        check_reference(MsgType.Alert, AlertStatus.published)


def square(n: int) -> list[list[float]]:
    ring = [[31.2 + 0.001 * (i % 2), 121.4 + 0.001 * i] for i in range(n - 1)]
    return [*ring, ring[0]]


def test_a_polygon_is_closed_and_has_4_to_100_points():
    assert len(parse_polygon(square(4)).points) == 4
    assert len(parse_polygon(square(100)).points) == 100
    assert parse_polygon(square(4)).cap().count(",") == 4
    with pytest.raises(errors.InvalidInput, match="at least 4") as few:
        parse_polygon(square(3))
    assert few.value.extra["field"] == "area.polygon"
    with pytest.raises(errors.InvalidInput, match="at most 100"):
        parse_polygon(square(101))
    with pytest.raises(errors.InvalidInput, match="not closed"):
        parse_polygon(square(5)[:-1] + [[0.0, 0.0]])
    with pytest.raises(errors.InvalidInput, match="outside WGS-84") as far:
        parse_polygon([[91.0, 0.0], [1.0, 1.0], [1.0, 0.0], [91.0, 0.0]])
    assert far.value.extra["field"] == "area.polygon[0]"


def test_a_template_variable_the_incident_lacks_is_named():
    assert render("at {address}, call {hotline}", {"address": "Nanjing Rd 1", "hotline": "12345"}).endswith("12345")
    with pytest.raises(errors.InvalidInput) as caught:
        render("go to {shelter}, call {hotline}", {"hotline": "12345", "shelter": None})
    assert caught.value.extra["missing"] == ["shelter"]
    assert caught.value.extra["field"] == "values.shelter"  # where the request may give it
    assert "shelter" in caught.value.detail


def test_compose_gives_a_chinese_and_an_english_info_with_the_colour():
    values = {
        "address": "南京东路1号",
        "time": "08:00",
        "evacuation_radius_m": 400,
        "hotline": "12345",
        "shelter": "S1",
    }
    zh, en = compose_infos(
        {"cap_alert": "Fire at {address}; keep {evacuation_radius_m} m away."}, values, Level.II, Category.fire
    )
    assert (zh.language, en.language) == ("zh-CN", "en-US")
    assert zh.headline == "火灾橙色预警[Ⅱ级/严重]"
    assert "南京东路1号" in zh.description and "400" in zh.description
    assert en.description == "Fire at 南京东路1号; keep 400 m away."
    assert "Orange" in en.headline
    with pytest.raises(errors.InvalidInput, match="no cap_alert template"):
        compose_infos({"official_statement": "x"}, values, Level.II, Category.fire)


def test_level_gives_severity_urgency_and_the_national_headline():
    assert [severity(level) for level in Level] == ["Extreme", "Severe", "Moderate", "Minor"]
    assert [urgency(level) for level in Level] == ["Immediate", "Immediate", "Expected", "Expected"]
    assert headline_zh(Level.III, Category.flood) == "洪涝黄色预警[Ⅲ级/较重]"


def test_an_exercise_is_never_actual():
    assert cap_status(True) is CapStatus.Exercise
    assert cap_status(False) is CapStatus.Actual


def test_the_clocks_run_for_level_ii_and_i_only():
    assert [starts_clocks(level) for level in Level] == [True, True, False, False]


def test_clock_states_from_start_to_missed():
    due = clock_due(ClockKind.first_information, T0, 5 * 3600, 24 * 3600)
    assert due == T0 + timedelta(hours=5)
    assert clock_due(ClockKind.press_conference, T0, 5 * 3600, 24 * 3600) == T0 + timedelta(hours=24)
    clock = Clock("INC-1", ClockKind.first_information, T0, due)
    assert clock_state(clock, T0 + timedelta(hours=3), 3600) is ClockState.running
    assert clock_state(clock, T0 + timedelta(hours=4, minutes=1), 3600) is ClockState.due_soon
    assert clock_state(clock, due, 3600) is ClockState.missed
    met = Clock("INC-1", ClockKind.first_information, T0, due, met_at=T0 + timedelta(hours=2))
    assert clock_state(met, T0 + timedelta(hours=9), 3600) is ClockState.met
    late = Clock("INC-1", ClockKind.first_information, T0, due, met_at=due + timedelta(seconds=1))
    assert clock_state(late, due + timedelta(hours=1), 3600) is ClockState.missed


def test_which_statements_meet_which_clocks():
    assert clocks_met_by(StatementKind.information) == (ClockKind.first_information,)
    assert clocks_met_by(StatementKind.rebuttal) == (ClockKind.first_information,)
    assert set(clocks_met_by(StatementKind.press_conference)) == set(ClockKind)


def test_settled_only_in_aftermath_with_nothing_live_or_open():
    done = Holdings(
        Stage.aftermath,
        (
            (AlertStatus.updated, MsgType.Alert),
            (AlertStatus.cancelled, MsgType.Update),
            (AlertStatus.withdrawn, MsgType.Alert),
            (AlertStatus.published, MsgType.Cancel),
        ),
        (StatementStatus.published, StatementStatus.withdrawn),
        (RumorStatus.closed,),
    )
    assert unsettled_reasons(done) == []
    assert unsettled_reasons(Holdings(Stage.opinion_control)) == [
        "the incident is in opinion_control, not yet in aftermath"
    ]
    live = Holdings(
        Stage.aftermath,
        ((AlertStatus.published, MsgType.Update), (AlertStatus.approved, MsgType.Cancel)),
        (StatementStatus.approved,),
        (RumorStatus.answered,),
    )
    assert unsettled_reasons(live) == [
        "1 alert(s) still live: publish the all-clear",
        "1 alert(s) unpublished",
        "1 statement(s) not published",
        "1 rumor(s) open",
    ]
