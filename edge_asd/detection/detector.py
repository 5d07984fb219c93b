"""Turns per-window anomaly scores into events with hysteresis.

An event starts after `trigger_windows` consecutive windows over the threshold and ends after
`release_windows` consecutive windows under it, or when it has lasted `max_event_seconds` (then a
new event may start). While it lasts, an update is emitted at most once per
`update_interval_seconds`. One `event_id` is used from start to end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from edge_asd.detection.states import EventType

# The hysteresis defaults, defined here once: the config's machine section, the detector and
# the offline evaluation's operating point all read them.
DEFAULT_TRIGGER_WINDOWS: Final = 2
"""Consecutive windows over the threshold that start an event."""
DEFAULT_RELEASE_WINDOWS: Final = 4
"""Consecutive windows under the threshold that end an event."""
DEFAULT_MAX_EVENT_SECONDS: Final = 300.0
"""Longer events are ended and a new one may start."""
DEFAULT_UPDATE_INTERVAL_SECONDS: Final = 1.0


@dataclass(frozen=True)
class DetectorSettings:
    """Built from a machine's config by `config.detector_settings`."""

    threshold: float
    trigger_windows: int = DEFAULT_TRIGGER_WINDOWS
    release_windows: int = DEFAULT_RELEASE_WINDOWS
    max_event_seconds: float = DEFAULT_MAX_EVENT_SECONDS
    update_interval_seconds: float = DEFAULT_UPDATE_INTERVAL_SECONDS

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")
        if self.trigger_windows < 1 or self.release_windows < 1:
            raise ValueError("trigger_windows and release_windows must be at least 1")
        if self.max_event_seconds <= 0:
            raise ValueError("max_event_seconds must be positive")


@dataclass(frozen=True)
class EventTransition:
    """One step of an event's lifecycle. Times are epoch seconds."""

    kind: EventType
    event_id: str
    ts: float
    """End of the window that caused this transition."""
    start_ts: float
    """Start of the first window over the threshold."""
    end_ts: float | None
    """End of the last window over the threshold; set on `end` only."""
    score: float
    peak_score: float
    windows_over: int
    """Windows over the threshold since the event started."""
    dbfs: float
    """Level of the window that caused this transition."""
    peak_dbfs: float


def _new_event_id() -> str:
    return uuid.uuid4().hex


class Detector:
    """Hysteresis over window scores; feed windows in time order."""

    def __init__(
        self, settings: DetectorSettings, *, id_factory: Callable[[], str] = _new_event_id
    ) -> None:
        self.settings = settings
        self._new_id = id_factory
        self._run_over = 0  # consecutive windows over the threshold
        self._run_under = 0  # consecutive windows under it, while in an event
        self._run_start_ts = 0.0
        self._run_scores: list[tuple[float, float]] = []  # (score, dbfs) of the pending run
        self._event_id: str | None = None
        self._start_ts = 0.0
        self._last_over_end_ts = 0.0
        self._last_update_ts = 0.0
        self._peak_score = 0.0
        self._peak_dbfs = float("-inf")
        self._windows_over = 0
        self._last_score = 0.0
        self._last_dbfs = float("-inf")

    @property
    def in_event(self) -> bool:
        return self._event_id is not None

    @property
    def event_id(self) -> str | None:
        return self._event_id

    def process(
        self, score: float, *, window_start_ts: float, window_end_ts: float, dbfs: float
    ) -> list[EventTransition]:
        """Feed one window's score; returns the transitions it caused (usually none)."""
        over = score > self.settings.threshold
        self._last_score = score
        self._last_dbfs = dbfs
        if self._event_id is None:
            return self._idle(score, over, window_start_ts, window_end_ts, dbfs)
        return self._active(score, over, window_end_ts, dbfs)

    def close(self, ts: float) -> list[EventTransition]:
        """End an open event now (shutdown, lost audio)."""
        self._run_over = 0
        self._run_scores.clear()
        if self._event_id is None:
            return []
        return [self._end(ts, self._last_score, self._last_dbfs, end_ts=self._last_over_end_ts)]

    def _idle(
        self, score: float, over: bool, start_ts: float, end_ts: float, dbfs: float
    ) -> list[EventTransition]:
        if not over:
            self._run_over = 0
            self._run_scores.clear()
            return []
        if self._run_over == 0:
            self._run_start_ts = start_ts
        self._run_over += 1
        self._run_scores.append((score, dbfs))
        if self._run_over < self.settings.trigger_windows:
            return []
        self._event_id = self._new_id()
        self._start_ts = self._run_start_ts
        self._last_over_end_ts = end_ts
        self._last_update_ts = end_ts
        self._peak_score = max(s for s, _ in self._run_scores)
        self._peak_dbfs = max(d for _, d in self._run_scores)
        self._windows_over = self._run_over
        self._run_under = 0
        self._run_over = 0
        self._run_scores.clear()
        return [self._transition(EventType.START, end_ts, score, dbfs, end_ts=None)]

    def _active(
        self, score: float, over: bool, end_ts: float, dbfs: float
    ) -> list[EventTransition]:
        if over:
            self._run_under = 0
            self._windows_over += 1
            self._last_over_end_ts = end_ts
            self._peak_score = max(self._peak_score, score)
            self._peak_dbfs = max(self._peak_dbfs, dbfs)
        else:
            self._run_under += 1
            if self._run_under >= self.settings.release_windows:
                return [self._end(end_ts, score, dbfs, end_ts=self._last_over_end_ts)]
        if end_ts - self._start_ts >= self.settings.max_event_seconds:
            # Split very long events so subscribers see an end and a fresh start.
            return [self._end(end_ts, score, dbfs, end_ts=end_ts)]
        if end_ts - self._last_update_ts >= self.settings.update_interval_seconds:
            self._last_update_ts = end_ts
            return [self._transition(EventType.UPDATE, end_ts, score, dbfs, end_ts=None)]
        return []

    def _end(
        self, ts: float, score: float, dbfs: float, *, end_ts: float | None = None
    ) -> EventTransition:
        transition = self._transition(
            EventType.END, ts, score, dbfs, end_ts=ts if end_ts is None else end_ts
        )
        self._event_id = None
        self._run_under = 0
        self._run_over = 0
        self._windows_over = 0
        return transition

    def _transition(
        self, kind: EventType, ts: float, score: float, dbfs: float, *, end_ts: float | None
    ) -> EventTransition:
        assert self._event_id is not None
        return EventTransition(
            kind=kind,
            event_id=self._event_id,
            ts=ts,
            start_ts=self._start_ts,
            end_ts=end_ts,
            score=score,
            peak_score=self._peak_score,
            windows_over=self._windows_over,
            dbfs=dbfs,
            peak_dbfs=self._peak_dbfs,
        )
