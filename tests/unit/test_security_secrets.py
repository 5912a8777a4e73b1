"""A service refuses to start on a default, placeholder or short secret, naming the setting; the
tests' own switch (ECS_DEV_SECRETS) is the only way around it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dispatch.settings import DispatchSettings
from ecs.settings import MIN_SECRET_LENGTH, InsecureSecret
from incident_intake.settings import IntakeSettings

STRONG = "k" * 8 + "Zr4_0pQ-9sLm2XvB8nT1cW6yE3uA5dF7"


def intake(**kw) -> IntakeSettings:
    return IntakeSettings(dev_secrets=False, auth_secret=STRONG, caller_pepper=STRONG[::-1], **kw)


def test_the_shipped_default_auth_secret_is_refused_naming_the_setting():
    with pytest.raises(InsecureSecret, match="DISPATCH_AUTH_SECRET is the default shipped with the code"):
        DispatchSettings(dev_secrets=False).check_secrets()


def test_the_shipped_default_caller_pepper_is_refused():
    with pytest.raises(InsecureSecret, match="INTAKE_CALLER_PEPPER is the default"):
        IntakeSettings(dev_secrets=False, auth_secret=STRONG).check_secrets()


@pytest.mark.parametrize(
    "secret, why",
    [("s" * (MIN_SECRET_LENGTH - 1), "shorter than"), ("compose-demo-secret-change-me-0123456789", "placeholder")],
)
def test_a_short_or_placeholder_secret_is_refused(secret, why):
    with pytest.raises(InsecureSecret, match=f"DISPATCH_AUTH_SECRET is .*{why}"):
        DispatchSettings(dev_secrets=False, auth_secret=secret).check_secrets()


def test_a_gateway_secret_from_the_compose_file_is_refused(tmp_path):
    path = tmp_path / "gateways.json"
    path.write_text(json.dumps({"gateways": {"demo-gw": {"secret": "compose-demo-gateway-secret-change-me"}}}))
    with pytest.raises(InsecureSecret, match="gateway demo-gw"):
        intake(gateways_file=path).check_secrets()


def test_long_random_secrets_pass_and_oidc_needs_no_local_secret():
    intake(gateways={"gw-1": STRONG + "x"}).check_secrets()
    DispatchSettings(dev_secrets=False, oidc_jwks_url="https://idp.example.org/jwks").check_secrets()
    DispatchSettings(dev_secrets=True).check_secrets()  # tests and trying things out only


def test_a_service_process_refuses_to_start_on_the_default_secret(tmp_path):
    env = {
        "DISPATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}",
        "DISPATCH_NATS_URL": "nats://127.0.0.1:1",
        "ECS_DEV_SECRETS": "false",
        "PATH": "/usr/bin:/bin",
    }
    code = "from dispatch.main import run; run()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "DISPATCH_AUTH_SECRET is the default shipped with the code" in done.stdout + done.stderr
