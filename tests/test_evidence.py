"""The calibrated sequential decision: CUSUM arithmetic, the budget fit, and the detector rule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from edge_asd.detection.detector import Detector, DetectorSettings
from edge_asd.detection.evidence import (
    MAX_ALARM_LEVEL,
    MIN_ALARM_LEVEL,
    EvidenceSettings,
    cusum_path,
    excursion_peaks,
    fit_evidence,
)
from edge_asd.detection.states import EventType

HOP = 0.5
WINDOW = 1.0


def _loop_cusum(x: np.ndarray) -> np.ndarray:
    s, out = 0.0, []
    for v in x:
        s = max(0.0, s + v)
        out.append(s)
    return np.asarray(out)


def test_vectorised_cusum_equals_the_recursion() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(-0.3, 1.0, 5000)
    assert np.allclose(cusum_path(x), _loop_cusum(x))


def test_excursion_peaks_one_per_excursion() -> None:
    path = np.array([0, 1, 3, 0, 0, 2, 0, 5, 4])
    assert excursion_peaks(path).tolist() == [3, 2, 5]
    assert excursion_peaks(np.zeros(4)).size == 0


def _normal_sequences(rng: np.random.Generator, n_seq: int, length: int) -> list[np.ndarray]:
    # Gamma-like positive scores with serial correlation (overlapping windows).
    seqs = []
    for _ in range(n_seq):
        e = rng.gamma(4.0, 0.25, length + 2)
        seqs.append(np.convolve(e, np.ones(3) / 3, mode="valid"))
    return seqs


def _false_alarms_per_week(seqs: list[np.ndarray], settings: DetectorSettings) -> float:
    detector = Detector(settings)
    starts = 0
    t = 0.0
    for seq in seqs:
        for s in seq:
            starts += sum(
                tr.kind is EventType.START
                for tr in detector.process(
                    float(s), window_start_ts=t, window_end_ts=t + WINDOW, dbfs=-20.0
                )
            )
            t += HOP
    return starts / (t / (7 * 24 * 3600))


def test_fit_meets_the_budget_on_fresh_normal_streams() -> None:
    """The level set from 10 min of held-out scores keeps false alarms on 2 weeks of NEW
    normal scores of the same process near the budget (a loose bound: the tail is estimated)."""
    rng = np.random.default_rng(7)
    cal = _normal_sequences(rng, 20, 60)  # 20 x 30 s
    fit = fit_evidence(
        cal, list(range(20)), hop_seconds=HOP, window_seconds=WINDOW, target_per_week=1.0
    )
    assert fit.settings.alarm_level >= MIN_ALARM_LEVEL
    assert fit.expected_false_alarms_per_week <= 1.0 + 1e-9
    fresh = _normal_sequences(rng, 20, 2 * 7 * 24 * 3600 // 20 // int(1 / HOP) * 2)
    settings = DetectorSettings(threshold=fit.settings.reference, evidence=fit.settings)
    assert _false_alarms_per_week(fresh, settings) <= 5.0


def test_a_persistent_fault_alarms_and_a_gross_one_alarms_fast() -> None:
    rng = np.random.default_rng(3)
    cal = _normal_sequences(rng, 20, 60)
    fit = fit_evidence(cal, list(range(20)), hop_seconds=HOP, window_seconds=WINDOW)
    settings = DetectorSettings(threshold=fit.settings.reference, evidence=fit.settings)
    counter = itertools.count()
    median = float(np.median(np.concatenate(cal)))

    def first_alarm(level: float) -> float | None:
        d = Detector(settings, id_factory=lambda: str(next(counter)))
        for i in range(200):
            t = i * HOP
            out = d.process(level, window_start_ts=t, window_end_ts=t + WINDOW, dbfs=-20.0)
            if out:
                return out[0].ts
        return None

    moderate = first_alarm(3.0 * median)
    gross = first_alarm(fit.settings.gross_score * 1.01)
    assert moderate is not None and moderate <= 30.0
    assert gross == pytest.approx(WINDOW + HOP)  # two windows
    assert fit.expected_delay_seconds["x3"] == pytest.approx(moderate)


def test_event_ends_once_the_evidence_has_drained() -> None:
    ev = EvidenceSettings(reference=1.0, alarm_level=2.0, gross_score=100.0)
    d = Detector(DetectorSettings(threshold=1.0, evidence=ev, update_interval_seconds=1e9))
    kinds = []
    for i, s in enumerate([3.0, 3.0, 0.5, 0.5, 0.5, 0.5]):
        t = i * HOP
        kinds += [
            tr.kind for tr in d.process(s, window_start_ts=t, window_end_ts=t + WINDOW, dbfs=0.0)
        ]
    # log 3 = 1.10 per window: 2.2 >= 2 after two windows; capped at 2, log 0.5 = -0.69 per
    # window drains it in three.
    assert kinds == [EventType.START, EventType.END]


def test_too_variable_calibration_warns_and_caps_the_level() -> None:
    rng = np.random.default_rng(5)
    # One long burst far above the rest of normal running: the budget cannot be promised.
    seqs = [rng.gamma(4.0, 0.25, 100) for _ in range(20)]
    seqs[3][40:60] = 50.0
    fit = fit_evidence(seqs, list(range(20)), hop_seconds=HOP, window_seconds=WINDOW)
    assert fit.settings.alarm_level <= MAX_ALARM_LEVEL
    assert any("promise" in w or "more" in w for w in fit.warnings)


def test_short_calibration_says_how_much_more_to_record() -> None:
    rng = np.random.default_rng(2)
    fit = fit_evidence(
        _normal_sequences(rng, 4, 60), [0, 1, 2, 3], hop_seconds=HOP, window_seconds=WINDOW
    )
    assert any("record at least" in w for w in fit.warnings)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="alarm_level"):
        EvidenceSettings(reference=1.0, alarm_level=math.nan, gross_score=2.0)
    with pytest.raises(ValueError, match="gross_score"):
        EvidenceSettings(reference=2.0, alarm_level=1.0, gross_score=1.0)
    with pytest.raises(ValueError, match="target"):
        fit_evidence([np.ones(10)], [0], hop_seconds=HOP, window_seconds=WINDOW, target_per_week=0)


def test_an_event_ends_within_release_windows_of_typical_normal_however_high_the_level() -> None:
    ev = EvidenceSettings(reference=2.0, alarm_level=50.0, gross_score=6.0, typical_score=1.0)
    d = Detector(
        DetectorSettings(threshold=2.0, evidence=ev, release_windows=4, update_interval_seconds=1e9)
    )
    scores = [5.0] * 60 + [1.0] * 6  # log 2.5 = 0.92 per window: 55 windows to reach 50
    kinds = []
    for i, s in enumerate(scores):
        t = i * HOP
        for tr in d.process(s, window_start_ts=t, window_end_ts=t + WINDOW, dbfs=0.0):
            kinds.append((tr.kind, i))
    assert kinds[0][0] is EventType.START
    # The cap is 4 windows of typical normal (log 0.5 = -0.69 each): it ends on the 4th.
    assert kinds[1] == (EventType.END, 63)
