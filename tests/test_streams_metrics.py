"""The alarm metrics of benchmarks/streams.py on hand-made intervals, events and states (no
audio, no ../shared data)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest

from tests.benchmark_loader import benchmark_module


@pytest.fixture(scope="module")
def streams() -> Iterator[ModuleType]:
    with benchmark_module("streams") as module:
        yield module


def _scenery(m: ModuleType) -> list:
    return [
        m.Interval(m.FAULT, "whine", 100.0, 160.0, "-10 dB"),
        m.Interval(m.STOP, m.ROOM_STOP, 300.0, 340.0),
        m.Interval(m.STOP, m.SILENCE_STOP, 500.0, 530.0),
        m.Interval(m.FAULT, "whine", 800.0, 860.0, "-20 dB"),
        m.Interval(m.CONDITION, "a", 0.0, 600.0),
        m.Interval(m.CONDITION, "b", 600.0, 1000.0),
    ]


def test_measure_outside_takes_the_union_of_overlapping_spans(streams: ModuleType) -> None:
    assert streams.measure_outside(0.0, 100.0, []) == 100.0
    assert streams.measure_outside(0.0, 100.0, [(10, 30), (20, 40), (90, 120)]) == 60.0
    assert streams.measure_outside(50.0, 100.0, [(0, 60), (200, 300)]) == 40.0


def test_alarms_are_attributed_with_the_grace_after_each_interval(streams: ModuleType) -> None:
    m = streams
    intervals = _scenery(m)
    assert m.attribute(50.0, intervals, 10.0) is None
    assert m.attribute(100.0, intervals, 10.0).group == "whine"
    assert m.attribute(169.9, intervals, 10.0).group == "whine"
    assert m.attribute(170.1, intervals, 10.0) is None
    assert m.attribute(345.0, intervals, 10.0).group == m.ROOM_STOP


def test_stream_metrics_count_false_alarms_faults_and_stops(streams: ModuleType) -> None:
    m = streams
    events = [
        m.Event(ts=50.0, start_ts=48.5, end=55.0),  # normal running, condition a
        m.Event(ts=103.0, start_ts=101.5, end=162.0),  # fault 1, 3 s after onset
        m.Event(ts=165.0, start_ts=163.5, end=168.0),  # inside fault 1's grace: not false
        m.Event(ts=310.0, start_ts=308.5, end=320.0),  # stop alarm (room)
        m.Event(ts=700.0, start_ts=698.5, end=705.0),  # normal running, condition b
        m.Event(ts=815.0, start_ts=813.5, end=870.0),  # fault 2, 15 s after onset
    ]
    states = [(0.5, "normal"), (50.0, "anomalous"), (55.0, "normal")]
    result = m.stream_metrics(1000.0, _scenery(m), events, states, grace=10.0, catch_within=10.0)
    # Not normal: 100-170, 300-350, 500-540, 800-870.
    assert result["normal_seconds"] == pytest.approx(1000.0 - 70 - 50 - 40 - 70)
    assert result["false_alarms"] == 2
    assert result["stop_alarms"] == 1
    assert result["fault_alarms"] == 3
    assert result["conditions"]["a"] == {
        "normal_seconds": pytest.approx(440.0),
        "false_alarms": 1,
        "alarm_on_seconds": pytest.approx(5.0),  # the false alarm; the others are excused
    }
    assert result["conditions"]["b"]["false_alarms"] == 1
    assert result["conditions"]["b"]["normal_seconds"] == pytest.approx(330.0)
    assert result["alarm_on_seconds"] == pytest.approx(10.0)
    first, second = result["faults"]
    assert first["delay"] == pytest.approx(3.0) and first["caught_within"]
    assert second["delay"] == pytest.approx(15.0) and second["caught"]
    assert not second["caught_within"]
    room, silence = result["stops"]
    assert (room["alarms"], room["handled"]) == (1, False)
    assert (silence["alarms"], silence["handled"]) == (0, True)
    assert silence["state_reported"] is None  # no state is required of today's variants

    totals = m.summarise([result, result])
    assert totals["false_alarms"] == 4
    assert totals["false_alarms_per_hour"] == pytest.approx(4 / (2 * 770.0 / 3600.0))
    assert totals["alarm_on_share"] == pytest.approx(10.0 / 770.0)
    assert totals["faults"] == 4 and totals["faults_caught_within"] == 2
    assert totals["share_caught_within"] == pytest.approx(0.5)
    assert totals["median_delay_seconds"] == pytest.approx(9.0)
    assert totals["by_stop"][m.ROOM_STOP] == {"n": 2, "handled": 0, "alarms": 2}
    assert list(totals["by_fault"]) == ["whine -20 dB", "whine -10 dB"]
    assert totals["conditions"]["b"]["false_alarms_per_hour"] == pytest.approx(
        2 / (2 * 330.0 / 3600.0)
    )


def test_a_fault_during_an_open_false_alarm_is_not_caught(streams: ModuleType) -> None:
    m = streams
    fault = m.Interval(m.FAULT, "rub_bursts", 100.0, 150.0, "0 dB")
    outcome = m.fault_outcome(fault, [m.Event(ts=95.0, start_ts=93.5, end=None)], 10.0)
    assert outcome["open_at_onset"] and not outcome["caught"]


def test_stop_states_must_be_reported_in_time(streams: ModuleType) -> None:
    m = streams
    room = m.Interval(m.STOP, m.ROOM_STOP, 300.0, 340.0)
    on_time = [(0.0, "normal"), (305.0, "idle"), (341.0, "normal")]
    late = [(0.0, "normal"), (315.0, "idle"), (341.0, "normal")]

    def handled(states: list, events: list) -> bool:
        return m.stop_outcome(
            room,
            events,
            states,
            grace=10.0,
            expected_states=frozenset({"idle"}),
            state_within=10.0,
        )["handled"]

    assert handled(on_time, [])
    assert not handled(late, [])
    assert not handled(on_time, [m.Event(ts=302.0, start_ts=300.5, end=304.0)])
    # An alarm raised before the stop and still open through it is not a handled stop either;
    # one that ends within `state_within` of the stop's start is.
    assert not handled(on_time, [m.Event(ts=250.0, start_ts=248.5, end=None)])
    assert handled(on_time, [m.Event(ts=250.0, start_ts=248.5, end=305.0)])
    outcome = m.stop_outcome(room, [], on_time, grace=10.0, expected_states=None, state_within=10.0)
    assert outcome["states"] == ["idle", "normal"]


def test_capture_health_follows_the_daemon_on_digital_silence(streams: ModuleType) -> None:
    """As `CaptureSupervisor`: digital silence is audio (the pipeline reports it idle), so the
    stream is never closed and nothing is lost; only the first block is a discontinuity."""
    m = streams
    health = m.CaptureHealth(no_audio_seconds=2.0)
    block = 0.125
    sound = np.full(2000, 0.01, dtype=np.float32)
    silence = np.zeros(2000, dtype=np.float32)
    assert health.read(sound, block) == (True, True)
    assert health.healthy is True
    reads = [health.read(silence, block * k) for k in range(2, 60)]
    assert reads == [(True, False)] * 58
    assert health.healthy is True
    assert health.reopenings == 0
    assert health.lost_seconds == 0.0
