"""Fixed-length analysis windows with a fixed hop, from whole signals or from a stream.

`Windower.push` carries leftover samples between calls, so pushing any split of a signal
yields exactly the windows of `frame_signal` on the whole signal.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)


def _check_sizes(window_samples: int, hop_samples: int) -> None:
    if window_samples <= 0:
        raise ValueError(f"window_samples must be positive, got {window_samples}")
    if hop_samples <= 0:
        raise ValueError(f"hop_samples must be positive, got {hop_samples}")


def _as_mono(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"windowing expects mono samples [n], got shape {x.shape}")
    return x


def frame_signal(
    x: npt.ArrayLike, window_samples: int, hop_samples: int
) -> npt.NDArray[np.float32]:
    """Windows [n, window_samples] starting at 0, hop, 2*hop, ... while they fit (copies)."""
    _check_sizes(window_samples, hop_samples)
    signal = _as_mono(x)
    if signal.shape[0] < window_samples:
        return np.zeros((0, window_samples), dtype=np.float32)
    views = np.lib.stride_tricks.sliding_window_view(signal, window_samples)[::hop_samples]
    return np.array(views, dtype=np.float32, copy=True)


class Windower:
    """Streaming framer: `push` blocks of samples, get the windows they complete."""

    def __init__(self, window_samples: int, hop_samples: int) -> None:
        _check_sizes(window_samples, hop_samples)
        self.window_samples = int(window_samples)
        self.hop_samples = int(hop_samples)
        self._pending = np.zeros(0, dtype=np.float32)
        # With hop > window, samples between windows are skipped; this many are still to skip.
        self._skip = 0

    def reset(self) -> None:
        """Drop leftover samples; the next push starts a new signal."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._skip = 0

    @property
    def pending_samples(self) -> int:
        """Samples carried over, waiting for the next window to fill."""
        return int(self._pending.shape[0])

    def push(self, samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Add mono samples; returns the complete windows [n, window_samples] (copies)."""
        block = _as_mono(samples)
        if self._skip:
            skipped = min(self._skip, block.shape[0])
            block = block[skipped:]
            self._skip -= skipped
        buffer = np.concatenate([self._pending, block]) if self._pending.size else block
        windows = frame_signal(buffer, self.window_samples, self.hop_samples)
        consumed = windows.shape[0] * self.hop_samples
        if consumed > buffer.shape[0]:
            self._skip = consumed - buffer.shape[0]
        self._pending = buffer[consumed:].copy()
        return windows
