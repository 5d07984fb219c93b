"""Controls over MQTT: mute a machine's alarms, switch its detection off and on, learn an event.

Commands arrive on ``<topic_prefix>/<node>/<machine>/cmd/<name>`` (what the Home Assistant
switches and button of `mqtt.discovery` send, or anyone the broker's ACL lets publish there):

- ``mute``: ``ON`` (for `DEFAULT_MUTE_SECONDS`), ``OFF``, or ``{"seconds": N}`` with
  1 <= N <= `MAX_MUTE_SECONDS`. While muted the machine's state reads ``muted`` and its alarms
  are logged, not published as events. A mute always ends: a forgotten switch must not silence
  a machine for good.
- ``detection``: ``ON`` or ``OFF``. Off: the machine's audio is not analysed, its state reads
  ``disabled``.
- ``learn``: ``{"event_id": "...", "force": true}`` (or the bare event id): add that event's
  clip to the machine's bundle as normal running (`detection.learn.learn`), then reload.
- ``learn_last_event``: any payload (the HA button sends ``PRESS``): the same, for the
  machine's last event that has a clip.
- ``recalibrate``: ``{"seconds": N}`` (or the bare number), `MIN_RECALIBRATE_SECONDS` <= N <=
  `MAX_RECALIBRATE_SECONDS`: record the next N seconds of the machine's audio, calibrate a new
  bundle on them with the config's `calibration` settings (the stopped-machine recordings of
  the old bundle are kept), swap it in atomically and reload. Acknowledged when accepted
  (``value``: the seconds) and again when the new bundle is in use.

Each command is answered on ``<command topic>/state`` with a retained JSON acknowledgement
``{"ok": bool, "reason": str|null, "value": ..., "until": ts|null, "ts": ts}``: ``value`` is the
control's value after the command (unchanged when ``ok`` is false), so the Home Assistant
switch can read it back. A rejected command changes nothing. Mute and detection survive
restarts in a small JSON file next to the outbox.

This module is the parsing, validation and state; the daemon (`service.shift`) applies the
effects on its inference thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge_asd.detection.states import MachineState
from edge_asd.mqtt.discovery import BUTTON_PRESS, SWITCH_OFF, SWITCH_ON
from edge_asd.mqtt.messages import format_ts

_LOGGER = logging.getLogger(__name__)

MUTE: Final = "mute"
DETECTION: Final = "detection"
LEARN: Final = "learn"
LEARN_LAST_EVENT: Final = "learn_last_event"
RECALIBRATE: Final = "recalibrate"
COMMANDS: Final = (MUTE, DETECTION, LEARN, LEARN_LAST_EVENT, RECALIBRATE)
SWITCHES: Final = (MUTE, DETECTION)
"""Controls with a value to keep (and to publish at start-up for the HA switches)."""

DEFAULT_MUTE_SECONDS: Final = 3600.0
"""What ``ON`` (the HA switch) mutes for: an hour covers a planned noisy job, and a mute that
someone forgot ends by itself."""
MAX_MUTE_SECONDS: Final = 7 * 86_400.0
"""A week at most: longer means the machine should be switched off (``detection OFF``)."""
STATE_FILE_NAME: Final = "controls.json"
STATE_FILE_VERSION: Final = 1
_EVENT_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
"""An event id as clip file names take it (`clips.CLIP_NAME`): nothing that walks paths."""


class ControlError(ValueError):
    """A command that cannot be applied; the message is the acknowledgement's reason."""


@dataclass(frozen=True)
class Command:
    """One command as received (on the MQTT network thread)."""

    machine: str
    name: str
    payload: bytes
    retained: bool = False


@dataclass(frozen=True)
class Ack:
    """The answer to a command, published retained on ``<command topic>/state``."""

    ok: bool
    reason: str | None
    value: Any
    until: float | None = None
    extra: tuple[tuple[str, Any], ...] = ()
    """More fields (learn: bundle_id, windows_added)."""

    def to_dict(self, now: float) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "ok": self.ok,
            "reason": self.reason,
            "value": self.value,
            "until": None if self.until is None else format_ts(self.until),
            "ts": format_ts(now),
        }
        payload.update(self.extra)
        return payload

    def to_json(self, now: float) -> str:
        return json.dumps(self.to_dict(now), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class LearnRequest:
    event_id: str | None
    """None: the machine's last event with a clip."""
    force: bool = True
    """Learn even when most of the clip scores above the threshold: an event's clip usually
    does (it raised an alarm), and the person sending the command has judged it normal."""


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ControlError("payload is not UTF-8 text") from None


def _json_object(text: str, expected: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise ControlError(f"malformed payload {text[:60]!r}: expected {expected}") from None
    if not isinstance(data, dict):
        raise ControlError(f"malformed payload {text[:60]!r}: expected {expected}")
    return data


def _no_other_keys(data: dict[str, Any], allowed: Iterable[str], expected: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ControlError(f"unknown key(s) {', '.join(unknown)}: expected {expected}")


def parse_mute(payload: bytes) -> float | None:
    """Seconds to mute for, or None to unmute."""
    expected = f'{SWITCH_ON}, {SWITCH_OFF} or {{"seconds": N}} with 1 <= N <= {MAX_MUTE_SECONDS:g}'
    text = _text(payload)
    if text.upper() == SWITCH_ON:
        return DEFAULT_MUTE_SECONDS
    if text.upper() == SWITCH_OFF:
        return None
    data = _json_object(text, expected)
    _no_other_keys(data, ("seconds",), expected)
    seconds = data.get("seconds")
    # bool is an int in Python; `{"seconds": true}` is a mistake, not one second.
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ControlError(f"seconds must be a number: expected {expected}")
    if not math.isfinite(seconds) or not 1 <= seconds <= MAX_MUTE_SECONDS:
        raise ControlError(
            f"seconds {seconds!r} out of range: 1 to {MAX_MUTE_SECONDS:g} "
            f"({MAX_MUTE_SECONDS / 86_400:g} days); send OFF to unmute"
        )
    return float(seconds)


MIN_RECALIBRATE_SECONDS: Final = 31.0
"""Calibration needs at least 60 windows (30.5 s at the default 1 s / 0.5 s framing)."""
MAX_RECALIBRATE_SECONDS: Final = 600.0
"""Ten minutes, kept as 16-bit samples in memory while recording (19 MB): the daemon has a
memory target; longer calibrations are made offline with `edge-asd calibrate`."""


def parse_recalibrate(payload: bytes) -> float:
    """Seconds to record for a new calibration."""
    text = _text(payload)
    expected = '{"seconds": N} or the bare number of seconds'
    if text.startswith("{"):
        data = _json_object(text, expected)
        _no_other_keys(data, ("seconds",), expected)
        value: Any = data.get("seconds")
    else:
        value = text
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ControlError(f"seconds {value!r} is not a number: expected {expected}") from None
    if not (
        math.isfinite(seconds) and MIN_RECALIBRATE_SECONDS <= seconds <= MAX_RECALIBRATE_SECONDS
    ):
        raise ControlError(
            f"seconds {seconds:g} out of range: {MIN_RECALIBRATE_SECONDS:g} to "
            f"{MAX_RECALIBRATE_SECONDS:g}"
        )
    return seconds


def parse_switch(payload: bytes) -> bool:
    text = _text(payload).upper()
    if text == SWITCH_ON:
        return True
    if text == SWITCH_OFF:
        return False
    raise ControlError(f"malformed payload {text[:60]!r}: expected {SWITCH_ON} or {SWITCH_OFF}")


def parse_learn(payload: bytes, *, last: bool) -> LearnRequest:
    """`last`: the learn_last_event button (any payload, ``PRESS`` or a JSON with force)."""
    text = _text(payload)
    if last:
        if text in ("", BUTTON_PRESS):
            return LearnRequest(None)
        data = _json_object(text, f'{BUTTON_PRESS} or {{"force": bool}}')
        _no_other_keys(data, ("force",), f'{BUTTON_PRESS} or {{"force": bool}}')
        return LearnRequest(None, _force(data))
    expected = '{"event_id": "...", "force": bool} or the bare event id'
    if text.startswith("{"):
        data = _json_object(text, expected)
        _no_other_keys(data, ("event_id", "force"), expected)
        event_id = data.get("event_id")
        force = _force(data)
    else:
        event_id, force = text, True
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise ControlError(f"event_id {event_id!r} is not an event id: expected {expected}")
    return LearnRequest(event_id, force)


def _force(data: dict[str, Any]) -> bool:
    force = data.get("force", True)
    if not isinstance(force, bool):
        raise ControlError("force must be true or false")
    return force


@dataclass
class _MachineControls:
    muted_until: float | None = None
    detection: bool = True


class Controls:
    """Mute and detection of every machine, persisted in `state_path` (None: not persisted).

    Thread-safe; the daemon calls it from its inference thread, the status page may read it.
    """

    def __init__(
        self,
        machines: Iterable[str],
        state_path: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.state_path = state_path
        self._lock = threading.Lock()
        self._machines = {name: _MachineControls() for name in machines}
        self._load()

    @property
    def machines(self) -> list[str]:
        return list(self._machines)

    def knows(self, machine: str) -> bool:
        return machine in self._machines

    # ------------------------------------------------------------------ reading

    def muted_until(self, machine: str) -> float | None:
        with self._lock:
            until = self._machines[machine].muted_until
        return until if until is not None and until > self._clock() else None

    def muted(self, machine: str) -> bool:
        return self.muted_until(machine) is not None

    def detection_enabled(self, machine: str) -> bool:
        with self._lock:
            return self._machines[machine].detection

    def override(self, machine: str) -> MachineState | None:
        """The state to publish instead of the detector's, if any (disabled beats muted)."""
        if not self.detection_enabled(machine):
            return MachineState.DISABLED
        if self.muted(machine):
            return MachineState.MUTED
        return None

    def current(self, machine: str, name: str) -> Ack:
        """The switch's value as an acknowledgement (start-up, expiry)."""
        if name == MUTE:
            until = self.muted_until(machine)
            return Ack(True, None, SWITCH_ON if until is not None else SWITCH_OFF, until)
        return Ack(True, None, SWITCH_ON if self.detection_enabled(machine) else SWITCH_OFF)

    # ------------------------------------------------------------------ changing

    def mute(self, machine: str, seconds: float | None) -> Ack:
        until = None if seconds is None else self._clock() + seconds
        with self._lock:
            self._machines[machine].muted_until = until
        self._save()
        return self.current(machine, MUTE)

    def set_detection(self, machine: str, enabled: bool) -> Ack:
        with self._lock:
            self._machines[machine].detection = enabled
        self._save()
        return self.current(machine, DETECTION)

    def expire(self) -> list[str]:
        """Machines whose mute ran out since the last call (their mute is cleared)."""
        now = self._clock()
        ended = []
        with self._lock:
            for name, controls in self._machines.items():
                if controls.muted_until is not None and controls.muted_until <= now:
                    controls.muted_until = None
                    ended.append(name)
        if ended:
            self._save()
        return ended

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        path = self.state_path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            machines = data["machines"]
            if not isinstance(machines, dict):
                raise TypeError("machines is not an object")
            now = self._clock()
            for name, saved in machines.items():
                if name not in self._machines:
                    continue  # a machine that left the config
                until = saved.get("muted_until")
                controls = self._machines[name]
                controls.detection = bool(saved.get("detection", True))
                if isinstance(until, int | float) and until > now:
                    controls.muted_until = float(until)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged file must not keep the daemon from starting: everything on, unmuted.
            _LOGGER.warning("controls: cannot read %s (%s); starting with defaults", path, exc)
            self._machines = {name: _MachineControls() for name in self._machines}
            return
        for name, controls in self._machines.items():
            if not controls.detection:
                _LOGGER.warning("%s: detection is switched off (restored from %s)", name, path)
            if controls.muted_until is not None:
                _LOGGER.warning(
                    "%s: alarms muted until %s (restored from %s)",
                    name,
                    format_ts(controls.muted_until),
                    path,
                )

    def _save(self) -> None:
        path = self.state_path
        if path is None:
            return
        with self._lock:
            data = {
                "version": STATE_FILE_VERSION,
                "machines": {
                    name: {"muted_until": c.muted_until, "detection": c.detection}
                    for name, c in self._machines.items()
                },
            }
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            # Rename: a crash mid-write leaves the previous state, never half a file.
            os.replace(tmp, path)
        except OSError as exc:
            _LOGGER.error("controls: cannot save %s (%s); applied until restart only", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
