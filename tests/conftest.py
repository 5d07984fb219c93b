"""Shared fixtures: a real Mosquitto broker and a PulseAudio virtual microphone."""

from tests.mqtt_fixture import mosquitto_broker
from tests.pulse_fixture import virtual_mic

__all__ = ["mosquitto_broker", "virtual_mic"]
