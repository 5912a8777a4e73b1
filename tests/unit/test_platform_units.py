"""Platform pieces without a network: log masking, the envelope, the gateway signature check and
operator tokens."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import jwt
import pytest
import structlog

from ecs.auth import Principal, Role, TokenVerifier
from ecs.bus import msg_id_headers
from ecs.envelope import Envelope, make_event
from ecs.errors import Forbidden, Unauthorized
from ecs.logs import configure_logging, get_logger, mask_number
from incident_intake.gateways import GatewayRegistry

# --- log masking ----------------------------------------------------------------------------


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict]]]:
    configure_logging("incident-intake", "DEBUG", json=True)

    def read() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    yield read
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


RAW = ["13912345678", "+8613912345678", "021-62345678", "02162345678", "31010119900307123X", "310101199003071234"]


def test_caller_numbers_and_id_numbers_never_reach_the_log_raw(log_lines):
    log = get_logger("test")
    log.info("alarm.received", number="13912345678", caller={"number": "+8613912345678", "name": "Zhang San"})
    log.warning("alarm.note", detail="caller 021-62345678 says the ID on the card is 31010119900307123X")
    log.info("alarm.batch", callers=[{"number": "02162345678"}, "310101199003071234"], phone="13912345678")
    lines = log_lines()
    assert len(lines) == 3
    text = json.dumps(lines, ensure_ascii=False)
    for raw in RAW:
        assert raw not in text
    assert "Zhang San" not in text
    first, second, third = lines
    assert first["number"] == "139******78"
    assert first["caller"]["number"] == mask_number("+8613912345678")
    assert "caller 021" in second["detail"] and "says the ID on the card is" in second["detail"]
    assert third["callers"][1] == mask_number("310101199003071234")
    assert all(line["service"] == "incident-intake" for line in lines)


def test_masking_leaves_other_numbers_alone(log_lines):
    get_logger("test").info("alarm.linked", alarm_count=12345678901234, casualties=3, incident_id="a1b2c3", seq="42")
    (line,) = log_lines()
    assert (line["alarm_count"], line["casualties"], line["incident_id"], line["seq"]) == (
        12345678901234,
        3,
        "a1b2c3",
        "42",
    )


def test_a_mobile_number_written_in_groups_is_masked_in_free_text(log_lines):
    get_logger("test").info("alarm.note", detail="call me back on 139 1234 5678 or 139-1234-5678")
    (line,) = log_lines()
    assert "1234 5678" not in line["detail"] and "1234-5678" not in line["detail"]


def test_mask_number_keeps_only_the_ends():
    assert mask_number("13912345678") == "139******78"
    assert mask_number("110") == "***"
    assert mask_number("") == ""
    assert len(mask_number("31010119900307123X")) == 18


def test_context_ids_travel_with_every_line(log_lines):
    structlog.contextvars.bind_contextvars(incident_id="inc-1", correlation_id="corr-1", message_id="m-1")
    get_logger("test").info("incident.verified")
    (line,) = log_lines()
    assert (line["incident_id"], line["correlation_id"], line["message_id"]) == ("inc-1", "corr-1", "m-1")
    assert line["level"] == "info" and line["event"] == "incident.verified" and line["timestamp"].endswith("Z")


# --- the envelope ---------------------------------------------------------------------------


def test_envelope_survives_the_wire():
    env = make_event(
        "incident.created",
        {"incident_id": "inc-1", "lat": 31.24, "n": [1, 2], "at": "2025-01-01T00:00:00+00:00"},
        source="incident-intake",
        incident_id="inc-1",
        exercise=True,
        correlation_id="corr-1",
        causation_id="gw-a:a-1",
    )
    back = Envelope.from_bytes(env.to_bytes())
    assert back == Envelope.model_validate(env.model_dump())
    assert (back.id, back.type, back.schema_version, back.source) == (env.id, "incident.created", 1, "incident-intake")
    assert (back.incident_id, back.exercise, back.correlation_id, back.causation_id) == (
        "inc-1",
        True,
        "corr-1",
        "gw-a:a-1",
    )
    assert back.occurred_at == env.occurred_at and back.occurred_at.utcoffset() == timedelta(0)
    assert back.data == env.data


def test_every_envelope_gets_its_own_id_unless_one_is_given():
    a, b = (make_event("thing.happened", {}, source="t") for _ in range(2))
    assert a.id != b.id and len(a.id) == 32
    assert make_event("thing.happened", {}, source="t", id="fixed").id == "fixed"


def test_an_envelope_from_a_pydantic_model_carries_its_json():
    from ecs.contracts import LevelChanged

    data = LevelChanged(incident_id="i", from_level=4, to_level=2, reason="r", actor="a", version=2)
    env = make_event("incident.level.changed", data, source="incident-intake", incident_id="i")
    assert Envelope.from_bytes(env.to_bytes()).data == data.model_dump(mode="json")


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"type": "x", "occurred_at": "2025-01-01T00:00:00Z", "source": "s"}',  # no id
        b'{"id": "1", "type": "x", "occurred_at": "2025-01-01T00:00:00Z", "source": "s", "colour": "red"}',
        b'{"id": "1", "type": "x", "occurred_at": "2025-01-01T00:00:00Z", "source": "s", "schema_version": 0}',
        b'{"id": "", "type": "x", "occurred_at": "2025-01-01T00:00:00Z", "source": "s"}',
    ],
    ids=["not json", "no id", "unknown field", "version 0", "empty id"],
)
def test_a_malformed_envelope_is_refused(raw):
    with pytest.raises(ValueError):
        Envelope.from_bytes(raw)


def test_envelope_times_keep_their_instant_across_offsets():
    beijing = timezone(timedelta(hours=8))
    raw = b'{"id": "1", "type": "x", "occurred_at": "2025-01-01T08:00:00+08:00", "source": "s"}'
    env = Envelope.from_bytes(raw)
    assert env.occurred_at == datetime(2025, 1, 1, 8, 0, tzinfo=beijing) == datetime(2025, 1, 1, tzinfo=UTC)
    assert (env.exercise, env.incident_id, env.data) == (False, None, {})


TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-01$")


def test_msg_id_headers_carry_the_envelope_id_and_w3c_trace_context():
    env = make_event("incident.created", {}, source="incident-intake", correlation_id="c0ffee" * 5 + "ab")
    headers = msg_id_headers(env.id, env.correlation_id)
    assert headers["Nats-Msg-Id"] == env.id
    assert TRACEPARENT.match(headers["traceparent"])
    assert headers["traceparent"].split("-")[1] == env.correlation_id
    assert msg_id_headers("m-1") == {"Nats-Msg-Id": "m-1"}


def test_trace_context_is_valid_for_the_stable_ids_intake_uses():
    headers = msg_id_headers("linked:gw-test:a-1", "0123456789abcdef0123456789abcdef")
    assert TRACEPARENT.match(headers["traceparent"]), headers["traceparent"]


# --- the gateway signature ------------------------------------------------------------------

SECRET = "gw-a-secret-0123456789"
NOW = 1_750_000_000.0


def sign(body: bytes, ts: str, secret: str = SECRET) -> str:
    """DESIGN §7, written out independently of the code under test."""
    return "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


@pytest.fixture
def registry() -> GatewayRegistry:
    return GatewayRegistry({"gw-a": SECRET, "gw-b": "gw-b-secret-0123456789"}, window_s=300)


def test_a_correctly_signed_body_names_its_gateway(registry):
    body = b'{"alarm_id": "a-1"}'
    ts = str(int(NOW))
    assert registry.verify("gw-a", ts, sign(body, ts), body, NOW) == "gw-a"
    assert registry.verify("gw-a", ts, sign(body, ts).upper().replace("SHA256=", "sha256="), body, NOW) == "gw-a"
    for skew in (-300, 300):
        ts = str(int(NOW + skew))
        assert registry.verify("gw-a", ts, sign(body, ts), body, NOW) == "gw-a"


@pytest.mark.parametrize(
    ("gateway", "ts", "signature", "field"),
    [
        (None, "now", "good", "X-Gateway-Id"),
        ("", "now", "good", "X-Gateway-Id"),
        ("gw-z", "now", "good", "X-Gateway-Id"),
        ("gw-a", None, "good", "X-Timestamp"),
        ("gw-a", "soon", "good", "X-Timestamp"),
        ("gw-a", "-5", "good", "X-Timestamp"),
        ("gw-a", "1750000000.5", "good", "X-Timestamp"),
        ("gw-a", "early", "good", "X-Timestamp"),
        ("gw-a", "late", "good", "X-Timestamp"),
        ("gw-a", "now", None, "X-Signature"),
        ("gw-a", "now", "", "X-Signature"),
        ("gw-a", "now", "other body", "X-Signature"),
        ("gw-a", "now", "other secret", "X-Signature"),
        ("gw-a", "now", "other gateway", "X-Signature"),
        ("gw-a", "now", "no prefix", "X-Signature"),
        ("gw-a", "now", "other timestamp", "X-Signature"),
    ],
)
def test_a_bad_signature_is_refused_naming_the_header(registry, gateway, ts, signature, field):
    body = b'{"alarm_id": "a-1"}'
    good_ts = str(int(NOW))
    stamp = {"now": good_ts, "early": str(int(NOW - 301)), "late": str(int(NOW + 301))}.get(ts, ts)
    sig = {
        "good": sign(body, stamp or good_ts),
        "other body": sign(body + b" ", good_ts),
        "other secret": sign(body, good_ts, "not-the-secret-0123"),
        "other gateway": sign(body, good_ts, "gw-b-secret-0123456789"),
        "no prefix": sign(body, good_ts)[7:],
        "other timestamp": sign(body, str(int(NOW - 1))),
    }.get(signature, signature)
    with pytest.raises(Unauthorized) as caught:
        registry.verify(gateway, stamp, sig, body, NOW)
    assert caught.value.extra["field"] == field
    assert caught.value.status == 401


def test_the_registry_refuses_weak_or_odd_configuration():
    with pytest.raises(ValueError, match="16"):
        GatewayRegistry({"gw-a": "short"})
    with pytest.raises(ValueError, match="gateway id"):
        GatewayRegistry({"gw a/1": SECRET})
    assert "gw-a" in GatewayRegistry({"gw-a": SECRET}) and "gw-b" not in GatewayRegistry({"gw-a": SECRET})


def test_gateways_come_from_the_file_and_the_environment(tmp_path, monkeypatch):
    from incident_intake.settings import IntakeSettings

    path = tmp_path / "gateways.json"
    path.write_text(json.dumps({"gateways": {"gw-file": {"secret": SECRET}, "gw-plain": SECRET}}))
    monkeypatch.setenv("INTAKE_GATEWAYS_FILE", str(path))
    monkeypatch.setenv("INTAKE_GATEWAYS", json.dumps({"gw-env": "gw-env-secret-0123456789"}))
    registry = GatewayRegistry.from_settings(IntakeSettings())
    assert registry.ids() == ["gw-env", "gw-file", "gw-plain"]
    body, ts = b"{}", str(int(NOW))
    assert registry.verify("gw-env", ts, sign(body, ts, "gw-env-secret-0123456789"), body, NOW) == "gw-env"


# --- operator tokens ------------------------------------------------------------------------

AUTH = "unit-auth-secret-0123456789abcdef"


def test_an_issued_token_verifies_with_its_subject_and_roles():
    verifier = TokenVerifier(AUTH)
    principal = verifier.verify("Bearer " + verifier.issue("alice", ["dispatcher", "commander", "dispatcher"]))
    assert principal == Principal("alice", frozenset({"dispatcher", "commander"}))
    principal.require(Role.COMMANDER)
    principal.require(Role.AUDITOR, Role.DISPATCHER)
    assert verifier.verify("bearer " + verifier.issue("bob", [])).roles == frozenset()


def test_a_missing_role_is_forbidden_naming_the_roles_needed():
    principal = Principal("alice", frozenset({"auditor"}))
    with pytest.raises(Forbidden) as caught:
        principal.require(Role.COMMANDER, Role.DRILL_RUNNER)
    assert caught.value.status == 403
    assert "commander" in caught.value.detail and "drill_runner" in caught.value.detail
    assert set(caught.value.extra["required_roles"]) == {"commander", "drill_runner"}


def test_roles_may_come_as_a_space_separated_claim():
    token = jwt.encode({"sub": "carol", "roles": "auditor drill_runner", "exp": int(time.time()) + 60}, AUTH)
    assert TokenVerifier(AUTH).verify(f"Bearer {token}").roles == frozenset({"auditor", "drill_runner"})


def _token(claims: dict, key: str = AUTH, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Token abc",
        "Bearer not.a.jwt",
        "Bearer " + _token({"sub": "a", "roles": ["commander"], "exp": int(time.time()) - 10}),
        "Bearer "
        + _token(
            {"sub": "a", "roles": ["commander"], "exp": int(time.time()) + 60}, "another-secret-0123456789abcdef!"
        ),
        "Bearer " + _token({"sub": "a", "roles": ["commander"]}),
        "Bearer " + _token({"roles": ["commander"], "exp": int(time.time()) + 60}),
        "Bearer " + _token({"sub": "a", "roles": ["commander"], "exp": int(time.time()) + 60}, "", "none"),
    ],
    ids=[
        "none",
        "empty",
        "bare",
        "bare with space",
        "other scheme",
        "garbage",
        "expired",
        "forged",
        "no exp",
        "no sub",
        "alg none",
    ],
)
def test_a_bad_token_is_unauthorized(authorization):
    with pytest.raises(Unauthorized) as caught:
        TokenVerifier(AUTH).verify(authorization)
    assert caught.value.status == 401


def test_a_remembered_token_ends_at_its_expiry_and_is_checked_again_after_a_while():
    verifier = TokenVerifier(AUTH)
    token = verifier.issue("alice", ["dispatcher"], ttl_s=600)
    now = time.time()
    verifier._clock = lambda: now
    assert verifier.verify(f"Bearer {token}").subject == "alice"  # checked, then remembered
    verifier._clock = lambda: now + 590
    assert verifier.verify(f"Bearer {token}").subject == "alice"  # remembered and still valid
    verifier._clock = lambda: now + 601
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(f"Bearer {token}")
    assert "expired" in caught.value.detail
    other = TokenVerifier("another-secret-0123456789abcdef!")  # remembered by one verifier only
    with pytest.raises(Unauthorized):
        other.verify(f"Bearer {token}")


def test_issuer_and_audience_are_checked_when_configured():
    strict = TokenVerifier(AUTH, issuer="https://sso.city.example", audience="ecs")
    assert strict.verify("Bearer " + strict.issue("alice", ["dispatcher"])).subject == "alice"
    lax = TokenVerifier(AUTH)
    with pytest.raises(Unauthorized):
        strict.verify("Bearer " + lax.issue("alice", ["dispatcher"]))
    other = TokenVerifier(AUTH, issuer="https://evil.example", audience="ecs")
    with pytest.raises(Unauthorized):
        strict.verify("Bearer " + other.issue("alice", ["dispatcher"]))


def test_every_role_of_the_design_exists():
    assert {r.value for r in Role} == {
        "dispatcher",
        "commander",
        "supply_officer",
        "shelter_manager",
        "information_officer",
        "drill_runner",
        "auditor",
    }
