"""Single-producer, single-consumer audio ring buffer that the capture callback writes into.

The producer (the PortAudio callback) never waits, never logs and copies only: when the reader
falls behind, the oldest unread frames are overwritten and counted. No lock is shared: the
producer publishes two monotonically increasing counters (frames reserved before its copy,
frames written after it) and the consumer validates what it copied against them.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)


class RingBuffer:
    """Preallocated float32 ring of `capacity_frames` x `channels`."""

    def __init__(self, capacity_frames: int, channels: int) -> None:
        if capacity_frames <= 0:
            raise ValueError(f"ring buffer capacity_frames must be positive, got {capacity_frames}")
        if channels <= 0:
            raise ValueError(f"ring buffer channels must be positive, got {channels}")
        self.capacity_frames = int(capacity_frames)
        self.channels = int(channels)
        self._data = np.zeros((self.capacity_frames, self.channels), dtype=np.float32)
        # Producer-owned counters. `_reserved` moves before the copy, `frames_written` after:
        # a frame below `frames_written` is complete; one below `_reserved - capacity` may be gone.
        self._reserved = 0
        self.frames_written = 0
        # Consumer-owned counters.
        self._read_pos = 0
        self.frames_read = 0
        self.overwritten_frames = 0
        self._data_event = threading.Event()

    @property
    def available_frames(self) -> int:
        """Unread frames still in the ring (at most the capacity)."""
        return min(self.frames_written - self._read_pos, self.capacity_frames)

    def write(self, block: npt.NDArray[np.floating]) -> None:
        """Producer side: copy `block` [frames, channels] in; never blocks or logs."""
        frames = block.shape[0]
        if frames == 0:
            return
        start = self.frames_written
        end = start + frames
        self._reserved = end
        if frames > self.capacity_frames:
            # Only the newest `capacity` frames can be kept; the reader counts the rest as lost.
            block = block[frames - self.capacity_frames :]
            start = end - self.capacity_frames
            frames = self.capacity_frames
        offset = start % self.capacity_frames
        first = min(frames, self.capacity_frames - offset)
        self._data[offset : offset + first] = block[:first]
        if first < frames:
            self._data[: frames - first] = block[first:]
        self.frames_written = end
        self._data_event.set()

    def read(self, max_frames: int | None = None) -> npt.NDArray[np.float32]:
        """Consumer side: the oldest unread frames, [frames, channels] float32 (maybe empty)."""
        written = self.frames_written
        start = self._read_pos
        if written - start > self.capacity_frames:
            lost = written - self.capacity_frames - start
            self.overwritten_frames += lost
            start += lost
        count = written - start
        if max_frames is not None:
            count = max(0, min(count, max_frames))
        out = np.empty((count, self.channels), dtype=np.float32)
        offset = start % self.capacity_frames
        first = min(count, self.capacity_frames - offset)
        out[:first] = self._data[offset : offset + first]
        if first < count:
            out[first:] = self._data[: count - first]
        # The producer may have lapped us during the copy: frames older than this are suspect.
        oldest_valid = self._reserved - self.capacity_frames
        dropped = min(count, max(0, oldest_valid - start))
        self._read_pos = start + count
        if dropped:
            self.overwritten_frames += dropped
            out = out[dropped:]
        self.frames_read += out.shape[0]
        return out

    def wait(self, timeout_seconds: float) -> bool:
        """Wait up to `timeout_seconds` for unread frames; True if there are some."""
        if self.frames_written > self._read_pos:
            return True
        self._data_event.clear()
        # Re-check after clearing: a write between the first check and clear() set the event
        # before we cleared it, but has already advanced the counter.
        if self.frames_written > self._read_pos:
            return True
        return self._data_event.wait(timeout_seconds)
