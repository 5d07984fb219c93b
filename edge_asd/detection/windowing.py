"""Fixed-length analysis windows with a fixed hop, from whole signals or from a stream.

`Windower.push` carries leftover samples between calls, so pushing any split of a signal
yields exactly the windows of `frame_signal` on the whole signal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

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


def window_count(n_samples: int, window_samples: int, hop_samples: int) -> int:
    """Windows that `frame_signal` cuts from `n_samples` (windows start at 0, hop, 2*hop, ...)."""
    if n_samples < window_samples:
        return 0
    return (n_samples - window_samples) // hop_samples + 1


def iter_window_batches(
    samples: npt.ArrayLike, window_samples: int, hop_samples: int, batch_windows: int
) -> Iterator[npt.NDArray[np.float32]]:
    """The windows of `frame_signal(samples, ...)`, `batch_windows` at a time, so a long
    recording is never framed into memory at once."""
    x = _as_mono(samples)
    total = window_count(x.shape[0], window_samples, hop_samples)
    for first in range(0, total, batch_windows):
        last = min(total, first + batch_windows)
        piece = x[first * hop_samples : (last - 1) * hop_samples + window_samples]
        yield frame_signal(piece, window_samples, hop_samples)


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
