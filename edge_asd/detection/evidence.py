"""Evidence over time: a CUSUM on calibrated log-scores, with a fast path for gross events.

Persistent faults (bearing wear, rub, whine) last minutes to days; a plant needs them without
crying wolf more than about once a week (docs/method.md, section 5.1). A threshold on single
windows cannot reach that with minutes of calibration audio, so evidence is accumulated
(Page's CUSUM): per window

    x_t = log(score_t / reference)
    S_t = max(0, S_{t-1} + x_t)

and an alarm is raised when S_t reaches `alarm_level`. `reference` is a high quantile of the
held-out normal scores (windows above it add evidence; each fold is scored against a bank
without it, so those scores already show how much unheard normal running shifts the score),
and `alarm_level` is set from the
false-alarm budget: the peaks of the CUSUM's excursions over held-out normal scores are modelled
(empirical, with a generalised Pareto tail above their median), and the level is the one at which
the expected number of excursions per week that reach it equals the budget.

Fast path: `trigger_windows` consecutive windows scoring at least `gross_factor` times the
largest held-out normal score start an event at once (about 1.5 s at 1 s windows, 0.5 s hop).

Everything here is pure numpy/scipy-free arithmetic except `fit_evidence` (calibration, offline),
which imports scipy lazily so that the daemon never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from edge_asd.detection.detector import (
    DEFAULT_REFERENCE_QUANTILE,
    DEFAULT_TARGET_FALSE_ALARMS_PER_WEEK,
    DEFAULT_TRIGGER_WINDOWS,
)

SECONDS_PER_WEEK: Final = 7 * 24 * 3600.0
DEFAULT_GROSS_FACTOR: Final = 2.0
"""A window scoring this many times the largest held-out normal score is far outside normal."""
MIN_ALARM_LEVEL: Final = math.log(2.0) * 3
"""Evidence needed at least: three windows at twice the reference. Below it a short burst of
benign sounds (a dropped tool, a door) would alarm however quiet calibration was."""
MAX_ALARM_LEVEL: Final = 60.0
"""Beyond this a fault at three times the reference (x ~ 1.1 per window) would need more than
a minute; the report then warns that calibration cannot promise the budget."""
MIN_TAIL_PEAKS: Final = 8
"""Fewer excursion peaks above the tail threshold than this: no tail fit, a conservative rule."""
BOOTSTRAP_ROUNDS: Final = 200
SCORE_FLOOR: Final = 1e-9
"""Scores are distances (>= 0); the log needs a floor for exact duplicates (score 0)."""
FAULT_FACTORS: Final = (1.5, 2.0, 3.0, 5.0)
"""Fault strengths (score as a multiple of the median held-out normal score) for the report's
expected delays."""


@dataclass(frozen=True)
class EvidenceSettings:
    """The calibrated sequential decision (stored in the bundle)."""

    reference: float
    """Score above which a window adds evidence (score units)."""
    alarm_level: float
    """CUSUM level that raises an alarm (natural-log units)."""
    gross_score: float
    """Score at or above which `trigger_windows` consecutive windows alarm at once."""
    release_score: float = 0.0
    """Inside an event, `release_windows` consecutive windows at or under this score end it
    (the held-out window threshold); 0: only the drained evidence ends it."""
    typical_score: float = 0.0
    """Median held-out normal score: sets how fast an event's evidence drains once the sound is
    normal again (0 in settings made without it: the event then drains from the alarm level)."""

    def __post_init__(self) -> None:
        for name in ("reference", "alarm_level", "gross_score"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"evidence {name} must be a positive number, got {value!r}")
        if self.gross_score <= self.reference:
            raise ValueError(
                f"evidence gross_score {self.gross_score!r} must exceed the reference "
                f"{self.reference!r}"
            )

    @property
    def max_increment(self) -> float:
        """The most one window can add: the log-ratio of the gross score. A single odd window
        (a dropped tool, the transient of a stop) is never an alarm on its own; sustained
        gross windows have the fast path."""
        return math.log(self.gross_score / self.reference)

    def increment(self, score: float) -> float:
        """x_t for one window's score."""
        x = math.log(max(score, SCORE_FLOOR) / self.reference)
        return min(x, self.max_increment)

    def event_cap(self, release_windows: int) -> float:
        """Evidence held during an event: about `release_windows` windows of typical normal
        scores drain it, so an event ends within seconds of the fault stopping however high the
        budget put the alarm level."""
        if self.typical_score <= 0:
            return self.alarm_level
        per_window = -self.increment(self.typical_score)
        if per_window <= 0:
            return self.alarm_level
        return min(self.alarm_level, release_windows * per_window)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvidenceSettings:
        return cls(
            reference=float(data["reference"]),
            alarm_level=float(data["alarm_level"]),
            gross_score=float(data["gross_score"]),
            release_score=float(data.get("release_score", 0.0)),
            typical_score=float(data.get("typical_score", 0.0)),
        )


def cusum_path(increments: np.ndarray) -> np.ndarray:
    """S_t = max(0, S_{t-1} + x_t) from S_0 = 0, vectorised (Lindley): S_t = C_t - min(0, min C)."""
    c = np.cumsum(np.asarray(increments, dtype=np.float64))
    return c - np.minimum(np.minimum.accumulate(c), 0.0)


def excursion_peaks(path: np.ndarray) -> np.ndarray:
    """Maximum of each excursion of a CUSUM path away from 0 (one per excursion)."""
    positive = path > 0
    if not positive.any():
        return np.zeros(0)
    edges = np.diff(positive.astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return np.asarray([path[a:b].max() for a, b in zip(starts, ends, strict=True)])


@dataclass(frozen=True)
class _Tail:
    threshold: float
    """Peaks above this are modelled by the generalised Pareto tail."""
    exceed_rate_per_week: float
    """Expected excursions per week whose peak exceeds `threshold`."""
    shape: float
    scale: float

    def per_week(self, level: float) -> float:
        if level <= self.threshold:
            return self.exceed_rate_per_week
        y = level - self.threshold
        if abs(self.shape) < 1e-9:
            survival = math.exp(-y / self.scale)
        else:
            base = 1.0 + self.shape * y / self.scale
            survival = 0.0 if base <= 0 else base ** (-1.0 / self.shape)
        return self.exceed_rate_per_week * survival

    def level_for(self, per_week: float) -> float:
        """Smallest level with at most `per_week` expected alarms per week."""
        if self.exceed_rate_per_week <= per_week:
            return self.threshold
        ratio = per_week / self.exceed_rate_per_week
        if abs(self.shape) < 1e-9:
            return self.threshold - self.scale * math.log(ratio)
        if self.shape < 0:
            # Bounded tail: beyond its end point no excursion reaches.
            end = self.threshold - self.scale / self.shape
            y = self.scale / self.shape * (ratio ** (-self.shape) - 1.0)
            return min(self.threshold + y, end)
        return self.threshold + self.scale / self.shape * (ratio ** (-self.shape) - 1.0)


def _fit_tail(peaks: np.ndarray, hours: float) -> _Tail | None:
    from scipy import stats  # offline only: the daemon never calibrates

    if peaks.size < 2 * MIN_TAIL_PEAKS:
        return None
    u = float(np.median(peaks))
    over = peaks[peaks > u] - u
    if over.size < MIN_TAIL_PEAKS or float(np.ptp(over)) <= 0:
        return None
    try:
        shape, _, scale = stats.genpareto.fit(over, floc=0.0)
    except (ValueError, RuntimeError, FloatingPointError):
        return None
    if not (math.isfinite(shape) and math.isfinite(scale) and scale > 0):
        return None
    # A very heavy fitted tail from a few peaks is mostly noise; cap it so levels stay finite.
    shape = float(min(shape, 1.0))
    rate = over.size / hours * (SECONDS_PER_WEEK / 3600.0)
    return _Tail(u, rate, shape, float(scale))


@dataclass(frozen=True)
class EvidenceFit:
    """What calibration decided and what it expects (the report's `decision` section)."""

    settings: EvidenceSettings
    target_false_alarms_per_week: float
    expected_false_alarms_per_week: float
    expected_false_alarms_per_week_interval: tuple[float, float]
    """5th and 95th percentile over bootstrap refits of the tail."""
    heldout_hours: float
    fold_spread: float
    """Natural-log distance from the median held-out score to the worst fold's median."""
    excursions: int
    largest_excursion: float
    method: str
    """How the alarm level was set: "tail_fit", "no_excursions" or "largest_excursion"."""
    expected_delay_seconds: dict[str, float | None] = field(default_factory=dict)
    """Expected seconds from fault onset to alarm, by fault strength (score multiple)."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = self.settings.to_dict()
        data["expected_false_alarms_per_week_interval"] = list(
            self.expected_false_alarms_per_week_interval
        )
        return data


def fold_spread(sequences: Sequence[np.ndarray], fold_of: Sequence[int], reference: float) -> float:
    """How far the typical log-score of the worst calibration fold sits above all folds' (the
    report's measure of how differently the calibration recordings sound)."""
    logs = [np.log(np.maximum(s, SCORE_FLOOR)) for s in sequences if s.size]
    if not logs:
        return 0.0
    overall = float(np.median(np.concatenate(logs)))
    by_fold: dict[int, list[np.ndarray]] = {}
    for seq, fold in zip(logs, fold_of, strict=False):
        by_fold.setdefault(int(fold), []).append(seq)
    worst = max(float(np.median(np.concatenate(parts))) for parts in by_fold.values())
    # Shifts above the reference itself are what the threshold is for, not drift.
    return float(min(max(0.0, worst - overall), max(0.0, math.log(reference) - overall)))


def fit_evidence(
    sequences: Sequence[np.ndarray],
    fold_of: Sequence[int],
    *,
    hop_seconds: float,
    window_seconds: float,
    target_per_week: float = DEFAULT_TARGET_FALSE_ALARMS_PER_WEEK,
    reference_quantile: float = DEFAULT_REFERENCE_QUANTILE,
    gross_factor: float = DEFAULT_GROSS_FACTOR,
    trigger_windows: int = DEFAULT_TRIGGER_WINDOWS,
    release_score: float = 0.0,
    seed: int = 0,
) -> EvidenceFit:
    """Calibrate the sequential decision from held-out normal score sequences.

    `sequences`: held-out scores in time order, one array per contiguous stretch (a clip, or
    the part of a recording inside one fold); `fold_of`: the fold of each sequence.
    """
    if target_per_week <= 0:
        raise ValueError(f"target_false_alarms_per_week must be > 0, got {target_per_week}")
    seqs = [np.asarray(s, dtype=np.float64) for s in sequences if np.asarray(s).size]
    if not seqs:
        raise ValueError("no held-out normal scores to calibrate the decision on")
    scores = np.concatenate(seqs)
    reference = max(float(np.quantile(scores, reference_quantile)), SCORE_FLOOR)
    spread = fold_spread(seqs, fold_of, reference)
    largest_score = float(scores.max())
    settings_for = _settings_factory(
        reference,
        largest_score * gross_factor,
        float(np.median(scores)),
        max(release_score, reference),
    )
    peaks = np.concatenate(
        [excursion_peaks(cusum_path(_increments(s, settings_for(1.0)))) for s in seqs]
    )
    hours = scores.size * hop_seconds / 3600.0
    warnings: list[str] = []
    largest_peak = float(peaks.max()) if peaks.size else 0.0
    tail = _fit_tail(peaks, hours)
    if tail is not None:
        level = tail.level_for(target_per_week)
        method = "tail_fit"
    elif peaks.size == 0:
        level = MIN_ALARM_LEVEL
        method = "no_excursions"
    else:
        # Too few excursions to model their tail: twice the largest one seen.
        level = 2.0 * largest_peak
        method = "largest_excursion"
    # At least `trigger_windows` windows of the largest increment: one window never alarms.
    floor = max(MIN_ALARM_LEVEL, trigger_windows * settings_for(1.0).max_increment * 1.001)
    level = max(level, largest_peak, floor)
    if level > MAX_ALARM_LEVEL:
        warnings.append(
            f"normal scores vary too much to promise {target_per_week:g} false alarm(s) per "
            f"week with the calibration given (alarm level capped at {MAX_ALARM_LEVEL:g}); "
            "record more normal running, covering every operating condition"
        )
        level = MAX_ALARM_LEVEL
    settings = settings_for(level)
    expected, interval = _expected_rate(peaks, hours, settings.alarm_level, tail, seed)
    minutes = hours * 60.0
    if minutes < 10.0:
        need = math.ceil(10.0 - minutes)
        warnings.append(
            f"only {minutes:.1f} min of held-out normal audio: a few minutes cannot prove a week; "
            f"record at least {need} more minutes covering every normal operating condition"
        )
    if tail is None and peaks.size:
        warnings.append(
            f"only {peaks.size} excursions of the evidence in calibration: the false-alarm "
            "estimate is rough; longer calibration makes it firmer"
        )
    median = float(np.median(scores))
    delays = {
        f"x{factor:g}": _delay_seconds(
            factor * median, settings, hop_seconds, window_seconds, trigger_windows
        )
        for factor in FAULT_FACTORS
    }
    return EvidenceFit(
        settings=settings,
        target_false_alarms_per_week=target_per_week,
        expected_false_alarms_per_week=expected,
        expected_false_alarms_per_week_interval=interval,
        heldout_hours=hours,
        fold_spread=spread,
        excursions=int(peaks.size),
        largest_excursion=largest_peak,
        method=method,
        expected_delay_seconds=delays,
        warnings=warnings,
    )


def _settings_factory(reference: float, gross: float, typical: float, release: float) -> Any:
    def make(level: float) -> EvidenceSettings:
        return EvidenceSettings(
            reference=reference,
            alarm_level=level,
            gross_score=gross,
            release_score=release,
            typical_score=typical,
        )

    return make


def _increments(scores: np.ndarray, settings: EvidenceSettings) -> np.ndarray:
    x = np.log(np.maximum(scores, SCORE_FLOOR) / settings.reference)
    return np.minimum(x, settings.max_increment)


def _expected_rate(
    peaks: np.ndarray, hours: float, level: float, tail: _Tail | None, seed: int
) -> tuple[float, tuple[float, float]]:
    """Expected false alarms per week at `level`, with a bootstrap interval."""
    weeks = hours * 3600.0 / SECONDS_PER_WEEK
    if tail is None:
        observed = float(np.count_nonzero(peaks >= level)) / weeks
        # No tail model: the interval is that of a Poisson count of 0 or a few in `weeks`.
        upper = (float(np.count_nonzero(peaks >= level)) + 3.0) / weeks
        return observed, (0.0, upper)
    expected = tail.per_week(level)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP_ROUNDS):
        sample = rng.choice(peaks, size=peaks.size, replace=True)
        refit = _fit_tail(sample, hours)
        if refit is not None:
            draws.append(refit.per_week(level))
    if not draws:
        return expected, (expected, expected)
    lo, hi = np.quantile(draws, [0.05, 0.95])
    return expected, (float(lo), float(hi))


def _delay_seconds(
    score: float,
    settings: EvidenceSettings,
    hop_seconds: float,
    window_seconds: float,
    trigger_windows: int,
) -> float | None:
    """Seconds from the onset of a fault that holds every window at `score` to its alarm."""
    if score >= settings.gross_score:
        windows = trigger_windows
    else:
        x = settings.increment(score)
        if x <= 0:
            return None
        windows = math.ceil(settings.alarm_level / x)
    return window_seconds + (windows - 1) * hop_seconds
