"""Detector hysteresis and event lifecycle."""

from __future__ import annotations

import itertools

import pytest

from edge_asd.detection.detector import Detector, DetectorSettings

HOP = 0.5
WINDOW = 1.0


def _run(detector: Detector, scores: list[float], t0: float = 0.0):
    out = []
    for i, score in enumerate(scores):
        start = t0 + i * HOP
        out.extend(
            detector.process(score, window_start_ts=start, window_end_ts=start + WINDOW, dbfs=-20.0)
        )
    return out


def _detector(**kwargs) -> Detector:
    counter = itertools.count()
    settings = DetectorSettings(threshold=1.0, **kwargs)
    return Detector(settings, id_factory=lambda: f"ev{next(counter)}")


def test_single_spike_below_trigger_count_makes_no_event() -> None:
    d = _detector(trigger_windows=2, release_windows=2)
    assert _run(d, [0.5, 2.0, 0.5, 2.0, 0.5]) == []
    assert not d.in_event


def test_start_after_trigger_windows_and_end_after_release_windows() -> None:
    d = _detector(trigger_windows=2, release_windows=3, update_interval_seconds=100)
    scores = [0.1, 0.1, 1.5, 3.0, 2.0, 0.2, 0.2, 0.2, 0.2]
    events = _run(d, scores)
    kinds = [e.kind for e in events]
    assert kinds == ["start", "end"]
    start, end = events
    assert start.event_id == end.event_id == "ev0"
    # The first window over threshold is index 2: starts at 1.0 s.
    assert start.start_ts == pytest.approx(1.0)
    # Start is emitted at the end of the second over window (index 3).
    assert start.ts == pytest.approx(3 * HOP + WINDOW)
    assert end.peak_score == pytest.approx(3.0)
    assert end.windows_over == 3
    # End time is the end of the last window over threshold (index 4).
    assert end.end_ts == pytest.approx(4 * HOP + WINDOW)
    # The end is emitted on the third window under (index 7).
    assert end.ts == pytest.approx(7 * HOP + WINDOW)


def test_dip_shorter_than_release_keeps_one_event() -> None:
    d = _detector(trigger_windows=1, release_windows=3, update_interval_seconds=100)
    events = _run(d, [2.0, 0.5, 0.5, 2.0, 0.5, 0.5, 0.5])
    assert [e.kind for e in events] == ["start", "end"]
    assert events[1].windows_over == 2


def test_updates_at_most_once_per_interval() -> None:
    d = _detector(trigger_windows=1, release_windows=1, update_interval_seconds=1.0)
    events = _run(d, [2.0] * 9 + [0.0])
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    updates = [e for e in events if e.kind == "update"]
    assert len(updates) == 4  # 8 more windows at 0.5 s hop = 4 s
    gaps = [b.ts - a.ts for a, b in itertools.pairwise([events[0], *updates])]
    assert all(g >= 1.0 - 1e-9 for g in gaps)
    assert len({e.event_id for e in events}) == 1


def test_max_event_seconds_splits_long_events() -> None:
    d = _detector(
        trigger_windows=1, release_windows=2, max_event_seconds=3.0, update_interval_seconds=100
    )
    events = _run(d, [2.0] * 12)
    kinds = [e.kind for e in events]
    assert kinds.count("end") >= 1
    assert kinds[:3] == ["start", "end", "start"]
    assert events[0].event_id != events[2].event_id


def test_close_ends_open_event() -> None:
    d = _detector(trigger_windows=1)
    _run(d, [2.0, 2.0])
    closing = d.close(ts=100.0)
    assert [e.kind for e in closing] == ["end"]
    assert not d.in_event
    assert d.close(ts=101.0) == []


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ValueError, match="threshold"):
        DetectorSettings(threshold=0.0)
    with pytest.raises(ValueError, match="trigger_windows"):
        DetectorSettings(threshold=1.0, trigger_windows=0)
