"""Is the machine running? Machine state first, anomaly second (docs/method.md, section 5.1).

A stopped machine is not a fault. A window looks *stopped* when it is digital silence, when its
level is far below the calibrated running level, or (when recordings of the stopped machine were
given at calibration) when it is nearer to those than to the running bank. After
`idle_windows` stopped-looking windows in a row the machine is `idle`; after `running_windows`
running-looking windows it runs again, and for `holdoff_seconds` after that its run-up is not
judged. Stopped-looking windows never feed the anomaly decision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np

from edge_asd.detection.detector import DEFAULT_HOLDOFF_SECONDS

DIGITAL_SILENCE_DBFS: Final = -90.0
"""Below this RMS level a window is silence whatever was calibrated (a muted or idle input)."""
LEVEL_MARGIN_DB: Final = 10.0
"""A running machine's window is at most this far below the quietest calibration windows
(1st percentile) before it counts as stopped, unless calibration varied more (see below)."""
LEVEL_SPREAD_FACTOR: Final = 3.0
"""...the margin widens to this many times the calibration levels' robust spread."""
RUNNING_LEVEL_QUANTILE: Final = 0.01
DEFAULT_IDLE_WINDOWS: Final = 4
"""Consecutive stopped-looking windows before `idle` (2 s at 0.5 s hop)."""
DEFAULT_RUNNING_WINDOWS: Final = 2
OFF_MARGIN: Final = 1.0
"""A window is nearer the stopped machine when its distance to the off bank times this is
below its distance to the running bank."""


@dataclass(frozen=True)
class RunningProfile:
    """What calibration learned about the running machine's level (stored in the bundle)."""

    running_dbfs_low: float
    """1st percentile of the calibration windows' RMS level (dBFS)."""
    running_dbfs_median: float
    stopped_below_dbfs: float
    """Windows below this level look stopped."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunningProfile:
        return cls(
            running_dbfs_low=float(data["running_dbfs_low"]),
            running_dbfs_median=float(data["running_dbfs_median"]),
            stopped_below_dbfs=float(data["stopped_below_dbfs"]),
        )


def running_profile(window_levels_dbfs: np.ndarray) -> RunningProfile:
    """The level rule from the calibration windows' levels (dBFS)."""
    levels = np.asarray(window_levels_dbfs, dtype=np.float64)
    low = float(np.quantile(levels, RUNNING_LEVEL_QUANTILE))
    median = float(np.median(levels))
    # Robust spread: half the 5-95 % range; a machine whose level swings (load cycles) gets a
    # wider margin than a steady one.
    spread = float(np.quantile(levels, 0.95) - np.quantile(levels, 0.05)) / 2.0
    margin = max(LEVEL_MARGIN_DB, LEVEL_SPREAD_FACTOR * spread)
    return RunningProfile(
        running_dbfs_low=low,
        running_dbfs_median=median,
        stopped_below_dbfs=max(DIGITAL_SILENCE_DBFS, low - margin),
    )


@dataclass(frozen=True)
class RunningSettings:
    idle_windows: int = DEFAULT_IDLE_WINDOWS
    running_windows: int = DEFAULT_RUNNING_WINDOWS
    holdoff_seconds: float = DEFAULT_HOLDOFF_SECONDS


def looks_stopped(
    dbfs: float,
    profile: RunningProfile | None,
    running_distance: float | None = None,
    off_distance: float | None = None,
) -> bool:
    """Does one window look like the machine is not running?"""
    if dbfs < DIGITAL_SILENCE_DBFS:
        return True
    if profile is not None and dbfs < profile.stopped_below_dbfs:
        return True
    if running_distance is not None and off_distance is not None:
        return off_distance * OFF_MARGIN < running_distance
    return False


class RunningMonitor:
    """Debounced running/stopped decision with a hold-off after each restart."""

    def __init__(self, settings: RunningSettings) -> None:
        self.settings = settings
        self._idle = False
        self._stopped_run = 0
        self._running_run = 0
        self._holdoff_until = -math.inf

    @property
    def idle(self) -> bool:
        return self._idle

    def holding_off(self, at: float) -> bool:
        """Is `at` within the hold-off after a restart?"""
        return at < self._holdoff_until

    def update(self, stopped: bool, at: float) -> bool | None:
        """Feed one window (`at`: its end time). Returns True when the machine just went idle,
        False when it just started running again, None when nothing changed."""
        if stopped:
            self._running_run = 0
            self._stopped_run += 1
            if not self._idle and self._stopped_run >= self.settings.idle_windows:
                self._idle = True
                return True
            return None
        self._stopped_run = 0
        self._running_run += 1
        if self._idle and self._running_run >= self.settings.running_windows:
            self._idle = False
            self._holdoff_until = at + self.settings.holdoff_seconds
            return False
        return None
