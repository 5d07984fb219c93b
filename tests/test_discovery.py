"""Home Assistant device-based discovery payloads."""

from __future__ import annotations

import json

import pytest

from edge_asd.detection.states import MachineState
from edge_asd.mqtt.discovery import (
    AVAILABILITY_TEMPLATE,
    DiscoveryMessage,
    gateway_discovery,
    gateway_id,
    machine_id,
    object_id,
    removal_message,
    stale_discovery,
)
from edge_asd.mqtt.messages import Topics

TOPICS = Topics("edge-asd", "gw1")


def _messages(machines: list[str] | None = None) -> list[DiscoveryMessage]:
    return gateway_discovery("gw1", machines or ["press", "fan"], TOPICS, "1.2.3")


def test_one_device_message_for_the_gateway_and_one_per_machine() -> None:
    messages = _messages()
    assert [m.topic for m in messages] == [
        "homeassistant/device/edge_asd_gw1/config",
        "homeassistant/device/edge_asd_gw1_press/config",
        "homeassistant/device/edge_asd_gw1_fan/config",
    ]
    assert all(m.retain for m in messages)
    for message in messages:
        assert message.payload is not None
        assert set(message.payload) == {"dev", "o", "availability", "qos", "cmps"}
        assert message.payload["o"] == {
            "name": "edge-asd",
            "sw": "1.2.3",
            "url": message.payload["o"]["url"],
        }
        for component in message.payload["cmps"].values():
            assert "p" in component and "unique_id" in component
        assert json.loads(message.encode()) == message.payload


def test_custom_discovery_prefix() -> None:
    messages = gateway_discovery("gw1", ["press"], TOPICS, "1", prefix="ha")
    assert messages[1].topic == "ha/device/edge_asd_gw1_press/config"


def test_machine_device_is_linked_to_the_gateway() -> None:
    gateway, press, _fan = _messages()
    assert gateway.payload is not None and press.payload is not None
    assert gateway.payload["dev"]["identifiers"] == ["edge_asd_gw1"]
    assert gateway.payload["dev"]["sw_version"] == "1.2.3"
    assert press.payload["dev"] == {
        "identifiers": ["edge_asd_gw1_press"],
        "name": "press",
        "manufacturer": "edge-asd",
        "model": "Monitored machine",
        "via_device": "edge_asd_gw1",
    }


def test_availability_maps_stopped_and_offline_to_unavailable() -> None:
    for message in _messages():
        assert message.payload is not None
        assert message.payload["availability"] == [
            {
                "topic": "edge-asd/gw1/availability",
                "value_template": AVAILABILITY_TEMPLATE,
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
    assert AVAILABILITY_TEMPLATE == "{{ 'online' if value == 'online' else 'offline' }}"


def test_machine_entities_read_the_daemons_topics() -> None:
    press = _messages()[1].payload
    assert press is not None
    cmps = press["cmps"]
    assert set(cmps) == {
        "anomalous",
        "state",
        "score",
        "level",
        "environment",
        "alarm",
        "mute",
        "detection",
        "learn_last_event",
    }
    assert cmps["anomalous"]["p"] == "binary_sensor"
    assert cmps["anomalous"]["device_class"] == "problem"
    assert cmps["anomalous"]["state_topic"] == TOPICS.state("press")
    assert cmps["state"]["p"] == "sensor"
    assert cmps["state"]["device_class"] == "enum"
    assert cmps["state"]["options"] == [s.value for s in MachineState]
    assert cmps["state"]["state_topic"] == "edge-asd/gw1/press/state"
    assert cmps["score"]["state_topic"] == TOPICS.score("press") == "edge-asd/gw1/press/score"
    assert cmps["score"]["value_template"] == "{{ value_json.score }}"
    assert cmps["level"]["value_template"] == "{{ value_json.dbfs }}"
    assert cmps["level"]["unit_of_measurement"] == "dBFS"
    assert cmps["alarm"]["p"] == "event"
    assert cmps["alarm"]["state_topic"] == TOPICS.event("press") == "edge-asd/gw1/press/event"
    assert cmps["alarm"]["event_types"] == ["start", "end"]
    environment = cmps["environment"]
    assert environment["p"] == "binary_sensor" and environment["device_class"] == "problem"
    assert environment["state_topic"] == TOPICS.environment("press")
    assert environment["state_topic"] == "edge-asd/gw1/press/environment"


def test_controls_command_topics() -> None:
    cmps = _messages()[1].payload["cmps"]  # type: ignore[index]
    assert cmps["mute"]["p"] == "switch"
    assert cmps["mute"]["command_topic"] == "edge-asd/gw1/press/cmd/mute"
    assert cmps["mute"]["state_topic"] == "edge-asd/gw1/press/cmd/mute/state"
    assert cmps["detection"]["command_topic"] == "edge-asd/gw1/press/cmd/detection"
    assert cmps["learn_last_event"]["p"] == "button"
    assert cmps["learn_last_event"]["command_topic"] == "edge-asd/gw1/press/cmd/learn_last_event"
    assert cmps["learn_last_event"]["payload_press"] == "PRESS"


def test_gateway_has_diagnostics_from_stats() -> None:
    gateway = _messages()[0].payload
    assert gateway is not None
    cmps = gateway["cmps"]
    assert {"inference_ms_p50", "dropped_windows", "outbox_depth"} <= set(cmps)
    for component in cmps.values():
        assert component["p"] == "sensor"
        assert component["state_topic"] == TOPICS.stats == "edge-asd/gw1/stats"
        assert component["entity_category"] == "diagnostic"
    assert cmps["outbox_depth"]["value_template"] == "{{ value_json.outbox_depth }}"
    assert cmps["dropped_windows"]["state_class"] == "total_increasing"
    assert cmps["inference_ms_p50"]["unit_of_measurement"] == "ms"


def test_unique_ids_are_stable_and_unique() -> None:
    first = _messages(["press", "fan"])
    again = _messages(["fan", "press", "pump"])
    ids = {
        m.topic: sorted(c["unique_id"] for c in m.payload["cmps"].values())  # type: ignore[union-attr]
        for m in first
    }
    ids_again = {
        m.topic: sorted(c["unique_id"] for c in m.payload["cmps"].values())  # type: ignore[union-attr]
        for m in again
    }
    for topic, uids in ids.items():
        assert ids_again[topic] == uids  # adding a machine changes nobody else's ids
    everything = [uid for uids in ids_again.values() for uid in uids]
    assert len(everything) == len(set(everything))
    assert "edge_asd_gw1_press_score" in everything


def test_names_ha_does_not_accept_are_made_safe_and_kept_apart() -> None:
    assert object_id("edge_asd", "gw1", "press") == "edge_asd_gw1_press"
    a = machine_id("gw1", "line 1")
    b = machine_id("gw1", "line_1")
    assert a != b
    assert a.startswith("edge_asd_gw1_line_1_")
    topics = Topics("edge-asd", "gw.1")
    messages = gateway_discovery("gw.1", ["line 1"], topics, "1")
    for message in messages:
        assert message.topic.split("/")[2].replace("_", "").replace("-", "").isalnum()
    assert messages[1].payload["dev"]["via_device"] == gateway_id("gw.1")  # type: ignore[index]


def test_inconsistent_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="node"):
        gateway_discovery("gw2", ["press"], TOPICS, "1")
    with pytest.raises(ValueError, match="unique"):
        gateway_discovery("gw1", ["press", "press"], TOPICS, "1")
    with pytest.raises(ValueError, match="machine"):
        gateway_discovery("gw1", ["a/b"], TOPICS, "1")


def test_removal_is_an_empty_retained_payload() -> None:
    message = removal_message("gw1", "press")
    assert message.topic == "homeassistant/device/edge_asd_gw1_press/config"
    assert message.retain
    assert message.payload is None
    assert message.encode() == b""


def test_stale_machines_of_this_gateway_are_found_in_retained_configs() -> None:
    retained: dict[str, bytes | str] = {m.topic: m.encode() for m in _messages(["press", "old"])}
    other = gateway_discovery("gw9", ["x"], Topics("edge-asd", "gw9"), "1")
    retained.update({m.topic: m.encode() for m in other})
    retained["homeassistant/device/junk/config"] = b"not json"
    stale = stale_discovery(retained, "gw1", ["press"])
    assert stale == [removal_message("gw1", "old")]


def _render(template: str, value: str) -> str:
    """Render like HA does (Jinja2 sandbox, `value` and `value_json`, HA's `to_json`)."""
    jinja2 = pytest.importorskip("jinja2", reason="templates are checked with Jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    env.filters["to_json"] = lambda obj: json.dumps(obj)
    try:
        value_json = json.loads(value)
    except ValueError:
        value_json = None
    assert jinja2 is not None
    return env.from_string(template).render(value=value, value_json=value_json)


def test_templates_render_what_ha_expects() -> None:
    assert _render(AVAILABILITY_TEMPLATE, "online") == "online"
    assert _render(AVAILABILITY_TEMPLATE, "stopped") == "offline"
    assert _render(AVAILABILITY_TEMPLATE, "offline") == "offline"
    cmps = _messages()[1].payload["cmps"]  # type: ignore[index]
    anomalous = cmps["anomalous"]["value_template"]
    assert _render(anomalous, "anomalous") == "ON"
    assert _render(anomalous, "normal") == "OFF"
    assert _render(anomalous, "idle") == "OFF"
    assert _render(anomalous, "no_audio") == "None"  # HA: unknown
    assert _render(anomalous, "disabled") == "None"
    assert _render(anomalous, "muted") == "OFF"
    # The detector's verdict is not to be trusted in surroundings calibration never heard.
    assert _render(anomalous, "environment_changed") == "None"
    environment = cmps["environment"]
    changed = {
        "changed": True,
        "level_change_db": 9.5,
        "bands": [{"hz": [447, 562], "change_db": 12.1}],
    }
    assert _render(environment["value_template"], json.dumps(changed)) == "ON"
    assert _render(environment["value_template"], json.dumps({"changed": False})) == "OFF"
    assert json.loads(_render(environment["json_attributes_template"], json.dumps(changed))) == {
        "level_change_db": 9.5,
        "bands": [{"hz": [447, 562], "change_db": 12.1}],
    }
    ack = {"ok": True, "reason": None, "value": "ON", "until": "2026-11-22T04:04:05.123Z"}
    assert _render(cmps["mute"]["value_template"], json.dumps(ack)) == "ON"
    assert json.loads(_render(cmps["mute"]["json_attributes_template"], json.dumps(ack))) == {
        "ok": True,
        "reason": None,
        "until": "2026-11-22T04:04:05.123Z",
    }
    off = {"ok": False, "reason": "bad", "value": "OFF"}
    assert _render(cmps["detection"]["value_template"], json.dumps(off)) == "OFF"
    alarm = cmps["alarm"]["value_template"]
    end = {
        "type": "end",
        "event_id": "abc",
        "peak_score": 2.5,
        "threshold": 1.0,
        "explanation": "+9 dB at 2.8-3.6 kHz, steady",
        "clip": "/var/lib/edge-asd/clips/abc.flac",
    }
    assert json.loads(_render(alarm, json.dumps(end))) == {
        "event_type": "end",
        "event_id": "abc",
        "peak_score": 2.5,
        "threshold": 1.0,
        "explanation": "+9 dB at 2.8-3.6 kHz, steady",
        "clip": "/var/lib/edge-asd/clips/abc.flac",
        "environment": None,
    }
    start = {"type": "start", "event_id": "abc", "peak_score": 1.5, "threshold": 1.0}
    assert json.loads(_render(alarm, json.dumps(start)))["clip"] is None
    assert _render(alarm, json.dumps({**start, "type": "update"})) == ""  # HA ignores it
    attrs = cmps["score"]["json_attributes_template"]
    assert json.loads(_render(attrs, json.dumps({"score": 0.3, "threshold": 0.5}))) == {
        "threshold": 0.5
    }
