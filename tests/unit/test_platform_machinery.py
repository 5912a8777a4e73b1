"""The libs machinery's small promises, each as its users rely on it: the retry policy for
database transactions, the envelope helpers, participants' spellings, the request signature's
clock, bearer tokens and roles (mutation testing showed these were not checked in isolation)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ecs import retry as retry_module
from ecs.auth import COMMANDERS, OPERATORS, Principal, Role, TokenVerifier
from ecs.envelope import field_path, make_event, parse_payload
from ecs.errors import Forbidden, Poison, Transient, Unauthorized
from ecs.retry import db_error_text, is_retryable, is_unavailable, retrying
from ecs.signing import matches, signed_headers
from ecs.vocabulary import Category, Participant, scene_of

# --- the retry policy ---------------------------------------------------------------------------


class DriverError(Exception):
    """What a database driver raises, with PostgreSQL's SQLSTATE (asyncpg names it sqlstate)."""

    def __init__(self, message: str, sqlstate: str | None = None, pgcode: str | None = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if pgcode is not None:
            self.pgcode = pgcode


def db_error(message: str = "boom", invalidated: bool = False, **codes: str) -> DBAPIError:
    return DBAPIError(
        "UPDATE units SET x = $1", {"x": 1}, DriverError(message, **codes), connection_invalidated=invalidated
    )


class Work:
    """A transaction that fails with the given errors, in order, then answers ``done``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


async def test_work_that_succeeds_runs_once():
    work, retried = Work(), Counter()
    assert await retrying(work, on_retry=retried) == "done"
    assert (work.calls, retried.n) == (1, 0)


@pytest.mark.parametrize(
    "codes",
    [{"sqlstate": "40P01"}, {"sqlstate": "40001"}, {"sqlstate": "55P03"}, {"pgcode": "40001"}],
    ids=["deadlock", "serialization", "lock-not-available", "psycopg-pgcode"],
)
async def test_a_deadlock_or_serialisation_failure_runs_the_whole_transaction_again(codes):
    work, retried = Work(db_error(**codes), db_error(**codes)), Counter()
    assert await retrying(work, attempts=3, on_retry=retried) == "done"
    assert (work.calls, retried.n) == (3, 2)


async def test_the_pause_before_each_new_attempt_is_random_and_doubles(monkeypatch):
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(retry_module, "asyncio", SimpleNamespace(sleep=pause))
    work = Work(*[db_error(sqlstate="40001")] * 6)
    with pytest.raises(Transient, match="^gave up after 6 attempts: "):
        await retrying(work)  # six attempts by default
    assert work.calls == 6 and len(pauses) == 5
    for attempt, seconds in enumerate(pauses):
        assert 0.01 * 2**attempt <= seconds <= 0.05 * 2**attempt


async def test_a_busy_sqlite_is_retried_too():
    work = Work(db_error("database is locked"))
    assert await retrying(work, attempts=2) == "done"
    assert work.calls == 2


async def test_a_conflict_that_outlives_the_attempts_is_transient_naming_the_error():
    work, retried = Work(*[db_error("deadlock detected\nDETAIL: x", sqlstate="40P01")] * 3), Counter()
    with pytest.raises(Transient) as caught:
        await retrying(work, attempts=3, on_retry=retried)
    assert str(caught.value) == "gave up after 3 attempts: deadlock detected"
    assert (work.calls, retried.n) == (3, 2)


@pytest.mark.parametrize(
    "error",
    [
        OSError("connection refused"),
        ConnectionResetError("reset by peer"),
        db_error("server closed the connection", invalidated=True),
        DBAPIError("SELECT 1", {}, ConnectionRefusedError("refused"), connection_invalidated=False),
    ],
    ids=["os-error", "connection-error", "invalidated", "driver-oserror"],
)
async def test_a_lost_database_is_transient_at_once(error):
    work = Work(error, error)
    with pytest.raises(Transient) as caught:
        await retrying(work, attempts=3)
    assert str(caught.value) == f"database unavailable: {db_error_text(error)}"
    assert work.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("INSERT", {}, DriverError("duplicate key", sqlstate="23505")),
        IntegrityError("INSERT", {}, DriverError("odd", sqlstate="40001")),
        db_error("relation does not exist", sqlstate="42P01"),
        ValueError("a bug"),
    ],
    ids=["integrity", "integrity-with-a-retryable-code", "other-sqlstate", "not-a-database-error"],
)
async def test_every_other_error_propagates_unchanged_after_one_run(error):
    work = Work(error)
    with pytest.raises(type(error)) as caught:
        await retrying(work, attempts=3)
    assert caught.value is error and work.calls == 1


def test_what_counts_as_retryable_or_unavailable():
    assert is_retryable(db_error(sqlstate="40P01")) and is_retryable(db_error(pgcode="55P03"))
    assert not is_retryable(db_error(sqlstate="23505")) and not is_retryable(db_error("locked"))
    assert is_unavailable(OSError()) and is_unavailable(ConnectionError())
    assert is_unavailable(db_error(invalidated=True))
    assert not is_unavailable(db_error()) and not is_unavailable(ValueError())
    assert is_unavailable(PoolTimeout("QueuePool limit of size 10 overflow 10 reached"))


async def test_a_pool_that_gives_no_connection_in_time_is_transient_not_a_crash():
    """Under a load the database cannot keep up with, the pool's wait runs out: a 503 to retry,
    never a 500."""
    work = Work(PoolTimeout("QueuePool limit of size 10 overflow 10 reached, connection timed out"))
    with pytest.raises(Transient, match="^database unavailable: QueuePool limit"):
        await retrying(work, attempts=3)
    assert work.calls == 1


def test_db_error_text_is_the_first_line_at_most_200_characters():
    assert db_error_text(db_error("  first line\nSQL: UPDATE units  ")) == "first line"
    assert db_error_text(db_error("x" * 300)) == "x" * 200
    assert db_error_text(ValueError("plain\nsecond")) == "plain"
    assert db_error_text(ValueError("   ")) == "ValueError"


# --- the envelope -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("body", "location", "lat"), "location.lat"),
        (("query", "limit"), "limit"),
        (("path", "unit_id"), "unit_id"),
        (("header", "x-timestamp"), "x-timestamp"),
        (("body", "units", 3, "id"), "units.3.id"),
        (("body",), "body"),
        ((), "body"),
    ],
)
def test_field_path_names_the_field_without_where_it_came_from(loc, path):
    assert field_path(loc) == path


class Report(BaseModel):
    unit: str = Field(min_length=1)
    lat: float = Field(ge=-90, le=90)


class Six(BaseModel):
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int


@pytest.mark.parametrize(
    "data", [{"unit": "fe-1", "lat": 31.2}, b'{"unit": "fe-1", "lat": 31.2}', '{"unit":"fe-1","lat":31.2}']
)
def test_parse_payload_takes_a_dict_or_raw_json(data):
    assert parse_payload(Report, data, "position report") == Report(unit="fe-1", lat=31.2)


def test_parse_payload_refuses_as_poison_naming_each_bad_field():
    with pytest.raises(Poison) as caught:
        parse_payload(Report, {"unit": "", "lat": 95}, "position report")
    message = str(caught.value)
    assert message.startswith("invalid position report: data.unit: ")
    assert "; data.lat: Input should be less than or equal to 90" in message
    with pytest.raises(Poison, match=r"^invalid report: lat: "):
        parse_payload(Report, b'{"unit": "x", "lat": "north"}', "report", prefix="")
    with pytest.raises(Poison) as caught:
        parse_payload(Six, {}, "six")
    assert str(caught.value).count("; ") == 4 and "data.f" not in str(caught.value)  # five at most


class Created(BaseModel):
    incident_id: str
    at: datetime


def test_make_event_fills_the_envelope_and_dumps_a_model_as_json():
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    before = datetime.now(UTC)
    env = make_event(
        "incident.created",
        Created(incident_id="i-1", at=at),
        source="incident-intake",
        incident_id="i-1",
        exercise=True,
        correlation_id="c-1",
        causation_id="m-0",
        id="m-1",
        schema_version=2,
    )
    assert (env.id, env.type, env.source, env.incident_id) == ("m-1", "incident.created", "incident-intake", "i-1")
    assert (env.exercise, env.correlation_id, env.causation_id, env.schema_version) == (True, "c-1", "m-0", 2)
    assert env.data == {"incident_id": "i-1", "at": "2026-01-02T03:04:05Z"}
    assert before <= env.occurred_at <= datetime.now(UTC) and env.occurred_at.tzinfo is not None

    plain: dict[str, Any] = {"k": 1}
    first, second = make_event("x.y", plain, source="s"), make_event("x.y", plain, source="s")
    assert first.data == {"k": 1} and len(first.id) == 32 and first.id != second.id
    assert (first.incident_id, first.exercise, first.correlation_id, first.causation_id) == (None, False, None, None)
    assert first.schema_version == 1


# --- participants and signatures ----------------------------------------------------------------


@pytest.mark.parametrize("participant", list(Participant))
def test_a_participant_is_known_by_its_subject_prefix_or_its_service_name(participant):
    assert Participant.parse(participant.value) is participant
    assert Participant.parse(participant.service) is participant


def test_an_unknown_participant_is_refused_naming_the_accepted_spellings():
    with pytest.raises(ValueError) as caught:
        Participant.parse("police")
    message = str(caught.value)
    assert message == (
        "unknown participant 'police'; known: dispatch (dispatch), stockpile (resource-stockpile), "
        "shelter (shelter-registry), notification (public-notification)"
    )


def test_signed_headers_take_the_clock_when_no_time_is_given():
    before = int(time.time())
    headers = signed_headers("gw-1", "secret", b"{}")
    stamp = int(headers["X-Timestamp"])
    assert before <= stamp <= int(time.time())
    assert matches("secret", headers["X-Timestamp"], b"{}", headers["X-Signature"])


# --- bearer tokens and roles --------------------------------------------------------------------

SECRET = "unit-test-secret-0123456789abcdef"


def refused(verifier: TokenVerifier, authorization: str | None) -> str:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(authorization)
    assert caught.value.status == 401
    return caught.value.detail


def test_an_issued_token_verifies_as_its_subject_and_roles():
    tokens = TokenVerifier(SECRET)
    token = tokens.issue("alice", ["commander", "dispatcher", "commander"])
    assert tokens.verify(f"Bearer {token}") == Principal("alice", frozenset({"commander", "dispatcher"}))
    assert tokens.verify(f"bearer {token}").subject == "alice"  # the scheme's case does not matter
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["roles"] == ["commander", "dispatcher"] and claims["exp"] - claims["iat"] == 12 * 3600
    assert "iss" not in claims and "aud" not in claims


def test_issuer_and_audience_are_written_and_checked():
    tokens = TokenVerifier(SECRET, issuer="ecs", audience="operators")
    token = tokens.issue("bob", ["auditor"], ttl_s=60)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="operators")
    assert (claims["iss"], claims["aud"], claims["exp"] - claims["iat"]) == ("ecs", "operators", 60)
    assert tokens.verify(f"Bearer {token}").roles == frozenset({"auditor"})
    assert "invalid token" in refused(TokenVerifier(SECRET, issuer="other", audience="operators"), f"Bearer {token}")
    assert "invalid token" in refused(TokenVerifier(SECRET, issuer="ecs", audience="other"), f"Bearer {token}")


def test_roles_may_come_as_one_space_separated_claim():
    token = jwt.encode({"sub": "carol", "roles": "dispatcher auditor", "exp": int(time.time()) + 60}, SECRET)
    assert TokenVerifier(SECRET).verify(f"Bearer {token}").roles == frozenset({"dispatcher", "auditor"})
    token = jwt.encode({"sub": "dave", "exp": int(time.time()) + 60}, SECRET)
    assert TokenVerifier(SECRET).verify(f"Bearer {token}").roles == frozenset()


def test_a_missing_malformed_forged_or_expired_token_is_401():
    tokens = TokenVerifier(SECRET)
    good = tokens.issue("alice", ["dispatcher"])
    assert refused(tokens, None).startswith("missing bearer token")
    assert refused(tokens, "").startswith("missing bearer token")
    for header in ("Bearer", "Bearer    ", f"Basic {good}", f"Token {good}"):
        assert refused(tokens, header) == "the Authorization header must be 'Bearer <token>'"
    assert refused(tokens, "Bearer not-a-token").startswith("invalid token: ")
    assert refused(TokenVerifier("another-secret-0123456789abcdef"), f"Bearer {good}").startswith("invalid token")
    assert refused(tokens, f"Bearer {tokens.issue('alice', ['dispatcher'], ttl_s=-10)}").startswith("invalid token")
    no_expiry = jwt.encode({"sub": "alice", "roles": ["dispatcher"]}, SECRET)
    no_subject = jwt.encode({"roles": ["dispatcher"], "exp": int(time.time()) + 60}, SECRET)
    assert "exp" in refused(tokens, f"Bearer {no_expiry}")
    assert "sub" in refused(tokens, f"Bearer {no_subject}")
    assert refused(tokens, f"Bearer {jwt.encode({'sub': 'a', 'exp': int(time.time()) + 60}, SECRET, 'HS384')}")


@pytest.mark.parametrize("subject", ["", " ", "\t", "a\x00b", "a\nb", "a\x85b", "x" * 256])
def test_a_token_whose_subject_cannot_name_who_acted_is_401(subject):
    """The subject is the actor of every change and keeps an alert's approver apart from its
    author: a blank one, one with a control character or one past 255 characters is refused."""
    tokens = TokenVerifier(SECRET)
    token = jwt.encode({"sub": subject, "roles": ["commander"], "exp": int(time.time()) + 60}, SECRET)
    assert refused(tokens, f"Bearer {token}") == (
        "invalid token: 'sub' must be 1 to 255 printable characters, not blank"
    )
    assert tokens.verify(f"Bearer {tokens.issue('x' * 255, ['commander'])}").subject == "x" * 255
    assert tokens.verify(f"Bearer {tokens.issue('王 芳-1', ['commander'])}").subject == "王 芳-1"


def test_a_role_that_may_not_act_is_403_naming_the_roles():
    Principal("alice", frozenset({"commander"})).require(*COMMANDERS)
    with pytest.raises(Forbidden) as caught:
        Principal("alice", frozenset({"dispatcher", "auditor"})).require(*COMMANDERS)
    assert caught.value.status == 403
    assert caught.value.detail == "this action needs one of the roles: commander, drill_runner"
    assert caught.value.extra == {"required_roles": [Role.COMMANDER, Role.DRILL_RUNNER]}


def test_a_drill_runner_acts_on_exercise_objects_only():
    runner = Principal("drill", frozenset({Role.DRILL_RUNNER.value}))
    assert runner.is_drill_only(OPERATORS)
    runner.require_scope(OPERATORS, exercise=True, what="incidents")
    with pytest.raises(Forbidden, match="^a drill runner acts on exercise incidents only$"):
        runner.require_scope(OPERATORS, exercise=False, what="incidents")
    both = Principal("lead", frozenset({Role.DRILL_RUNNER.value, Role.DISPATCHER.value}))
    assert not both.is_drill_only(OPERATORS)
    both.require_scope(OPERATORS, exercise=False, what="incidents")
    assert not Principal("x", frozenset({Role.DISPATCHER.value})).is_drill_only(OPERATORS)
    with pytest.raises(Forbidden, match="needs one of the roles"):
        Principal("reader", frozenset({Role.AUDITOR.value})).require_scope(OPERATORS, exercise=True, what="units")


def test_the_header_is_the_scheme_then_the_token():
    tokens = TokenVerifier(SECRET)
    good = tokens.issue("alice", ["dispatcher"])
    assert refused(tokens, None) == "missing bearer token (Authorization: Bearer <token>)"
    assert refused(tokens, f"Bearer {good} trailing").startswith("invalid token: ")


@pytest.fixture
def issuer():
    """An OIDC issuer's keys (an RSA and an EC key), its JWKS document served on 127.0.0.1."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    keys = {"rsa-1": rsa.generate_private_key(65537, 2048), "ec-1": ec.generate_private_key(ec.SECP256R1())}
    jwks: dict[str, list[dict[str, Any]]] = {"keys": []}
    for kid, key in keys.items():
        algorithm = jwt.algorithms.RSAAlgorithm if kid.startswith("rsa") else jwt.algorithms.ECAlgorithm
        jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
        jwks["keys"].append({**jwk, "kid": kid, "use": "sig"})
    document = json.dumps(jwks).encode()

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", keys
    server.shutdown()
    server.server_close()


def oidc_token(keys, kid: str, algorithm: str, **claims: Any) -> str:
    body = {"sub": "oidc-user", "roles": ["commander"], "iss": "https://idp", "aud": "ecs", **claims}
    body.setdefault("exp", int(time.time()) + 60)
    return jwt.encode(body, keys[kid], algorithm=algorithm, headers={"kid": kid})


def test_in_production_tokens_are_checked_against_the_issuers_published_keys(issuer):
    url, keys = issuer
    tokens = TokenVerifier(SECRET, jwks_url=url, issuer="https://idp", audience="ecs")
    for kid, algorithm in (("rsa-1", "RS256"), ("ec-1", "ES256")):
        principal = tokens.verify(f"Bearer {oidc_token(keys, kid, algorithm)}")
        assert principal == Principal("oidc-user", frozenset({"commander"}))
    assert "invalid token" in refused(tokens, f"Bearer {oidc_token(keys, 'rsa-1', 'RS256', iss='https://other')}")
    assert "invalid token" in refused(tokens, f"Bearer {oidc_token(keys, 'rsa-1', 'RS256', aud='other')}")
    assert "invalid token" in refused(tokens, f"Bearer {oidc_token(keys, 'rsa-1', 'RS256', exp=1)}")
    # A token signed with the local secret is not the issuer's.
    local = jwt.encode({"sub": "x", "iss": "https://idp", "aud": "ecs", "exp": int(time.time()) + 60}, SECRET)
    assert "invalid token" in refused(tokens, f"Bearer {local}")
    with pytest.raises(RuntimeError, match="^tokens come from the OIDC issuer in this deployment$"):
        tokens.issue("alice", ["dispatcher"])


@pytest.mark.parametrize("scene", [c for c in Category if c is not Category.medical])
def test_a_copy_of_an_incident_only_ever_turns_a_medical_call_into_its_scene(scene):
    assert scene_of(Category.medical, scene) is scene
    assert scene_of("medical", str(scene)) is scene  # as events and rows spell them
    assert scene_of(Category.medical, Category.medical) is Category.medical
    for other in Category:
        assert scene_of(scene, other) is scene  # a scene never changes, least of all back to medical
