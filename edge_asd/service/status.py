"""What the local status page shows: machines, their state, recent scores, recent events.

`StatusBoard` is updated by the daemon's inference thread (`machine_state`, `window`, `event`)
and read by the HTTP server's threads (`snapshot`), so every method takes one lock and does
O(1) work on the update side: the inference thread never waits on a page load for long.

When given a metrics sink (`metrics.Metrics`) the board forwards the same updates to it, so
the daemon has one hook per fact, not one per consumer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from edge_asd.detection.states import EventType, MachineState

DEFAULT_HISTORY_SECONDS: Final = 600.0
"""Ten minutes of scores for the sparkline: long enough to see a trend before an alarm."""
DEFAULT_MAX_POINTS: Final = 1200
"""Score points kept per machine (a window every 0.5 s for ten minutes)."""
DEFAULT_MAX_EVENTS: Final = 50
CLIPS_URL_PREFIX: Final = "/clips/"


class StatusSink(Protocol):
    """What the board forwards its updates to (metrics)."""

    def machine_state(self, name: str, state: MachineState | str) -> None: ...

    def window(
        self, name: str, end_time: float, score: float, threshold: float, dbfs: float
    ) -> None: ...

    def event(self, name: str, transition_kind: EventType | str) -> None: ...


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class _Machine:
    name: str
    state: str | None = None
    threshold: float | None = None
    score: float | None = None
    dbfs: float | None = None
    last_window: float | None = None
    environment: str | None = None
    """How the sound around it differs from calibration, while it does."""
    history: deque[tuple[float, float]] = field(default_factory=deque)


@dataclass
class _Event:
    machine: str
    event_id: str
    start: float
    end: float | None = None
    peak: float | None = None
    explanation: str | None = None
    clip: str | None = None
    """File name in the clips directory."""


class StatusBoard:
    """Thread-safe model of the status page (and the /api/status JSON)."""

    def __init__(
        self,
        node_id: str = "",
        version: str = "",
        *,
        history_seconds: float = DEFAULT_HISTORY_SECONDS,
        max_points: int = DEFAULT_MAX_POINTS,
        max_events: int = DEFAULT_MAX_EVENTS,
        metrics: StatusSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.version = version
        self.history_seconds = float(history_seconds)
        self._max_points = int(max_points)
        self._max_events = int(max_events)
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._machines: dict[str, _Machine] = {}
        self._events: dict[str, _Event] = {}
        """Insertion-ordered: oldest first."""
        self._warnings: tuple[str, ...] = ()

    def _machine(self, name: str) -> _Machine:
        machine = self._machines.get(name)
        if machine is None:
            machine = self._machines[name] = _Machine(name, history=deque(maxlen=self._max_points))
        return machine

    def add_machine(self, name: str, threshold: float | None = None) -> None:
        """List a machine before its first window (so the page shows every configured one)."""
        with self._lock:
            self._machine(name).threshold = _finite(threshold)

    def machine_state(self, name: str, state: MachineState | str) -> None:
        value = MachineState(state).value
        with self._lock:
            self._machine(name).state = value
        if self._metrics is not None:
            self._metrics.machine_state(name, value)

    def environment(self, name: str, description: str | None) -> None:
        """The machine's surroundings differ from calibration (`description`) or not (None)."""
        with self._lock:
            self._machine(name).environment = description

    def window(
        self, name: str, end_time: float, score: float, threshold: float, dbfs: float
    ) -> None:
        with self._lock:
            machine = self._machine(name)
            machine.score = _finite(score)
            machine.threshold = _finite(threshold)
            machine.dbfs = _finite(dbfs)
            machine.last_window = float(end_time)
            if machine.score is not None:
                machine.history.append((float(end_time), machine.score))
        if self._metrics is not None:
            self._metrics.window(name, end_time, score, threshold, dbfs)

    def event(
        self,
        name: str,
        transition_kind: EventType | str,
        event_id: str,
        ts: float,
        peak: float,
        explanation: str | None = None,
        clip_path: str | Path | None = None,
    ) -> None:
        """An event transition; `ts` is its start for `start`, its end for `end`."""
        kind = EventType(transition_kind)
        with self._lock:
            event = self._events.get(event_id)
            if event is None:
                # An end whose start came before the board existed still gets a row.
                event = self._events[event_id] = _Event(name, event_id, start=float(ts))
                while len(self._events) > self._max_events:
                    del self._events[next(iter(self._events))]
            event.peak = _finite(peak)
            if kind is EventType.END:
                event.end = float(ts)
                event.explanation = explanation
                event.clip = None if clip_path is None else Path(clip_path).name
            elif explanation is not None:
                event.explanation = explanation
        if self._metrics is not None:
            self._metrics.event(name, kind)

    def set_warnings(self, warnings: tuple[str, ...]) -> None:
        """Node-level problems the page shows above the machines (a degraded outbox)."""
        with self._lock:
            self._warnings = tuple(warnings)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: machines in the order first seen, events newest first."""
        now = self._clock()
        since = now - self.history_seconds
        with self._lock:
            machines = [
                {
                    "name": m.name,
                    "state": m.state,
                    "score": m.score,
                    "threshold": m.threshold,
                    "dbfs": m.dbfs,
                    "last_window": m.last_window,
                    "environment": m.environment,
                    "history": [[round(t, 3), s] for t, s in m.history if t >= since],
                }
                for m in self._machines.values()
            ]
            warnings = self._warnings
            events = [
                {
                    "machine": e.machine,
                    "event_id": e.event_id,
                    "start": e.start,
                    "end": e.end,
                    "ongoing": e.end is None,
                    "peak": e.peak,
                    "explanation": e.explanation,
                    "clip": None if e.clip is None else CLIPS_URL_PREFIX + e.clip,
                    "spectrogram": None
                    if e.clip is None
                    else f"{CLIPS_URL_PREFIX}{Path(e.clip).stem}.png",
                }
                for e in reversed(self._events.values())
            ]
        return {
            "node": self.node_id,
            "version": self.version,
            "now": now,
            "history_seconds": self.history_seconds,
            "machines": machines,
            "events": events,
            "warnings": list(warnings),
        }
