"""The daemon's clock: monotonic time, expressed in epoch seconds anchored to the wall clock.

Detection (windows, events, holdoffs, score rate limits) runs on `Timeline.now`, which is
`time.monotonic` shifted so that it reads the wall time at start. It never jumps, so event
durations are never negative and no timeout fires early or late when NTP steps the clock (a
gateway without a real-time clock boots in 1970 or in the past and is corrected later).

Payload timestamps are wall time: `to_wall` adds the current offset between the wall clock and
the timeline. `check` (called by the daemon's main loop every second) notices a step of the
wall clock, logs it once and re-anchors the offset, so timestamps follow the corrected clock
from then on while durations stay the monotonic ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

_LOGGER = logging.getLogger(__name__)

CLOCK_JUMP_SECONDS: Final = 2.0
"""A difference between the wall clock and the timeline above this is a step, not drift (NTP
slews at most 0.5 ms/s; both clocks are slewed alike)."""


class Timeline:
    """Monotonic seconds on an epoch scale; thread-safe."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jump_seconds: float = CLOCK_JUMP_SECONDS,
    ) -> None:
        self._wall = wall
        self._mono = monotonic
        self._jump_seconds = jump_seconds
        self._lock = threading.Lock()
        self._mono0 = monotonic()
        self._origin = wall()
        self._offset = 0.0
        """Wall clock minus timeline, as last anchored."""
        self.jumps = 0
        """Wall-clock steps seen (each logged and re-anchored)."""

    def now(self) -> float:
        """Monotonic time, in epoch seconds as of the start (never jumps)."""
        return self._origin + (self._mono() - self._mono0)

    def to_wall(self, t: float) -> float:
        """Epoch seconds on the current wall clock of timeline time `t` (for payloads)."""
        with self._lock:
            return t + self._offset

    def wall_now(self) -> float:
        return self.to_wall(self.now())

    def check(self) -> float | None:
        """Re-anchor if the wall clock stepped; the step in seconds, or None."""
        wall = self._wall()
        t = self.now()
        with self._lock:
            step = wall - (t + self._offset)
            if abs(step) < self._jump_seconds:
                return None
            self._offset += step
            self.jumps += 1
        _LOGGER.warning(
            "wall clock jumped by %+.1f s; re-anchored: event and score timestamps follow the "
            "new clock, durations and timeouts keep running on the monotonic clock",
            step,
        )
        return step
