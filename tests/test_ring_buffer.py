"""Tests for edge_asd.audio.ring_buffer: ordering, overwrite accounting, concurrent producer."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_asd.audio.ring_buffer import RingBuffer

EXACT_FLOAT32_INTS = 1 << 24
"""Frame indices below this are exact in float32, so data can carry its own position."""


def _frames(start: int, count: int, channels: int = 2) -> np.ndarray:
    idx = (np.arange(start, start + count) % EXACT_FLOAT32_INTS).astype(np.float32)
    return np.repeat(idx[:, None], channels, axis=1) + np.arange(channels, dtype=np.float32) * 0


def test_read_returns_written_frames_in_order() -> None:
    ring = RingBuffer(100, 2)
    ring.write(_frames(0, 30))
    ring.write(_frames(30, 20))
    out = ring.read()
    assert out.shape == (50, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _frames(0, 50))
    assert ring.read().shape == (0, 2)


def test_wraparound_and_max_frames() -> None:
    ring = RingBuffer(16, 1)
    ring.write(_frames(0, 10, 1))
    np.testing.assert_array_equal(ring.read(max_frames=7), _frames(0, 7, 1))
    ring.write(_frames(10, 12, 1))  # wraps past the end of the array
    np.testing.assert_array_equal(ring.read(), _frames(7, 15, 1))
    assert ring.overwritten_frames == 0


def test_slow_reader_loses_oldest_and_counts_them() -> None:
    ring = RingBuffer(10, 1)
    ring.write(_frames(0, 8, 1))
    ring.write(_frames(8, 7, 1))  # 15 written, capacity 10: frames 0..4 overwritten
    out = ring.read()
    np.testing.assert_array_equal(out, _frames(5, 10, 1))
    assert ring.overwritten_frames == 5


def test_block_larger_than_capacity_keeps_newest() -> None:
    ring = RingBuffer(8, 1)
    ring.write(_frames(0, 3, 1))
    ring.write(_frames(3, 20, 1))
    out = ring.read()
    np.testing.assert_array_equal(out, _frames(15, 8, 1))
    assert ring.overwritten_frames == 15
    assert ring.frames_written == 23


def test_wait_times_out_then_wakes_on_write() -> None:
    ring = RingBuffer(10, 1)
    assert ring.wait(0.01) is False
    timer = threading.Timer(0.05, ring.write, args=(np.ones((3, 1), np.float32),))
    timer.start()
    try:
        assert ring.wait(5.0) is True
    finally:
        timer.join(5.0)
    assert ring.read().shape == (3, 1)
    assert ring.wait(0.0) is False


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0, 1)
    with pytest.raises(ValueError, match="channels"):
        RingBuffer(4, 0)


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=64),
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=100)), min_size=1, max_size=60
    ),
)
def test_count_is_never_lost(capacity: int, ops: list[tuple[bool, int]]) -> None:
    """written == read + overwritten + unread, and every frame read is the right one."""
    ring = RingBuffer(capacity, 1)
    written = 0
    expected_next = 0
    for is_write, size in ops:
        if is_write:
            ring.write(_frames(written, size, 1))
            written += size
        else:
            out = ring.read(max_frames=size)
            if out.shape[0]:
                first = int(out[0, 0])
                assert first >= expected_next
                np.testing.assert_array_equal(out, _frames(first, out.shape[0], 1))
                expected_next = first + out.shape[0]
        assert ring.frames_written == written
        assert ring.available_frames <= capacity
        accounted = ring.frames_read + ring.overwritten_frames + ring.available_frames
        # Frames lapped since the last read are only counted by the next read.
        assert written >= accounted
        if not is_write:
            assert written == accounted
    ring.read()
    assert written == ring.frames_read + ring.overwritten_frames


def test_concurrent_producer_never_yields_torn_data() -> None:
    """A producer thread that laps the reader: what is read is always exact and in order."""
    ring = RingBuffer(256, 2)
    total_blocks = 3000
    block = 37
    done = threading.Event()

    def produce() -> None:
        for i in range(total_blocks):
            ring.write(_frames(i * block, block))
        done.set()

    producer = threading.Thread(target=produce, name="test-producer", daemon=True)
    producer.start()
    expected_next = 0
    got = 0
    while not (done.is_set() and ring.available_frames == 0):
        if not ring.wait(0.01):
            continue
        out = ring.read()
        if out.shape[0]:
            first = int(out[0, 0])
            assert first >= expected_next
            np.testing.assert_array_equal(out, _frames(first, out.shape[0]))
            expected_next = first + out.shape[0]
            got += out.shape[0]
    producer.join(10.0)
    assert not producer.is_alive()
    assert got == ring.frames_read
    assert ring.frames_written == total_blocks * block
    assert ring.frames_written == ring.frames_read + ring.overwritten_frames


class _LappingArray(np.ndarray):
    """Ring storage that lets the producer write while the consumer is copying out of it."""

    interrupt: object = None

    def __getitem__(self, key: Any) -> np.ndarray:
        hook, type(self).interrupt = type(self).interrupt, None
        if callable(hook):
            hook()
        return np.asarray(super().__getitem__(key))


def test_frames_overwritten_during_the_copy_are_discarded_and_counted() -> None:
    ring = RingBuffer(10, 1)
    ring.write(_frames(0, 10, 1))
    ring._data = ring._data.view(_LappingArray)
    # While the reader copies frames 0..9, the producer writes 4 more: frames 0..3 are clobbered.
    _LappingArray.interrupt = lambda: ring.write(_frames(10, 4, 1))
    out = ring.read()
    np.testing.assert_array_equal(out, _frames(4, 6, 1))
    assert ring.overwritten_frames == 4
    np.testing.assert_array_equal(ring.read(), _frames(10, 4, 1))
    assert ring.frames_written == ring.frames_read + ring.overwritten_frames
