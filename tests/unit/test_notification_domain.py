"""public-notification's pure rules: the alert, statement and rumor machines over every pair,
two-person approval, references, polygons, templates, headlines and the release clocks."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree as ET

import pytest

from ecs import errors
from ecs.vocabulary import Category, Level, Stage
from public_notification.capdoc import cap_errors
from public_notification.domain import (
    RUMOR_TRANSITIONS,
    STATEMENT_TRANSITIONS,
    TRANSITIONS,
    AlertAction,
    AlertStatus,
    Area,
    CapAlert,
    CapStatus,
    Circle,
    Clock,
    ClockKind,
    ClockState,
    Holdings,
    IllegalAlertStep,
    IllegalRumorStep,
    IllegalStatementStep,
    Info,
    MsgType,
    Polygon,
    RumorAction,
    RumorStatus,
    StatementAction,
    StatementKind,
    StatementStatus,
    cap_reference,
    cap_status,
    cap_xml,
    check_approver,
    check_editable,
    check_reference,
    clock_due,
    clock_state,
    clocks_met_by,
    compose_infos,
    headline_en,
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
    """A closed ring of ``n`` points (the first repeated last) that does not cross itself: n - 1
    points around a circle."""
    ring = [
        [31.2 + 0.001 * math.cos(2 * math.pi * i / (n - 1)), 121.4 + 0.001 * math.sin(2 * math.pi * i / (n - 1))]
        for i in range(n - 1)
    ]
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
    assert far.value.extra["field"] == "area.polygon.0"


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


# --- the CAP 1.2 document ---------------------------------------------------------------------------

CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"


def children(element) -> list[tuple[str, str | None]]:
    return [(child.tag.removeprefix(CAP), child.text) for child in element]


def cap_alert(**changes) -> CapAlert:
    base = CapAlert(
        identifier="ECS-2",
        sender="ecs@sh.gov.cn",
        sender_name="Shanghai ECS",
        sent=T0.replace(microsecond=123456),
        status="Actual",
        msg_type=MsgType.Update,
        category=Category.hazmat,
        level=Level.II,
        event="Chemical leak",
        infos=(Info("zh-CN", "危险化学品泄漏", "描述", "关闭门窗"), Info("en-US", "Hazmat", "A leak")),
        area=Area(
            "Bund",
            Circle(31.24, 121.49, 1500),
            Polygon(((31.0, 121.0), (31.0, 121.1), (31.1, 121.1), (31.0, 121.0))),
            (("GB/T 2260", "310101"),),
        ),
        references=cap_reference("ecs@sh.gov.cn", "ECS-1", T0 - timedelta(hours=1)),
        expires=T0 + timedelta(hours=6),
        note="second update",
    )
    return replace(base, **changes)


def test_the_cap_document_has_every_element_in_the_schemas_order():
    document = cap_xml(cap_alert())
    assert document.startswith(
        b"<?xml version='1.0' encoding='utf-8'?>\n<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.2\">"
    )
    assert cap_errors(document) == []
    root = ET.fromstring(document)
    assert root.tag == CAP + "alert"
    assert children(root)[:8] == [
        ("identifier", "ECS-2"),
        ("sender", "ecs@sh.gov.cn"),
        ("sent", "2026-12-01T08:00:00+00:00"),  # seconds, an explicit offset
        ("status", "Actual"),
        ("msgType", "Update"),
        ("scope", "Public"),
        ("note", "second update"),
        ("references", "ecs@sh.gov.cn,ECS-1,2026-12-01T07:00:00+00:00"),
    ]
    zh, en = root.findall(CAP + "info")
    assert [tag for tag, _ in children(root)] == [*(tag for tag, _ in children(root)[:8]), "info", "info"]
    assert children(zh)[:-1] == [
        ("language", "zh-CN"),
        ("category", "CBRNE"),
        ("event", "Chemical leak"),
        ("responseType", "Avoid"),
        ("urgency", "Immediate"),
        ("severity", "Severe"),
        ("certainty", "Observed"),
        ("expires", "2026-12-01T14:00:00+00:00"),
        ("senderName", "Shanghai ECS"),
        ("headline", "危险化学品泄漏"),
        ("description", "描述"),
        ("instruction", "关闭门窗"),
    ]
    area = zh.find(CAP + "area")
    assert children(area)[:3] == [
        ("areaDesc", "Bund"),
        ("polygon", "31.000000,121.000000 31.000000,121.100000 31.100000,121.100000 31.000000,121.000000"),
        ("circle", "31.240000,121.490000 1.500"),  # CAP writes kilometres
    ]
    assert [children(code) for code in area.findall(CAP + "geocode")] == [
        [("valueName", "GB/T 2260"), ("value", "310101")]
    ]
    assert [tag for tag, _ in children(area)] == ["areaDesc", "polygon", "circle", "geocode"]
    assert [tag for tag, _ in children(en)][-3:] == ["headline", "description", "area"]  # no instruction
    assert (en.findtext(CAP + "language"), en.findtext(CAP + "headline")) == ("en-US", "Hazmat")


def test_a_cancel_is_an_all_clear_of_the_past_and_what_is_not_given_is_left_out():
    document = cap_xml(
        cap_alert(msg_type=MsgType.Cancel, note="", references=None, expires=None, area=Area(""), level=Level.IV)
    )
    assert cap_errors(document) == []
    root = ET.fromstring(document)
    assert [tag for tag, _ in children(root)] == [
        "identifier",
        "sender",
        "sent",
        "status",
        "msgType",
        "scope",
        "info",
        "info",
    ]
    info = root.find(CAP + "info")
    assert info.findtext(CAP + "responseType") == "AllClear"
    assert info.findtext(CAP + "urgency") == "Past"
    assert info.findtext(CAP + "severity") == "Minor"
    assert info.find(CAP + "expires") is None
    assert children(info.find(CAP + "area")) == [("areaDesc", "-")]


# --- what each refusal says ------------------------------------------------------------------------


def test_an_illegal_alert_step_names_the_status_the_action_and_what_is_allowed():
    with pytest.raises(IllegalAlertStep) as caught:
        next_status(AlertStatus.draft, AlertAction.approve)
    assert caught.value.detail == "cannot 'approve' an alert that is 'draft'; allowed: submit, withdraw"
    assert caught.value.extra == {"current": "draft", "action": "approve", "allowed": ["submit", "withdraw"]}
    with pytest.raises(IllegalAlertStep) as caught:
        next_status(AlertStatus.published, AlertAction.submit)
    assert caught.value.detail == (
        "cannot 'submit' an alert that is 'published'; allowed: supersede, cancel, expire;"
        " a published alert changes only by a new Update or Cancel"
    )
    with pytest.raises(IllegalAlertStep) as caught:
        next_status(AlertStatus.expired, AlertAction.publish)
    assert caught.value.detail == "cannot 'publish' an alert that is 'expired'; allowed: none, the alert is finished"
    assert caught.value.extra["allowed"] == []


def test_an_illegal_statement_step_names_the_status_the_action_and_what_is_allowed():
    with pytest.raises(IllegalStatementStep) as caught:
        next_statement_status(StatementStatus.draft, StatementAction.approve)
    assert caught.value.detail == "cannot 'approve' a statement that is 'draft'; allowed: submit, withdraw"
    assert caught.value.extra == {"current": "draft", "action": "approve", "allowed": ["submit", "withdraw"]}
    with pytest.raises(IllegalStatementStep) as caught:
        next_statement_status(StatementStatus.published, StatementAction.withdraw)
    assert caught.value.detail == (
        "cannot 'withdraw' a statement that is 'published'; allowed: none, the statement is final"
    )


def test_an_illegal_rumor_step_names_the_status_the_action_and_what_is_allowed():
    with pytest.raises(IllegalRumorStep) as caught:
        next_rumor_status(RumorStatus.unverified, RumorAction.close)
    assert caught.value.detail == "cannot 'close' a rumor that is 'unverified'; allowed: confirm, refute, answer"
    assert caught.value.extra == {
        "current": "unverified",
        "action": "close",
        "allowed": ["confirm", "refute", "answer"],
    }
    with pytest.raises(IllegalRumorStep) as caught:
        next_rumor_status(RumorStatus.closed, RumorAction.close)
    assert caught.value.detail == "cannot 'close' a rumor that is 'closed'; allowed: none, the rumor is closed"


def test_the_two_person_refusal_names_the_approver_field_and_what_was_approved():
    with pytest.raises(errors.Forbidden) as caught:
        check_approver("officer-li", "officer-li")
    assert caught.value.detail == "the author of the alert cannot approve it; a second person must"
    assert caught.value.extra == {"field": "approver"}
    assert caught.value.title == "Forbidden"  # not "Missing role": the approver may hold every role
    with pytest.raises(errors.Forbidden, match="^the author of the official statement cannot"):
        check_approver("officer-li", "officer-li", "official statement")


def test_an_edit_refusal_says_what_to_do_instead():
    with pytest.raises(errors.Conflict) as caught:
        check_editable(AlertStatus.published)
    assert caught.value.detail == "a published alert cannot be edited: issue an Update that references it"
    with pytest.raises(errors.Conflict) as caught:
        check_editable(AlertStatus.approved)
    assert caught.value.detail == "an alert that is 'approved' cannot be edited; only a draft can"


def test_a_reference_refusal_names_the_references_field_and_why():
    cases = [
        (MsgType.Alert, AlertStatus.published, True, "an Alert references nothing; use msg_type Update or Cancel"),
        (MsgType.Update, None, True, "an Update needs a live alert to reference"),
        (MsgType.Cancel, None, True, "a Cancel needs a live alert to reference"),
        (
            MsgType.Cancel,
            AlertStatus.withdrawn,
            True,
            "a Cancel must reference a published alert; the referenced one is 'withdrawn'",
        ),
        (MsgType.Cancel, AlertStatus.published, False, "the referenced alert is about another incident"),
        (
            MsgType.Update,
            AlertStatus.expired,
            True,
            "an Update must reference a published alert; the referenced one is 'expired'",
        ),
    ]
    for msg_type, referenced, same, detail in cases:
        with pytest.raises(errors.AppError) as caught:
            check_reference(msg_type, referenced, same)
        assert caught.value.detail == detail
        assert caught.value.extra == {"field": "references"}


def test_a_polygon_spans_the_whole_of_wgs84_and_is_written_as_space_separated_pairs():
    world = parse_polygon([[-90, -180], [90, -180], [90, 180], [-90, -180]])
    assert world.cap() == "-90.000000,-180.000000 90.000000,-180.000000 90.000000,180.000000 -90.000000,-180.000000"
    for lat, lon in [(-90.5, 0.0), (90.5, 0.0), (0.0, -180.5), (0.0, 180.5)]:
        with pytest.raises(errors.InvalidInput, match="outside WGS-84") as caught:
            parse_polygon([[1.0, 1.0], [lat, lon], [1.0, 0.0], [1.0, 1.0]])
        assert caught.value.extra["field"] == "area.polygon.1"


def test_a_bad_polygon_names_the_field_it_came_from():
    with pytest.raises(errors.InvalidInput) as caught:
        parse_polygon(square(101), "alert.area")
    assert caught.value.extra == {"field": "alert.area"}
    with pytest.raises(errors.InvalidInput) as caught:
        parse_polygon([[0.0, 0.0], [0.0, 1.0, 2.0], [1.0, 1.0], [0.0, 0.0]], "alert.area")
    assert caught.value.detail == "point 1 must be [lat, lon]"
    assert caught.value.extra == {"field": "alert.area.1"}
    with pytest.raises(errors.InvalidInput) as caught:
        parse_polygon(square(5)[:-1] + [[0.0, 0.0]], "alert.area")
    assert caught.value.detail == "the polygon is not closed: its last point must repeat its first"
    assert caught.value.extra == {"field": "alert.area"}


def test_a_bow_tie_area_is_refused_naming_the_edges_that_meet():
    bow_tie = [[31.0, 121.0], [31.1, 121.1], [31.0, 121.1], [31.1, 121.0], [31.0, 121.0]]
    with pytest.raises(errors.InvalidInput) as caught:
        parse_polygon(bow_tie)
    assert caught.value.detail == (
        "the polygon crosses itself: its edge from point 0 and its edge from point 2 meet; "
        "give the points in order around the area"
    )
    assert caught.value.extra == {"field": "area.polygon"}
    flat = [[31.0, 121.0], [31.1, 121.0], [31.2, 121.0], [31.0, 121.0]]
    with pytest.raises(errors.InvalidInput) as caught:
        parse_polygon(flat)
    assert caught.value.detail == "the polygon has no area: its points are on one line"
    assert caught.value.extra == {"field": "area.polygon"}


def test_the_english_headline_names_the_category_in_words():
    assert headline_en(Level.II, Category.gas_leak) == "Gas leak Orange Warning (level II)"
    assert headline_en(Level.IV, Category.public_security) == "Public security Blue Warning (level IV)"


def test_a_template_refusal_names_the_template_and_each_placeholder():
    with pytest.raises(errors.InvalidInput) as caught:
        render("{0} at {a.b}", {"0": "x"})
    assert caught.value.detail == "template has placeholders that are not plain names: 0, a.b"
    assert caught.value.extra == {"field": "template"}
    with pytest.raises(errors.InvalidInput) as caught:
        render("{x} and {y}", {})
    assert caught.value.detail == "template needs x, y, which the incident does not provide: give them in values"
    assert caught.value.extra == {"field": "values.x", "missing": ["x", "y"], "template": "template"}


def test_compose_uses_the_plans_chinese_template_and_names_the_template_a_value_is_missing_from():
    templates = {"cap_alert": "Fire at {address}", "cap_alert_zh": "{address}{category_zh}"}
    zh, en = compose_infos(templates, {"address": "外滩"}, Level.III, Category.fire)
    assert (zh.description, en.description) == ("外滩火灾", "Fire at 外滩")
    with pytest.raises(errors.InvalidInput) as caught:
        compose_infos({"cap_alert": "Fire", "cap_alert_zh": "{shelter}"}, {}, Level.III, Category.fire)
    assert caught.value.extra["template"] == "cap_alert_zh"
    with pytest.raises(errors.InvalidInput) as caught:
        compose_infos({"cap_alert": "Fire at {address}", "cap_alert_zh": "火"}, {}, Level.III, Category.fire)
    assert caught.value.extra["template"] == "cap_alert"


def test_compose_without_an_english_template_lists_what_the_plan_has():
    with pytest.raises(errors.InvalidInput) as caught:
        compose_infos({"official_statement": "x", "cap_alert_zh": "y"}, {}, Level.II, Category.fire)
    assert caught.value.detail == (
        "the response plan has no cap_alert template for this level (it has: cap_alert_zh, official_statement);"
        " write the text by hand"
    )
    assert caught.value.extra == {"field": "description_en"}
    with pytest.raises(errors.InvalidInput, match=r"\(it has: none\)"):
        compose_infos({}, {}, Level.II, Category.fire)


def test_a_clock_met_at_its_due_time_is_met_and_due_soon_starts_exactly_at_the_warning():
    due = T0 + timedelta(hours=5)
    assert clock_state(Clock("INC-1", ClockKind.first_information, T0, due, met_at=due), due, 3600) is ClockState.met
    clock = Clock("INC-1", ClockKind.first_information, T0, due)
    assert clock_state(clock, due - timedelta(hours=1), 3600) is ClockState.due_soon
    assert clock_state(clock, due - timedelta(hours=1, microseconds=1), 3600) is ClockState.running
