"""Tests for edge_asd.detection.windowing: streaming windows equal whole-signal framing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_asd.detection.windowing import Windower, frame_signal


def test_frame_signal_starts_and_count() -> None:
    x = np.arange(10, dtype=np.float32)
    w = frame_signal(x, 4, 3)
    assert w.shape == (3, 4)  # starts 0, 3, 6; 9 would need samples 9..12
    np.testing.assert_array_equal(w[:, 0], [0, 3, 6])
    np.testing.assert_array_equal(w[2], [6, 7, 8, 9])
    assert w.dtype == np.float32


def test_frame_signal_short_input_gives_no_windows() -> None:
    assert frame_signal(np.zeros(3, np.float32), 4, 2).shape == (0, 4)


def test_windows_are_copies() -> None:
    x = np.arange(8, dtype=np.float32)
    w = frame_signal(x, 4, 2)
    w[0, 0] = 99.0
    assert x[0] == 0.0 and w[1, 0] == 2.0


def test_push_carries_leftovers() -> None:
    win = Windower(4, 2)
    assert win.push(np.arange(3, dtype=np.float32)).shape == (0, 4)
    assert win.pending_samples == 3
    out = win.push(np.arange(3, 6, dtype=np.float32))
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [2, 3, 4, 5]])
    assert win.pending_samples == 2


def test_reset_drops_leftovers() -> None:
    win = Windower(4, 4)
    win.push(np.ones(3, np.float32))
    win.reset()
    out = win.push(np.zeros(4, np.float32))
    np.testing.assert_array_equal(out, np.zeros((1, 4)))


def test_rejects_bad_sizes_and_shapes() -> None:
    with pytest.raises(ValueError, match="window_samples"):
        Windower(0, 1)
    with pytest.raises(ValueError, match="hop_samples"):
        frame_signal(np.zeros(4), 2, 0)
    with pytest.raises(ValueError, match="mono"):
        Windower(4, 2).push(np.zeros((4, 2)))


@settings(max_examples=200, deadline=None)
@given(
    window=st.integers(min_value=1, max_value=40),
    hop=st.integers(min_value=1, max_value=50),
    sizes=st.lists(st.integers(min_value=0, max_value=60), max_size=25),
)
def test_any_split_gives_frame_signal_windows(window: int, hop: int, sizes: list[int]) -> None:
    x = np.arange(sum(sizes), dtype=np.float32)
    win = Windower(window, hop)
    parts, start = [], 0
    for size in sizes:
        parts.append(win.push(x[start : start + size]))
        start += size
    got = np.concatenate([np.zeros((0, window), np.float32), *parts])
    np.testing.assert_array_equal(got, frame_signal(x, window, hop))
