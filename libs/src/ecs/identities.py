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

from .errors import Poison

ADMIN_USER = "admin"
"""An identity with every permission: operators' tools and tests only, never a service."""

# What every service needs besides its own domain: the JetStream API (declaring its streams and
# consumers, publishing with acknowledgement, pulling), acks, dead letters; replies come back on
# _INBOX. Deleting or purging a stream, or a message in one, is nobody's business but the admin's.
_COMMON_PUBLISH = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "deadletter.>")
_COMMON_DENY = ("$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>")
_COMMON_SUBSCRIBE = ("_INBOX.>",)


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


def _service(name: str, domains: Iterable[str], requests: Iterable[str] = (), answers: Iterable[str] = ()) -> Identity:
    answers = tuple(answers)
    return Identity(
        user=name,
        publish=(*(f"{d}.>" for d in domains), *requests, *_COMMON_PUBLISH),
        subscribe=(*_COMMON_SUBSCRIBE, "_feed.>", *answers),
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
    subscribe=(*(f"{domain}.>" for domain in OWNERS), "_INBOX.>"),
    deny_publish=(">",),
)
"""May subscribe to every domain's events (core NATS) and publish nothing at all."""


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


def server_config(
    passwords: Mapping[str, str],
    admin_password: str | None = None,
    extra: Iterable[Identity] = (),
) -> str:
    """The ``authorization`` block of a nats-server configuration: one user per identity whose
    password is in ``passwords`` (by user name: services and ``extra`` identities such as
    gateways), and ``admin`` with every permission when ``admin_password`` is given.

    Raises KeyError naming an ``extra`` identity without a password."""
    users = []
    for ident in (*SERVICES.values(), *extra):
        if ident.user in passwords:
            users.append({"user": ident.user, "password": passwords[ident.user], "permissions": ident.permissions()})
        elif ident not in SERVICES.values():
            raise KeyError(f"no password for {ident.user}")
    if admin_password is not None:
        users.append({"user": ADMIN_USER, "password": admin_password})
    # The configuration format accepts JSON values.
    return "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"


def password_variable(user: str) -> str:
    """The environment variable holding ``user``'s NATS password in a deployment's broker
    configuration, e.g. ``NATS_PASSWORD_INCIDENT_INTAKE``."""
    return "NATS_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def server_config_template(extra: Iterable[Identity] = ()) -> str:
    """``server_config`` for every service, ``extra`` identities and admin, with each password
    read from the broker's environment (``$NATS_PASSWORD_<USER>``, see ``password_variable``):
    the configuration compose and k8s mount; the passwords stay in their secrets."""
    users = [*SERVICES, *(i.user for i in extra), ADMIN_USER]
    marker = {u: f"@@{password_variable(u)}@@" for u in users}
    text = server_config(marker, marker[ADMIN_USER], extra)
    # nats-server resolves $VARIABLE references from its environment only when unquoted.
    return re.sub(r'"@@(\w+)@@"', r"$\1", text)


__all__ = [
    "ADMIN_USER",
    "OBSERVER",
    "OBSERVER_USER",
    "OWNERS",
    "SERVICES",
    "Identity",
    "check_source",
    "gateway",
    "local_password",
    "owner_of",
    "password_variable",
    "server_config",
    "server_config_template",
    "vehicle_feed",
]


COMPOSE_GATEWAYS = ("demo-gw",)
"""Gateways the compose and k8s broker configurations give an identity."""

DEPLOYMENT_SECRETS = ("ECS_AUTH_SECRET", "ECS_CALLER_PEPPER", "ECS_SHELTER_PII_KEY")
"""Secrets docker-compose.yml reads from the environment (or .env) besides the NATS passwords."""


def main(argv: list[str] | None = None) -> None:
    """``python -m ecs.identities nats-config``: the broker configuration for compose and k8s.
    ``python -m ecs.identities compose-env``: random values for every secret docker-compose.yml
    needs (write them to .env, which compose reads; never commit it)."""
    import secrets
    import sys

    what = (argv if argv is not None else sys.argv[1:]) or ["nats-config"]
    gateways = [gateway(g) for g in COMPOSE_GATEWAYS]
    if what[0] == "nats-config":
        sys.stdout.write(server_config_template(gateways))
    elif what[0] == "compose-env":
        users = [*SERVICES, *(g.user for g in gateways), ADMIN_USER]
        for name in (*DEPLOYMENT_SECRETS, *(password_variable(u) for u in users)):
            sys.stdout.write(f"{name}={secrets.token_urlsafe(32)}\n")
    else:
        raise SystemExit("usage: python -m ecs.identities nats-config | compose-env")


if __name__ == "__main__":
    main()
