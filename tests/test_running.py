"""Running / stopped decision: the per-window rules, debouncing and the hold-off."""

from __future__ import annotations

import numpy as np

from edge_asd.detection.running import (
    DIGITAL_SILENCE_DBFS,
    LEVEL_MARGIN_DB,
    RunningMonitor,
    RunningSettings,
    looks_stopped,
    running_profile,
)


def test_profile_margin_follows_the_calibration_spread() -> None:
    steady = running_profile(np.full(200, -27.0) + np.linspace(-0.5, 0.5, 200))
    assert steady.stopped_below_dbfs < steady.running_dbfs_low - LEVEL_MARGIN_DB + 1e-9
    swinging = running_profile(np.linspace(-40.0, -10.0, 200))
    # A machine whose level swings by 30 dB gets a wider margin than the fixed one.
    assert swinging.running_dbfs_low - swinging.stopped_below_dbfs > LEVEL_MARGIN_DB
    assert swinging.stopped_below_dbfs >= DIGITAL_SILENCE_DBFS


def test_window_rules() -> None:
    profile = running_profile(np.full(100, -27.0))
    assert looks_stopped(-120.0, None)  # digital silence needs no calibration
    assert not looks_stopped(-60.0, None)
    assert looks_stopped(-50.0, profile)  # the fan switched off: 23 dB down
    assert not looks_stopped(-30.0, profile)
    # Room as loud as the machine: only the recordings of the stopped machine tell.
    assert looks_stopped(-27.0, profile, running_distance=0.3, off_distance=0.1)
    assert not looks_stopped(-27.0, profile, running_distance=0.1, off_distance=0.3)


def test_monitor_debounces_and_holds_off_after_a_restart() -> None:
    monitor = RunningMonitor(RunningSettings(idle_windows=3, running_windows=2, holdoff_seconds=5))
    t = 0.0
    changes = []
    for stopped in [False, True, True, False, True, True, True, True, False, False, False]:
        t += 0.5
        change = monitor.update(stopped, t)
        if change is not None:
            changes.append((change, t))
    # A 2-window dip does not make it idle; 3 stopped windows do; 2 running windows end it.
    assert changes == [(True, 3.5), (False, 5.0)]
    assert monitor.holding_off(5.0 + 4.9)
    assert not monitor.holding_off(5.0 + 5.0)
