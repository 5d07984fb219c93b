"""Home Assistant MQTT discovery: the gateway and its machines appear in HA without YAML.

Device-based discovery (HA 2024.11+): one retained JSON message per HA *device* on
``<discovery_prefix>/device/<object_id>/config``, with the device (``dev``), the origin
(``o``) and its entities under ``cmps``, each with a platform (``p``) and a ``unique_id``.

HA gives every component of one device-based message the message's device (it overwrites any
``device`` a component carries), so a device per machine linked to the gateway by
``via_device`` needs one message per machine. `gateway_discovery` therefore returns the
gateway's message followed by one message per machine:

- gateway device: diagnostic sensors from ``<prefix>/<node>/stats`` (inference time, dropped
  windows, outbox depth, reconnects, capture overruns);
- each machine's device (``via_device``: the gateway): anomalous (binary_sensor, problem) and
  machine state (enum sensor) from ``<machine>/state``; surroundings changed (binary_sensor,
  problem) from ``<machine>/environment``; score and level (dBFS) from
  ``<machine>/score``; an ``event`` entity firing ``start``/``end`` from ``<machine>/event``;
  and the controls: mute and enable-detection switches and a learn-last-event button, whose
  commands go to ``<prefix>/<node>/<machine>/cmd/<name>``.

Availability: the node publishes ``online``, ``stopped`` (clean stop) or ``offline`` (the
broker's last will) on ``<prefix>/<node>/availability``. HA only knows available / not
available, so a value template maps ``online`` to ``online`` and anything else to ``offline``:
a stopped daemon reads as unavailable, as it should.

Everything here is a pure function of its arguments: the same config always yields the same
topics, unique ids and payloads, so republishing on every connect is idempotent and HA keeps
the entity ids people built dashboards and automations on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge_asd.detection.states import EventType, MachineState
from edge_asd.mqtt.messages import Availability, Topics, check_machine_name

DEFAULT_DISCOVERY_PREFIX: Final = "homeassistant"
ORIGIN_NAME: Final = "edge-asd"
ORIGIN_URL: Final = "https://github.com/edge-asd/edge-asd"
MANUFACTURER: Final = "edge-asd"

SWITCH_ON: Final = "ON"
SWITCH_OFF: Final = "OFF"
BUTTON_PRESS: Final = "PRESS"
CONTROL_SWITCHES: Final = ("mute", "detection")
"""Switch controls: mute alarms for a machine; enable (ON) or pause (OFF) its detection."""
CONTROL_BUTTONS: Final = ("learn_last_event",)
"""Button controls: add the machine's last event to what it considers normal."""
CONTROL_STATE_LEAF: Final = "state"
"""A switch's state is read back from ``<command topic>/state`` (retained JSON acknowledgement
whose ``value`` is ON/OFF)."""

_OBJECT_ID_CHARS: Final = re.compile(r"[^a-zA-Z0-9_-]")
"""HA accepts only these in a discovery topic's object id; unique ids follow the same rule."""
_HASH_CHARS: Final = 8

AVAILABILITY_TEMPLATE: Final = (
    "{{ 'online' if value == '" + Availability.ONLINE.value + "' else 'offline' }}"
)
ANOMALOUS_TEMPLATE: Final = (
    "{% if value == '" + MachineState.ANOMALOUS.value + "' %}ON"
    "{% elif value in ['"
    + MachineState.NO_AUDIO.value
    + "', '"
    + MachineState.CALIBRATING.value
    + "', '"
    + MachineState.DISABLED.value
    + "', '"
    + MachineState.ENVIRONMENT_CHANGED.value
    + "'] %}None"
    "{% else %}OFF{% endif %}"
)
"""No audio, calibrating, detection switched off or surroundings unlike calibration (the
detector's verdict is not to be trusted then): HA shows 'unknown' (the template's 'None')
rather than a false 'OK'. Muted reads OFF: silencing the alarm is what muting is for."""
ENVIRONMENT_TEMPLATE: Final = "{{ 'ON' if value_json.changed else 'OFF' }}"
ENVIRONMENT_ATTRIBUTES_TEMPLATE: Final = (
    "{{ {'level_change_db': value_json.level_change_db, 'bands': value_json.bands} | to_json }}"
)
"""The environment message's level change and most changed bands, as the sensor's attributes."""
CONTROL_VALUE_TEMPLATE: Final = "{{ value_json.value }}"
"""A control's state topic carries the daemon's JSON acknowledgement (`service.controls`);
its ``value`` is the switch's ON/OFF."""
CONTROL_ATTRIBUTES_TEMPLATE: Final = (
    "{{ {'ok': value_json.ok, 'reason': value_json.reason, 'until': value_json.get('until')} "
    "| to_json }}"
)
"""The last command's outcome and, for mute, until when, as the switch's attributes."""
EVENT_TEMPLATE: Final = (
    "{% if value_json.type in ['" + EventType.START.value + "', '" + EventType.END.value + "'] %}"
    "{{ {'event_type': value_json.type, 'event_id': value_json.event_id, "
    "'peak_score': value_json.peak_score, 'threshold': value_json.threshold, "
    "'explanation': value_json.get('explanation'), 'clip': value_json.get('clip'), "
    "'environment': value_json.get('environment')} "
    "| to_json }}{% endif %}"
)
"""Start and end fire the event entity (with the event's id, peak, explanation and clip as
attributes); updates render empty, which HA ignores without a warning."""


@dataclass(frozen=True)
class DiscoveryMessage:
    """One retained discovery message; `payload` None is a removal (empty retained payload)."""

    topic: str
    payload: dict[str, Any] | None

    retain: bool = True

    def encode(self) -> bytes:
        """The wire payload: compact JSON, or empty for a removal."""
        if self.payload is None:
            return b""
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def object_id(*parts: str) -> str:
    """A discovery object id / unique id from names: characters HA does not accept become
    '_', and then a short hash of the original keeps 'line 1' and 'line_1' apart."""
    raw = "_".join(parts)
    safe = _OBJECT_ID_CHARS.sub("_", raw)
    if safe == raw:
        return safe
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    return f"{safe}_{digest}"


def gateway_id(node_id: str) -> str:
    """The gateway's HA device identifier (and its discovery object id)."""
    return object_id("edge_asd", node_id)


def machine_id(node_id: str, machine: str) -> str:
    """A machine's HA device identifier (and its discovery object id)."""
    return object_id("edge_asd", node_id, machine)


def discovery_topic(device_object_id: str, prefix: str = DEFAULT_DISCOVERY_PREFIX) -> str:
    return f"{prefix}/device/{device_object_id}/config"


def command_topic(topics: Topics, machine: str, name: str) -> str:
    """Where HA sends a control's command: ``<prefix>/<node>/<machine>/cmd/<name>``."""
    check_machine_name(machine)
    return f"{topics.base}/{machine}/cmd/{name}"


def control_state_topic(topics: Topics, machine: str, name: str) -> str:
    """Where the daemon reports a switch's state (retained ON/OFF)."""
    return f"{command_topic(topics, machine, name)}/{CONTROL_STATE_LEAF}"


def _availability(topics: Topics) -> list[dict[str, str]]:
    return [
        {
            "topic": topics.availability,
            "value_template": AVAILABILITY_TEMPLATE,
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]


def _origin(version: str) -> dict[str, str]:
    return {"name": ORIGIN_NAME, "sw": version, "url": ORIGIN_URL}


def _gateway_device(node_id: str, version: str) -> dict[str, Any]:
    return {
        "identifiers": [gateway_id(node_id)],
        "name": f"edge-asd {node_id}",
        "manufacturer": MANUFACTURER,
        "model": "Anomalous sound detection gateway",
        "sw_version": version,
    }


def _stats_sensor(
    uid: str,
    topics: Topics,
    name: str,
    field: str,
    *,
    unit: str | None = None,
    state_class: str = "measurement",
    icon: str | None = None,
) -> dict[str, Any]:
    component: dict[str, Any] = {
        "p": "sensor",
        "name": name,
        "unique_id": f"{uid}_{field}",
        "state_topic": topics.stats,
        "value_template": "{{ value_json." + field + " }}",
        "state_class": state_class,
        "entity_category": "diagnostic",
    }
    if unit is not None:
        component["unit_of_measurement"] = unit
    if icon is not None:
        component["icon"] = icon
    return component


def gateway_components(node_id: str, topics: Topics) -> dict[str, dict[str, Any]]:
    """The gateway device's entities: health counters from the stats topic."""
    uid = gateway_id(node_id)
    return {
        "inference_ms_p50": _stats_sensor(
            uid, topics, "Inference time (median)", "inference_ms_p50", unit="ms", icon="mdi:timer"
        ),
        "inference_ms_p95": _stats_sensor(
            uid, topics, "Inference time (p95)", "inference_ms_p95", unit="ms", icon="mdi:timer"
        ),
        "dropped_windows": _stats_sensor(
            uid,
            topics,
            "Dropped windows",
            "dropped_windows",
            state_class="total_increasing",
            icon="mdi:waveform",
        ),
        "capture_overruns": _stats_sensor(
            uid,
            topics,
            "Capture overruns",
            "capture_overruns",
            state_class="total_increasing",
            icon="mdi:microphone-off",
        ),
        "outbox_depth": _stats_sensor(
            uid, topics, "Outbox depth", "outbox_depth", icon="mdi:tray-full"
        ),
        "reconnects": _stats_sensor(
            uid,
            topics,
            "MQTT reconnects",
            "reconnects",
            state_class="total_increasing",
            icon="mdi:lan-disconnect",
        ),
    }


def machine_components(node_id: str, machine: str, topics: Topics) -> dict[str, dict[str, Any]]:
    """One machine's entities, keyed by component id (stable: HA derives the discovery id)."""
    uid = machine_id(node_id, machine)
    state = topics.state(machine)
    score = topics.score(machine)
    components: dict[str, dict[str, Any]] = {
        "anomalous": {
            "p": "binary_sensor",
            "name": "Anomalous",
            "unique_id": f"{uid}_anomalous",
            "device_class": "problem",
            "state_topic": state,
            "value_template": ANOMALOUS_TEMPLATE,
            "payload_on": SWITCH_ON,
            "payload_off": SWITCH_OFF,
        },
        "state": {
            "p": "sensor",
            "name": "State",
            "unique_id": f"{uid}_state",
            "device_class": "enum",
            "options": [s.value for s in MachineState],
            "state_topic": state,
            "icon": "mdi:state-machine",
        },
        "score": {
            "p": "sensor",
            "name": "Anomaly score",
            "unique_id": f"{uid}_score",
            "state_topic": score,
            "value_template": "{{ value_json.score }}",
            "json_attributes_topic": score,
            "json_attributes_template": "{{ {'threshold': value_json.threshold} | to_json }}",
            "state_class": "measurement",
            "suggested_display_precision": 3,
            "icon": "mdi:chart-bell-curve",
        },
        "level": {
            "p": "sensor",
            "name": "Level",
            "unique_id": f"{uid}_level",
            "state_topic": score,
            "value_template": "{{ value_json.dbfs }}",
            # dBFS is not one of HA's sound_pressure units (dB, dBA): no device class.
            "unit_of_measurement": "dBFS",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "icon": "mdi:volume-high",
        },
        "environment": {
            "p": "binary_sensor",
            "name": "Surroundings changed",
            "unique_id": f"{uid}_environment",
            "device_class": "problem",
            "state_topic": topics.environment(machine),
            "value_template": ENVIRONMENT_TEMPLATE,
            "json_attributes_topic": topics.environment(machine),
            "json_attributes_template": ENVIRONMENT_ATTRIBUTES_TEMPLATE,
            "payload_on": SWITCH_ON,
            "payload_off": SWITCH_OFF,
            "icon": "mdi:home-sound-out",
        },
        "alarm": {
            "p": "event",
            "name": "Alarm",
            "unique_id": f"{uid}_alarm",
            "state_topic": topics.event(machine),
            "event_types": [EventType.START.value, EventType.END.value],
            "value_template": EVENT_TEMPLATE,
            "icon": "mdi:alarm-light",
        },
    }
    for name, label, icon in (
        ("mute", "Mute alarms", "mdi:bell-off"),
        ("detection", "Detection", "mdi:ear-hearing"),
    ):
        components[name] = {
            "p": "switch",
            "name": label,
            "unique_id": f"{uid}_{name}",
            "command_topic": command_topic(topics, machine, name),
            "state_topic": control_state_topic(topics, machine, name),
            "value_template": CONTROL_VALUE_TEMPLATE,
            "json_attributes_topic": control_state_topic(topics, machine, name),
            "json_attributes_template": CONTROL_ATTRIBUTES_TEMPLATE,
            "payload_on": SWITCH_ON,
            "payload_off": SWITCH_OFF,
            "entity_category": "config",
            "icon": icon,
        }
    components["learn_last_event"] = {
        "p": "button",
        "name": "Learn last event as normal",
        "unique_id": f"{uid}_learn_last_event",
        "command_topic": command_topic(topics, machine, "learn_last_event"),
        "payload_press": BUTTON_PRESS,
        "entity_category": "config",
        "icon": "mdi:school",
    }
    return components


def machine_discovery(
    node_id: str,
    machine: str,
    topics: Topics,
    version: str,
    *,
    prefix: str = DEFAULT_DISCOVERY_PREFIX,
) -> DiscoveryMessage:
    """The device-based discovery message of one machine (its own device, via the gateway)."""
    device_id = machine_id(node_id, machine)
    device = {
        "identifiers": [device_id],
        "name": machine,
        "manufacturer": MANUFACTURER,
        "model": "Monitored machine",
        "via_device": gateway_id(node_id),
    }
    payload = {
        "dev": device,
        "o": _origin(version),
        "availability": _availability(topics),
        "qos": 1,
        "cmps": machine_components(node_id, machine, topics),
    }
    return DiscoveryMessage(discovery_topic(device_id, prefix), payload)


def gateway_discovery(
    node_id: str,
    machines: Iterable[str],
    topics: Topics,
    version: str,
    *,
    prefix: str = DEFAULT_DISCOVERY_PREFIX,
) -> list[DiscoveryMessage]:
    """Every retained discovery message of this gateway: the gateway's own device first, then
    one per machine. Publish all of them (retained, QoS 1) on every connect."""
    if topics.node_id != node_id:
        raise ValueError(f"topics are for node {topics.node_id!r}, not {node_id!r}")
    names = list(machines)
    if len(set(names)) != len(names):
        raise ValueError(f"machine names must be unique, got {names}")
    device_id = gateway_id(node_id)
    gateway = DiscoveryMessage(
        discovery_topic(device_id, prefix),
        {
            "dev": _gateway_device(node_id, version),
            "o": _origin(version),
            "availability": _availability(topics),
            "qos": 1,
            "cmps": gateway_components(node_id, topics),
        },
    )
    return [
        gateway,
        *(machine_discovery(node_id, m, topics, version, prefix=prefix) for m in names),
    ]


def removal_message(
    node_id: str, machine: str, *, prefix: str = DEFAULT_DISCOVERY_PREFIX
) -> DiscoveryMessage:
    """Empty retained payload on a machine's discovery topic: HA removes its entities and
    device, and the broker forgets the retained config (a machine that left the config)."""
    return DiscoveryMessage(discovery_topic(machine_id(node_id, machine), prefix), None)


def stale_discovery(
    retained: Mapping[str, bytes | str],
    node_id: str,
    machines: Iterable[str],
    *,
    prefix: str = DEFAULT_DISCOVERY_PREFIX,
) -> list[DiscoveryMessage]:
    """Removal messages for machines of this gateway that left the config.

    `retained` maps topic to payload of what the broker holds under
    ``<prefix>/device/+/config`` (subscribe right after connecting, collect the retained
    messages). A config is this gateway's when its device is linked to the gateway
    (``via_device``): the node does not need to remember which machines it announced.
    """
    gateway = gateway_id(node_id)
    current = {discovery_topic(machine_id(node_id, m), prefix) for m in machines}
    stale = []
    for topic, payload in retained.items():
        if topic in current or not topic.startswith(f"{prefix}/device/"):
            continue
        try:
            data = json.loads(payload) if payload else None
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        device = data.get("dev", data.get("device"))
        if isinstance(device, dict) and device.get("via_device") == gateway:
            stale.append(DiscoveryMessage(topic, None))
    return sorted(stale, key=lambda m: m.topic)
