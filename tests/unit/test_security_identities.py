"""The NATS identity table (ecs.identities) and the broker configurations made from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecs import identities, streams

ROOT = Path(__file__).resolve().parents[2]
GATEWAYS = [identities.gateway(g) for g in identities.COMPOSE_GATEWAYS]
DEPLOYED = [*GATEWAYS, identities.OBSERVER]
"""The identities besides the services and admin that compose and k8s give a broker user."""


def test_compose_and_k8s_mount_the_configuration_the_identity_table_makes():
    expected = identities.server_config_template(DEPLOYED)
    assert expected == _main_output(["nats-config"])
    assert (ROOT / "deploy" / "compose" / "nats.conf").read_text() == expected
    (config_map, *_) = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "nats.yaml").read_text())
    assert expected in config_map["data"]["nats.conf"]


def test_compose_has_no_default_secrets_and_gives_each_service_its_identity():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text and ":-compose" not in text
    prefixes = {"INTAKE_": "incident-intake", "DISPATCH_": "dispatch", "STOCKPILE_": "resource-stockpile"}
    prefixes |= {"SHELTER_": "shelter-registry", "NOTIFICATION_": "public-notification"}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for prefix, identity in prefixes.items():
            if f"{prefix}NATS_URL" in env:
                assert env[f"{prefix}NATS_USER"] == identity == name
                assert identities.password_variable(identity) in env[f"{prefix}NATS_PASSWORD"]


def _main_output(argv: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        identities.main(argv)
    return out.getvalue()


def test_compose_and_k8s_brokers_get_password_hashes_of_every_identity_observer_included():
    users = [*identities.SERVICES, *(i.user for i in DEPLOYED), identities.ADMIN_USER]
    hashes = [identities.bcrypt_variable(u) for u in users]
    assert "NATS_BCRYPT_OBSERVER" in hashes
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broker_env = compose["services"]["nats"]["environment"]
    assert sorted(broker_env) == sorted(hashes)  # and no clear password at all
    for name, service in compose["services"].items():
        if name != "nats":
            assert not any(k.startswith("NATS_BCRYPT_") for k in service.get("environment", {})), name
    template = identities.server_config_template(DEPLOYED)
    assert all(f"${h}" in template for h in hashes) and "NATS_PASSWORD_" not in template
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "config.yaml").read_text()))
    (broker_secret,) = [d for d in docs if d["metadata"]["name"] == "nats-password-hashes"]
    assert sorted(broker_secret["stringData"]) == sorted(hashes)
    statefulset = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "nats.yaml").read_text())][-1]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "nats-password-hashes"}} in container["envFrom"]


def test_compose_env_gives_each_identity_a_password_and_the_quoted_hash_of_it():
    import bcrypt

    values = dict(line.split("=", 1) for line in _main_output(["compose-env"]).splitlines())
    for user in (*identities.SERVICES, *(i.user for i in DEPLOYED), identities.ADMIN_USER):
        password = values[identities.password_variable(user)]
        quoted = values[identities.bcrypt_variable(user)]
        # Single quotes: compose takes the value literally; double quotes: nats-server a string.
        assert quoted.startswith("'\"$2b$10$") and quoted.endswith("\"'")
        assert bcrypt.checkpw(password.encode(), quoted[2:-2].encode())
    assert all(values[s] for s in identities.DEPLOYMENT_SECRETS)


def test_a_broker_configuration_holds_bcrypt_hashes_never_passwords():
    import bcrypt

    config = identities.server_config({"dispatch": "dispatch-pw-0123456789"}, "admin-pw-0123456789", cost=4)
    assert "pw-0123456789" not in config
    hashes = [u["password"] for u in _users(config)]
    assert [h[:7] for h in hashes] == ["$2b$04$", "$2b$04$"]
    assert bcrypt.checkpw(b"dispatch-pw-0123456789", hashes[0].encode())
    assert identities.DEFAULT_BCRYPT_COST >= 10
    assert identities.hash_password("x").startswith(f"$2b${identities.DEFAULT_BCRYPT_COST}$")


def _users(config: str) -> list[dict]:
    import json

    return json.loads(config.split("users = ", 1)[1].rsplit("}", 1)[0])


def test_each_service_publishes_its_own_domain_only():
    for owner in identities.SERVICES.values():
        domains = [p for p in owner.publish if not p.startswith(("$JS.", "deadletter.", "rpc."))]
        assert len(domains) == 1
        assert identities.owner_of(domains[0].removesuffix(".>") + ".x") == owner.user
        assert "$JS.API.STREAM.DELETE.>" in owner.deny_publish


def test_each_service_may_use_the_jetstream_api_only_for_what_it_declares():
    """No wildcard over the JetStream API, acks or feeds: each subject names one of its own
    streams or consumers (ecs.streams.USES); replies come to its own inboxes only."""
    assert set(identities.SERVICES) == set(streams.USES)
    for name, ident in identities.SERVICES.items():
        uses = streams.USES[name]
        mine = {s.name for s in uses.streams} | {"DEADLETTER"}
        consumers = {f"{c.stream.name}.{c.name}" for c in uses.consumers}
        for subject in ident.publish:
            if subject.startswith("$JS.API.STREAM."):
                op, stream = subject.removeprefix("$JS.API.STREAM.").split(".")
                assert stream in mine and op in {"INFO", "CREATE", "UPDATE"}, subject
                assert op != "UPDATE" or stream in {s.name for s in uses.owns}, subject
            elif subject.startswith("$JS.API.CONSUMER."):
                op, rest = subject.removeprefix("$JS.API.CONSUMER.").split(".", 1)
                assert op in {"CREATE", "INFO", "MSG"}, subject
                where = rest.removeprefix("NEXT.").removesuffix(".>")
                assert where in consumers, subject
            elif subject.startswith("$JS."):
                assert (
                    subject.startswith("$JS.ACK.") and subject.removeprefix("$JS.ACK.").removesuffix(".>") in consumers
                )
        assert not any(p.endswith(("$JS.API.>", "$JS.>", "$JS.ACK.>")) or p == ">" for p in ident.publish), name
        feeds = [c.feed_subject for c in uses.consumers if c.push]
        answers = ["rpc.dispatch.>"] if name == "dispatch" else []
        assert list(ident.subscribe) == [f"{identities.inbox_prefix(name)}.>", *feeds, *answers]
    assert identities.SERVICES["dispatch"].subscribe[1] == "_feed.dispatch-locations"
    assert "$JS.API.STREAM.UPDATE.INCIDENTS" not in identities.SERVICES["dispatch"].publish
    assert "$JS.API.STREAM.CREATE.INCIDENTS" in identities.SERVICES["dispatch"].publish


def test_a_service_dead_letters_only_the_subjects_it_consumes():
    assert [p for p in identities.SERVICES["dispatch"].publish if p.startswith("deadletter.")] == [
        "deadletter.incident.>",
        "deadletter.vehicle.location.*",
    ]


def test_a_gateway_publishes_only_its_own_alarm_subject():
    gw = identities.gateway("gw-7")
    assert gw.publish == ("alarm.in.gw-7",)
    assert streams.ALARMS.subjects == ("alarm.in.*",)


def test_the_observer_subscribes_to_every_domain_and_publishes_nothing():
    observer = identities.OBSERVER
    assert observer.user == identities.OBSERVER_USER == "observer"
    assert observer.publish == ()
    perms = observer.permissions()
    # No allow list at all (an empty one would let anything not denied through), and ">" denied.
    assert perms["publish"] == {"deny": [">"]}
    # Core subscriptions only: it never asks anything, so it needs no inbox.
    assert perms["subscribe"] == {"allow": [f"{d}.>" for d in identities.OWNERS]}
    assert "allow_responses" not in perms
    config = identities.server_config({"observer": "pw-0123456789"}, extra=[observer])
    assert '"user": "observer"' in config and '"deny": [\n          ">"\n        ]' in config


def test_the_observer_has_a_password_wherever_a_broker_is_configured(tmp_path):
    with pytest.raises(KeyError, match="observer"):
        identities.server_config({}, extra=[identities.OBSERVER])
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text('{"nats:observer": "s3cret"}')
    assert identities.local_password(identities.OBSERVER_USER, secrets_file) == "s3cret"
    with pytest.raises(KeyError, match="no NATS password for admin"):
        identities.local_password("admin", secrets_file)
    run_py = (ROOT / "deploy" / "local" / "run.py").read_text()
    assert '"nats:observer"' in run_py and "identities.OBSERVER" in run_py
