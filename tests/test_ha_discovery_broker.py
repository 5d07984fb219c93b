"""Home Assistant discovery through `MqttPublisher` against a real Mosquitto broker: exact
retained configs, a Home Assistant restart, a machine that left the config, availability."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from paho.mqtt import publish as paho_publish

from edge_asd.config import MqttConfig
from edge_asd.mqtt.discovery import gateway_discovery, removal_message
from edge_asd.mqtt.messages import Topics
from edge_asd.mqtt.outbox import Outbox
from edge_asd.mqtt.publisher import MqttPublisher
from tests.mqtt_fixture import (
    MosquittoBroker,
    Subscriber,
    mosquitto_broker,  # noqa: F401 - fixture
    mosquitto_path,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

NODE = "gw-ha"
PREFIX = "edge-asd"
HA = "homeassistant"
WAIT = 20.0
TOPICS = Topics(PREFIX, NODE)


def _wait(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _publisher(broker: MosquittoBroker, tmp_path: Path, machines: list[str]) -> MqttPublisher:
    config = MqttConfig.from_dict(
        {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "keepalive_seconds": 5}
    )
    outbox = Outbox(tmp_path / f"outbox-{len(machines)}.sqlite")
    publisher = MqttPublisher(config, outbox, node_id=NODE, reconnect_max_delay_seconds=1)
    publisher.enable_discovery(
        gateway_discovery(NODE, machines, TOPICS, "9.9", prefix=HA), prefix=HA, machines=machines
    )
    return publisher


def _retained(broker: MosquittoBroker, topic_filter: str) -> dict[str, bytes]:
    """What a fresh subscriber gets as retained messages (empty payloads are not retained)."""
    with Subscriber(broker.host, broker.port, topic_filter) as sub:
        time.sleep(0.5)
        return {m.topic: m.payload for m in sub.messages() if m.retain}


def test_discovery_is_retained_resent_on_ha_restart_and_stale_machines_removed(
    mosquitto_broker: MosquittoBroker,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    broker = mosquitto_broker
    # A first run announced press and an old machine.
    first = _publisher(broker, tmp_path, ["press", "old"])
    first.start()
    try:
        assert _wait(lambda: first.discovery_sent >= 1)
        old_topic = removal_message(NODE, "old", prefix=HA).topic
        assert _wait(lambda: old_topic in _retained(broker, f"{HA}/#"), 10)
    finally:
        first.stop(2)
    # Another gateway's device must survive our clean-up.
    other = gateway_discovery("gw-other", ["x"], Topics(PREFIX, "gw-other"), "1", prefix=HA)

    for message in other:
        paho_publish.single(
            message.topic,
            message.encode(),
            qos=1,
            retain=True,
            hostname=broker.host,
            port=broker.port,
        )

    # The machine "old" left the config.
    publisher = _publisher(broker, tmp_path, ["press"])
    expected = {
        m.topic: m.encode() for m in gateway_discovery(NODE, ["press"], TOPICS, "9.9", prefix=HA)
    }
    with Subscriber(broker.host, broker.port, [f"{HA}/#", f"{PREFIX}/#"]) as sub:
        publisher.start()
        try:
            # The removal: an empty retained payload on the old machine's config topic.
            assert sub.wait_for_payload(old_topic, b"", WAIT)
            assert _wait(lambda: publisher.discovery_sent >= 1)
            retained = _retained(broker, f"{HA}/#")
            # Exactly our current configs plus the other gateway's, byte for byte.
            assert {t: p for t, p in retained.items() if "edge_asd_gw-ha" in t} == expected
            assert all(retained[m.topic] == m.encode() for m in other)
            assert old_topic not in retained

            # Home Assistant restarts: it publishes "online" on its status topic.
            sent = publisher.discovery_sent
            before = len(sub.messages(f"{HA}/device/+/config"))
            paho_publish.single(f"{HA}/status", "online", hostname=broker.host, port=broker.port)
            assert _wait(lambda: publisher.discovery_sent == sent + 1)
            assert sub.wait_for(
                lambda msgs: sum(m.topic in expected for m in msgs[before:]) >= len(expected),
                WAIT,
            )
            # Anything else on the status topic ("offline") does not resend.
            paho_publish.single(f"{HA}/status", "offline", hostname=broker.host, port=broker.port)
            time.sleep(0.5)
            assert publisher.discovery_sent == sent + 1
            assert sub.wait_for_payload(TOPICS.availability, b"online", WAIT)
        finally:
            publisher.stop(2)
        # A clean stop reads "stopped", which the discovery's availability template maps to
        # HA's not-available.
        assert sub.wait_for_payload(TOPICS.availability, b"stopped", WAIT)
    assert _retained(broker, TOPICS.availability)[TOPICS.availability] == b"stopped"
