"""The vocabularies of detection: machine states and event lifecycle steps.

Defined once here; the MQTT payloads, the daemon, replay and the offline tools import them.
"""

from __future__ import annotations

from enum import StrEnum


class MachineState(StrEnum):
    """Retained per-machine state (published on ``<machine>/state``)."""

    NORMAL = "normal"
    ANOMALOUS = "anomalous"
    IDLE = "idle"
    """The machine is not running (silence, far below its running level, or sounding like the
    recordings of it stopped); no anomaly is raised."""
    NO_AUDIO = "no_audio"
    CALIBRATING = "calibrating"
    MUTED = "muted"
    """Alarms are muted from outside (the `mute` command): anomalies are logged, not raised,
    until the mute ends; the state says so instead of what the detector hears."""
    DISABLED = "disabled"
    """Detection is switched off from outside (the `detection` command): nothing is judged."""


class EventType(StrEnum):
    """Lifecycle step of one anomaly event."""

    START = "start"
    UPDATE = "update"
    END = "end"
