"""NATS identities (DESIGN §6): who may publish and subscribe what on the broker.

Every service connects as its own user (its name) and may publish only on its own subject
domain (``dispatch.>`` for dispatch, ...), dead letters, and the JetStream API and acks it needs;
each 110 gateway connects as ``gateway-<id>`` and may publish only ``alarm.in.<id>``. The broker
refuses anything else, so no one who reaches it can publish another service's facts. Consumers
also check that an event's ``source`` is the owner of its subject (``check_source``).

``server_config`` writes the ``authorization`` block of a nats-server configuration from this
table, for the embedded default (deploy/local/run.py), the tests (ecs.testing), compose and k8s.
Adding a service is one entry in ``SERVICES``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import streams
from .errors import Poison

ADMIN_USER = "admin"
"""An identity with every permission: operators' tools and tests only, never a service."""

# Deleting or purging a stream, or a message in one, is nobody's business but the admin's: denied
# even if an allow above ever grew to cover it.
_COMMON_DENY = ("$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>")
_JS_API = "$JS.API"


def inbox_prefix(user: str) -> str:
    """Where ``user``'s replies come (requests, JetStream API answers, pulled messages): its own
    inboxes ``_INBOX_<user>.<id>``, which only it may subscribe to. ecs.bus.Bus connects with it.
    Outside ``_INBOX.>``, which gateways and vehicle feeds (other teams' clients, default inboxes)
    may still subscribe to."""
    return f"_INBOX_{user}"


@dataclass(frozen=True)
class Identity:
    """A NATS user and what it may publish and subscribe (NATS subject wildcards)."""

    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = _COMMON_DENY
    allow_responses: bool = False

    def permissions(self) -> dict[str, object]:
        """The nats-server ``permissions`` block of this user."""
        # An empty allow list would mean "anything not denied": leave it out, so only deny counts.
        publish: dict[str, list[str]] = {"allow": list(self.publish)} if self.publish else {}
        perms: dict[str, object] = {
            "publish": {**publish, "deny": list(self.deny_publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            perms["allow_responses"] = True
        return perms


def jetstream_permissions(user: str, uses: streams.Uses) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(publish, subscribe) that a service declaring ``uses`` needs on JetStream, and nothing more:

    * its own streams: info, create, update; a stream it reads and the dead-letter stream: info
      and create (when missing; the server refuses a create that differs from an existing one);
    * each of its durable consumers: create (``CONSUMER.CREATE.<stream>.<durable>``, with the
      filter subject appended when there is one), info, pull (``CONSUMER.MSG.NEXT``) and the
      acks of its messages (``$JS.ACK.<stream>.<durable>.>``: ack, nak, term, in progress);
      a feed's deliver subject (``_feed.<durable>``);
    * dead letters of the subjects it consumes (``deadletter.<subject>``);
    * replies on its own inboxes only (``inbox_prefix``)."""
    from .bus import DEAD_LETTERS

    publish: list[str] = []
    subscribe: list[str] = [f"{inbox_prefix(user)}.>"]
    for s in uses.owns:
        publish += [f"{_JS_API}.STREAM.{op}.{s.name}" for op in ("INFO", "CREATE", "UPDATE")]
    for s in (DEAD_LETTERS, *uses.reads):
        publish += [f"{_JS_API}.STREAM.{op}.{s.name}" for op in ("INFO", "CREATE")]
    for c in uses.consumers:
        where = f"{c.stream.name}.{c.name}"
        publish += [f"{_JS_API}.CONSUMER.CREATE.{where}", f"{_JS_API}.CONSUMER.CREATE.{where}.>"]
        publish.append(f"{_JS_API}.CONSUMER.INFO.{where}")
        if c.push:
            subscribe.append(c.feed_subject)
        else:
            publish.append(f"{_JS_API}.CONSUMER.MSG.NEXT.{where}")
        publish.append(f"$JS.ACK.{where}.>")
    for c in uses.consumers:
        publish += [f"{DEAD_LETTERS.subjects[0].removesuffix('>')}{subject}" for subject in c.stream.subjects]
    return tuple(dict.fromkeys(publish)), tuple(dict.fromkeys(subscribe))


def _service(name: str, domains: Iterable[str], requests: Iterable[str] = (), answers: Iterable[str] = ()) -> Identity:
    answers = tuple(answers)
    js_publish, js_subscribe = jetstream_permissions(name, streams.USES[name])
    return Identity(
        user=name,
        publish=(*(f"{d}.>" for d in domains), *requests, *js_publish),
        subscribe=(*js_subscribe, *answers),
        allow_responses=bool(answers),
    )


PLAN_REQUESTS = "rpc.dispatch.>"
"""Requests dispatch answers (its response plans)."""

SERVICES: dict[str, Identity] = {
    s.user: s
    for s in (
        _service("incident-intake", ("incident",)),
        _service("dispatch", ("dispatch",), answers=(PLAN_REQUESTS,)),
        _service("resource-stockpile", ("stockpile",), requests=(PLAN_REQUESTS,)),
        _service("shelter-registry", ("shelter",), requests=(PLAN_REQUESTS,)),
        _service("public-notification", ("notification",), requests=(PLAN_REQUESTS,)),
    )
}
"""Every service's identity, by service name (the settings' ``service_name``)."""

OWNERS: dict[str, str] = {
    "incident": "incident-intake",
    "dispatch": "dispatch",
    "stockpile": "resource-stockpile",
    "shelter": "shelter-registry",
    "notification": "public-notification",
}
"""The service that owns each subject domain (the first token of a subject): the only one whose
events on it are facts."""


def gateway(gateway_id: str) -> Identity:
    """A 110 gateway's identity: publishes its own alarms (``alarm.in.<id>``) and nothing else."""
    return Identity(user=f"gateway-{gateway_id}", publish=(f"alarm.in.{gateway_id}",), subscribe=("_INBOX.>",))


def vehicle_feed(feed_id: str) -> Identity:
    """A vehicle location feed's identity: publishes ``vehicle.location.*`` only."""
    return Identity(user=f"feed-{feed_id}", publish=("vehicle.location.*",), subscribe=("_INBOX.>",))


OBSERVER_USER = "observer"
"""The subscribe-only identity that watches the domain events: ``ecs watch`` and the drill runner."""

OBSERVER = Identity(
    user=OBSERVER_USER,
    publish=(),
    subscribe=tuple(f"{domain}.>" for domain in OWNERS),
    deny_publish=(">",),
)
"""May subscribe to every domain's events (core NATS) and publish nothing at all (so it never
needs an inbox either)."""


def local_password(user: str, secrets_file: Path) -> str:
    """``user``'s NATS password as the embedded default keeps it (``var/secrets.json``, key
    ``nats:<user>``, written by ``make up``). Raises OSError when the file cannot be read and
    KeyError naming the user when it holds no password for it."""
    known = json.loads(secrets_file.read_text())
    try:
        return known[f"nats:{user}"]
    except KeyError:
        raise KeyError(f"{secrets_file} holds no NATS password for {user}") from None


def owner_of(subject: str) -> str | None:
    """The service that owns ``subject``, or None for a subject no service owns."""
    return OWNERS.get(subject.split(".", 1)[0])


def check_source(subject: str, source: str) -> None:
    """Raises Poison when an event on ``subject`` claims to come from another service than the
    subject's owner: a forged fact is never handled."""
    owner = owner_of(subject)
    if owner is not None and source != owner:
        raise Poison(f"an event on {subject} must come from {owner}, not {source[:64]!r}")


DEFAULT_BCRYPT_COST = 10
"""bcrypt cost factor of the password hashes in a broker configuration (2^cost rounds, about
0.1 s a hash here). The broker pays it at every client's connect, not per message. Tests use
the minimum, 4 (ecs.testing): their passwords are public anyway and their servers start often."""


def hash_password(password: str, cost: int = DEFAULT_BCRYPT_COST) -> str:
    """The bcrypt hash of ``password`` as nats-server takes it in a user's ``password``
    (``$2b$<cost>$...``): the broker keeps only the hash, each client sends the password."""
    import bcrypt  # only writers of broker configurations need it, not every service

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


def server_config(
    passwords: Mapping[str, str],
    admin_password: str | None = None,
    extra: Iterable[Identity] = (),
    cost: int = DEFAULT_BCRYPT_COST,
) -> str:
    """The ``authorization`` block of a nats-server configuration: one user per identity whose
    password is in ``passwords`` (by user name: services and ``extra`` identities such as
    gateways), and ``admin`` with every permission when ``admin_password`` is given. Each
    password is written as its bcrypt hash (``hash_password`` with ``cost``), never in clear.

    Raises KeyError naming an ``extra`` identity without a password."""
    hashed = {user: hash_password(pw, cost) for user, pw in passwords.items()}
    admin = hash_password(admin_password, cost) if admin_password is not None else None
    return _authorization(hashed, admin, extra)


def _authorization(secrets: Mapping[str, str], admin_secret: str | None, extra: Iterable[Identity]) -> str:
    """The ``authorization`` block with each user's ``password`` value as given."""
    users = []
    for ident in (*SERVICES.values(), *extra):
        if ident.user in secrets:
            users.append({"user": ident.user, "password": secrets[ident.user], "permissions": ident.permissions()})
        elif ident not in SERVICES.values():
            raise KeyError(f"no password for {ident.user}")
    if admin_secret is not None:
        users.append({"user": ADMIN_USER, "password": admin_secret})
    # The configuration format accepts JSON values.
    return "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"


def password_variable(user: str) -> str:
    """The environment variable holding ``user``'s clear NATS password in a deployment, for the
    client that connects as it (a service's ``<PREFIX>NATS_PASSWORD`` is set from it), e.g.
    ``NATS_PASSWORD_INCIDENT_INTAKE``. The broker never sees it: it reads ``bcrypt_variable``."""
    return "NATS_PASSWORD_" + _variable_part(user)


def bcrypt_variable(user: str) -> str:
    """The environment variable holding the bcrypt hash of ``user``'s NATS password for the
    broker, e.g. ``NATS_BCRYPT_INCIDENT_INTAKE``. Its value is the hash in double quotes
    (``"$2b$10$..."``, see ``quoted_hash``): nats-server parses an environment value as
    configuration, and an unquoted ``$2b$...`` would read as a variable reference."""
    return "NATS_BCRYPT_" + _variable_part(user)


def quoted_hash(password: str, cost: int = DEFAULT_BCRYPT_COST) -> str:
    """The value of ``bcrypt_variable``: ``password``'s bcrypt hash in double quotes."""
    return f'"{hash_password(password, cost)}"'


def _variable_part(user: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def server_config_template(extra: Iterable[Identity] = ()) -> str:
    """``server_config`` for every service, ``extra`` identities and admin, with each password
    hash read from the broker's environment (``$NATS_BCRYPT_<USER>``, see ``bcrypt_variable``):
    the configuration compose and k8s mount; the hashes stay in the broker's secrets, the clear
    passwords in the clients'."""
    users = [*SERVICES, *(i.user for i in extra), ADMIN_USER]
    marker = {u: f"@@{bcrypt_variable(u)}@@" for u in users}
    text = _authorization(marker, marker[ADMIN_USER], extra)
    # nats-server resolves $VARIABLE references from its environment only when unquoted.
    return re.sub(r'"@@(\w+)@@"', r"$\1", text)


__all__ = [
    "ADMIN_USER",
    "DEFAULT_BCRYPT_COST",
    "OBSERVER",
    "OBSERVER_USER",
    "OWNERS",
    "SERVICES",
    "Identity",
    "bcrypt_variable",
    "check_source",
    "gateway",
    "hash_password",
    "inbox_prefix",
    "jetstream_permissions",
    "local_password",
    "owner_of",
    "password_variable",
    "quoted_hash",
    "server_config",
    "server_config_template",
    "vehicle_feed",
]


COMPOSE_GATEWAYS = ("demo-gw",)
"""Gateways the compose and k8s broker configurations give an identity (besides every service,
the observer and admin)."""

DEPLOYMENT_SECRETS = ("ECS_AUTH_SECRET", "ECS_CALLER_PEPPER", "ECS_SHELTER_PII_KEY")
"""Secrets docker-compose.yml reads from the environment (or .env) besides the NATS passwords."""


def main(argv: list[str] | None = None) -> None:
    """``python -m ecs.identities nats-config``: the broker configuration for compose and k8s.
    ``python -m ecs.identities compose-env``: random values for every secret docker-compose.yml
    needs (write them to .env, which compose reads; never commit it): each identity's clear
    password (``NATS_PASSWORD_<USER>``, for its client) and its bcrypt hash
    (``NATS_BCRYPT_<USER>``, for the broker), single-quoted so compose takes the ``$`` literally.
    ``python -m ecs.identities hash < password-file``: the ``NATS_BCRYPT_<USER>`` value of a
    password (k8s: the nats-password-hashes Secret)."""
    import secrets
    import sys

    what = (argv if argv is not None else sys.argv[1:]) or ["nats-config"]
    extra = [*(gateway(g) for g in COMPOSE_GATEWAYS), OBSERVER]
    if what[0] == "nats-config":
        sys.stdout.write(server_config_template(extra))
    elif what[0] == "compose-env":
        for name in DEPLOYMENT_SECRETS:
            sys.stdout.write(f"{name}={secrets.token_urlsafe(32)}\n")
        for user in (*SERVICES, *(i.user for i in extra), ADMIN_USER):
            password = secrets.token_urlsafe(32)
            sys.stdout.write(f"{password_variable(user)}={password}\n")
            sys.stdout.write(f"{bcrypt_variable(user)}='{quoted_hash(password)}'\n")
    elif what[0] == "hash":
        # A password on standard input (never on the command line) -> the value of its NATS_BCRYPT_<USER>.
        sys.stdout.write(quoted_hash(sys.stdin.readline().rstrip("\r\n")) + "\n")
    else:
        raise SystemExit("usage: python -m ecs.identities nats-config | compose-env | hash < password")


if __name__ == "__main__":
    main()
