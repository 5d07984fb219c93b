"""Turns per-window anomaly scores into events: start, updates at most once per
`update_interval_seconds`, end; one `event_id` from start to end.

When an event starts and ends is the decision rule's call:

- `HysteresisRule` (no evidence settings): an event starts after `trigger_windows` consecutive
  windows over the threshold and ends after `release_windows` consecutive windows under it;
- `EvidenceRule` (the bundle's calibrated `evidence.EvidenceSettings`): evidence accumulates
  over time (CUSUM) and an event starts when it reaches the calibrated alarm level, or at once
  when `trigger_windows` consecutive windows are grossly anomalous; it ends when the evidence
  has drained back to zero.

Events longer than `max_event_seconds` are split (an end, then a fresh start).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from edge_asd.detection.states import EventType

if TYPE_CHECKING:
    # Only for types: the config reads this module's defaults, and the CLI parser must not
    # load numpy (evidence's) before `run` has limited the BLAS threads.
    from edge_asd.detection.environment import EnvironmentSummary
    from edge_asd.detection.evidence import EvidenceSettings

# The hysteresis defaults, defined here once: the config's machine section, the detector and
# the offline evaluation's operating point all read them.
DEFAULT_TRIGGER_WINDOWS: Final = 2
"""Consecutive windows over the threshold that start an event."""
DEFAULT_RELEASE_WINDOWS: Final = 4
"""Consecutive windows under the threshold that end an event."""
DEFAULT_MAX_EVENT_SECONDS: Final = 300.0
"""Longer events are ended and a new one may start."""
DEFAULT_UPDATE_INTERVAL_SECONDS: Final = 1.0
DEFAULT_TARGET_FALSE_ALARMS_PER_WEEK: Final = 1.0
"""The false-alarm budget a plant tolerates per machine (docs/method.md, section 5.1)."""
DEFAULT_HOLDOFF_SECONDS: Final = 10.0
"""After a stopped machine restarts, its run-up is not judged for this long."""
DEFAULT_REFERENCE_QUANTILE: Final = 0.99
"""Held-out normal windows above this quantile of their scores add evidence."""


@dataclass(frozen=True)
class DetectorSettings:
    """Built from a machine's config by `config.detector_settings`."""

    threshold: float
    """Score above which a window counts as over (the evidence rule's reference)."""
    trigger_windows: int = DEFAULT_TRIGGER_WINDOWS
    release_windows: int = DEFAULT_RELEASE_WINDOWS
    max_event_seconds: float = DEFAULT_MAX_EVENT_SECONDS
    update_interval_seconds: float = DEFAULT_UPDATE_INTERVAL_SECONDS
    evidence: EvidenceSettings | None = None
    """Calibrated sequential decision; None: hysteresis on single windows."""

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")
        if self.trigger_windows < 1 or self.release_windows < 1:
            raise ValueError("trigger_windows and release_windows must be at least 1")
        if self.max_event_seconds <= 0:
            raise ValueError("max_event_seconds must be positive")


@dataclass(frozen=True)
class EventTransition:
    """One step of an event's lifecycle. Times are in the pipeline caller's clock."""

    kind: EventType
    event_id: str
    ts: float
    """End of the window that caused this transition."""
    start_ts: float
    """Start of the first window of the evidence that raised the event."""
    end_ts: float | None
    """End of the last window over the threshold; set on `end` only."""
    score: float
    peak_score: float
    windows_over: int
    """Windows over the threshold since the evidence began."""
    dbfs: float
    """Level of the window that caused this transition."""
    peak_dbfs: float
    environment: EnvironmentSummary | None = None
    """Set by the pipeline while the sound around the machine differs from calibration: the
    context an alarm raised then must carry."""


@dataclass(frozen=True)
class Verdict:
    """A decision rule's reading of one window."""

    over: bool
    """The window is above the threshold (counts in windows_over, peak, last-over time)."""
    candidate: bool
    """Outside an event: the window belongs to evidence that may still raise one."""
    start: bool
    """Outside an event: raise one now."""
    end: bool
    """Inside an event: it is over."""


class DecisionRule(Protocol):
    def update(self, score: float, in_event: bool) -> Verdict: ...

    def reset(self) -> None:
        """Forget accumulated evidence (after an event ends or is closed)."""


class HysteresisRule:
    """N consecutive windows over the threshold start, M under it end."""

    def __init__(self, settings: DetectorSettings) -> None:
        self._settings = settings
        self._run_over = 0
        self._run_under = 0

    def reset(self) -> None:
        self._run_over = 0
        self._run_under = 0

    def update(self, score: float, in_event: bool) -> Verdict:
        over = score > self._settings.threshold
        if not in_event:
            self._run_over = self._run_over + 1 if over else 0
            start = self._run_over >= self._settings.trigger_windows
            if start:
                self._run_over = 0
                self._run_under = 0
            return Verdict(over=over, candidate=over, start=start, end=False)
        self._run_under = 0 if over else self._run_under + 1
        return Verdict(
            over=over,
            candidate=False,
            start=False,
            end=self._run_under >= self._settings.release_windows,
        )


class EvidenceRule:
    """CUSUM of calibrated log-score ratios, with a fast path for gross events."""

    def __init__(self, settings: DetectorSettings, evidence: EvidenceSettings) -> None:
        self._settings = settings
        self._evidence = evidence
        self._cap = evidence.event_cap(settings.release_windows)
        self._sum = 0.0
        self._gross_run = 0
        self._run_under = 0

    @property
    def evidence(self) -> float:
        """The current CUSUM value (natural-log units)."""
        return self._sum

    def reset(self) -> None:
        self._sum = 0.0
        self._gross_run = 0
        self._run_under = 0

    def update(self, score: float, in_event: bool) -> Verdict:
        ev = self._evidence
        over = score > self._settings.threshold
        self._sum = max(0.0, self._sum + ev.increment(score))
        self._gross_run = self._gross_run + 1 if score >= ev.gross_score else 0
        if not in_event:
            start = self._sum >= ev.alarm_level or self._gross_run >= self._settings.trigger_windows
            if start:
                # Inside an event the evidence is capped (evidence.event_cap), so that it drains
                # within about release_windows normal windows once the fault stops.
                self._sum = self._cap
                self._gross_run = 0
                self._run_under = 0
            return Verdict(over=over, candidate=self._sum > 0 or over, start=start, end=False)
        self._sum = min(self._sum, self._cap)
        # Normal running the bank has not heard can sit just above the reference for long: the
        # event also ends once the scores are back under the window threshold for a while.
        under = ev.release_score > 0 and score <= ev.release_score
        self._run_under = self._run_under + 1 if under else 0
        released = self._run_under >= self._settings.release_windows
        end = self._sum <= 0.0 or released
        if end:
            self.reset()
        return Verdict(over=over, candidate=False, start=False, end=end)


def make_rule(settings: DetectorSettings) -> DecisionRule:
    if settings.evidence is None:
        return HysteresisRule(settings)
    return EvidenceRule(settings, settings.evidence)


def _new_event_id() -> str:
    return uuid.uuid4().hex


class Detector:
    """Event lifecycle over window scores; feed windows in time order."""

    def __init__(
        self, settings: DetectorSettings, *, id_factory: Callable[[], str] = _new_event_id
    ) -> None:
        self.settings = settings
        self.rule = make_rule(settings)
        self._new_id = id_factory
        self._clear_run()
        self._event_id: str | None = None
        self._start_ts = 0.0
        self._last_over_end_ts = 0.0
        self._last_update_ts = 0.0
        self._peak_score = 0.0
        self._peak_dbfs = float("-inf")
        self._windows_over = 0
        self._last_score = 0.0
        self._last_dbfs = float("-inf")

    def _clear_run(self) -> None:
        """The evidence outside an event: where it began and what it held."""
        self._run_start_ts: float | None = None
        self._run_peak = 0.0
        self._run_peak_dbfs = float("-inf")
        self._run_over = 0

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
        self._last_score = score
        self._last_dbfs = dbfs
        verdict = self.rule.update(score, self.in_event)
        if self._event_id is None:
            return self._idle(verdict, score, window_start_ts, window_end_ts, dbfs)
        return self._active(verdict, score, window_end_ts, dbfs)

    def close(self, ts: float) -> list[EventTransition]:
        """End an open event now (shutdown, lost audio, machine stopped) and forget evidence."""
        self.rule.reset()
        self._clear_run()
        if self._event_id is None:
            return []
        return [self._end(ts, self._last_score, self._last_dbfs, end_ts=self._last_over_end_ts)]

    def _idle(
        self, verdict: Verdict, score: float, start_ts: float, end_ts: float, dbfs: float
    ) -> list[EventTransition]:
        if not verdict.candidate and not verdict.start:
            self._clear_run()
            return []
        if self._run_start_ts is None:
            self._run_start_ts = start_ts
        self._run_peak = max(self._run_peak, score)
        self._run_peak_dbfs = max(self._run_peak_dbfs, dbfs)
        self._run_over += int(verdict.over)
        if not verdict.start:
            return []
        self._event_id = self._new_id()
        self._start_ts = self._run_start_ts
        self._last_over_end_ts = end_ts
        self._last_update_ts = end_ts
        self._peak_score = self._run_peak
        self._peak_dbfs = self._run_peak_dbfs
        self._windows_over = self._run_over
        self._clear_run()
        return [self._transition(EventType.START, end_ts, score, dbfs, end_ts=None)]

    def _active(
        self, verdict: Verdict, score: float, end_ts: float, dbfs: float
    ) -> list[EventTransition]:
        if verdict.over:
            self._windows_over += 1
            self._last_over_end_ts = end_ts
            self._peak_score = max(self._peak_score, score)
            self._peak_dbfs = max(self._peak_dbfs, dbfs)
        if verdict.end:
            return [self._end(end_ts, score, dbfs, end_ts=self._last_over_end_ts)]
        if end_ts - self._start_ts >= self.settings.max_event_seconds:
            # Split very long events so subscribers see an end and a fresh start.
            self.rule.reset()
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
        self._windows_over = 0
        self._clear_run()
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
