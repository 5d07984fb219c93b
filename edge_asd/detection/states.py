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
    ENVIRONMENT_CHANGED = "environment_changed"
    """The machine runs, but the sound around it no longer resembles anything heard at
    calibration (a new noise source, a moved microphone, a changed gain): detection goes on,
    its sensitivity is not what calibration measured. Recalibrate or `learn` the new condition
    (the ``environment`` topic says how the sound changed)."""
    NO_AUDIO = "no_audio"
    CALIBRATING = "calibrating"
    MUTED = "muted"
    """Alarms are muted from outside (the `mute` command): anomalies are logged, not raised,
    until the mute ends; the state says so instead of what the detector hears."""
    DISABLED = "disabled"
    """Detection is switched off from outside (the `detection` command): nothing is judged."""
    FAULT = "fault"
    """The daemon cannot serve this machine: its capture thread or the inference thread died
    or hangs (the reason is logged and in the stats' ``faults``). Not a verdict on the
    machine's sound."""


class EventType(StrEnum):
    """Lifecycle step of one anomaly event."""

    START = "start"
    UPDATE = "update"
    END = "end"


class EndReason(StrEnum):
    """Why an event ended without its sound returning to normal (``reason`` of an ``end``;
    null when the sound did)."""

    RESTART = "restart"
    """The daemon died with the event open (crash, SIGKILL, power cut); closed at its next
    start. ``end_ts`` is the last moment the event was known to be open."""
    SHUTDOWN = "shutdown"
    """The daemon was stopped (SIGTERM) while the event was open."""
    FAULT = "fault"
    """A worker thread failed while the event was open; the daemon exits to be restarted."""
    RELOAD = "reload"
    """Bundles were reloaded (SIGHUP); detection restarts with the new bundle."""
