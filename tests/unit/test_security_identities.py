"""The NATS identity table (ecs.identities) and the broker configurations made from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecs import identities, streams

ROOT = Path(__file__).resolve().parents[2]
GATEWAYS = [identities.gateway(g) for g in identities.COMPOSE_GATEWAYS]


def test_compose_and_k8s_mount_the_configuration_the_identity_table_makes():
    expected = identities.server_config_template(GATEWAYS)
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


def test_each_service_publishes_its_own_domain_only():
    for owner in identities.SERVICES.values():
        domains = [p for p in owner.publish if not p.startswith(("$JS.", "deadletter.", "rpc."))]
        assert len(domains) == 1
        assert identities.owner_of(domains[0].removesuffix(".>") + ".x") == owner.user
        assert "$JS.API.STREAM.DELETE.>" in owner.deny_publish


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
    assert perms["subscribe"] == {"allow": [*(f"{d}.>" for d in identities.OWNERS), "_INBOX.>"]}
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
