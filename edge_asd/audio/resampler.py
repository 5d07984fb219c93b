"""Rational polyphase FIR resampling, streaming and whole-signal, with one filter for both.

The stream form keeps its input history and phase between calls, so the concatenated output
does not depend on how the input was split into blocks. `resample` runs the same stream and
removes its constant delay, so a WAV file and a live capture of the same sound give the same
16 kHz samples.

Hand-written with numpy rather than `scipy.signal.resample_poly` / `soxr` on purpose: the daemon
resamples live capture from devices that only offer their native rate, and its memory target
(<= 100 MB peak RSS, docs/benchmarks.md) has no room for scipy (importing `scipy.signal` alone
costs about 80 MB of RSS and seconds of start-up) or another native library. It also needs a
stream form whose output does not depend on the block split, which `resample_poly` lacks.
"""

from __future__ import annotations

import logging
from math import ceil, gcd
from typing import Final

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)

STOPBAND_ATTENUATION_DB: Final = 80.0
"""Kaiser design target: aliases are at least this far below the passband."""

PASSBAND_EDGE_FRACTION: Final = 0.9
"""Passband ends at this fraction of the lower of the two Nyquist frequencies."""

STOPBAND_EDGE_FRACTION: Final = 1.0
"""Stopband starts at the lower Nyquist frequency, so nothing above it folds below 90 % of it."""

WHOLE_SIGNAL_CHUNK_FRAMES: Final = 16_384
"""Input frames per step when `resample` runs the stream over a whole signal (bounds memory)."""


def _kaiser_order(attenuation_db: float, width: float) -> tuple[int, float]:
    """Kaiser's formulas: taps and beta for a stopband attenuation and a transition width
    (normalised to Nyquist), as scipy.signal.kaiserord; numpy only, because importing
    scipy.signal costs the daemon ~80 MB of RSS and seconds of start-up."""
    if attenuation_db > 50:
        beta = 0.1102 * (attenuation_db - 8.7)
    elif attenuation_db > 21:
        beta = 0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21)
    else:
        beta = 0.0
    taps = (attenuation_db - 7.95) / 2.285 / (np.pi * width) + 1
    return ceil(taps), beta


def _kaiser_lowpass(n_taps: int, cutoff: float, beta: float) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass with unit DC gain (scipy.signal.firwin with a Kaiser window)."""
    m = np.arange(n_taps, dtype=np.float64) - 0.5 * (n_taps - 1)
    taps = cutoff * np.sinc(cutoff * m) * np.kaiser(n_taps, beta)
    result: npt.NDArray[np.float64] = taps / taps.sum()
    return result


def _design_polyphase(up: int, down: int) -> tuple[npt.NDArray[np.float64], int]:
    """Kaiser-windowed sinc low-pass at the upsampled rate, split into `up` phases.

    Returns (phases [up, taps], delay in output samples). The prototype length is chosen so
    that its group delay is a whole number of output samples, which lets `resample` remove it
    exactly.
    """
    # Frequencies normalised to the Nyquist frequency of the upsampled rate (orig * up).
    lower_nyquist = 1.0 / max(up, down)
    width = (STOPBAND_EDGE_FRACTION - PASSBAND_EDGE_FRACTION) * lower_nyquist
    cutoff = 0.5 * (STOPBAND_EDGE_FRACTION + PASSBAND_EDGE_FRACTION) * lower_nyquist
    min_taps, beta = _kaiser_order(STOPBAND_ATTENUATION_DB, width)
    delay_out = ceil((min_taps - 1) / (2 * down))
    n_taps = 2 * delay_out * down + 1
    prototype = _kaiser_lowpass(n_taps, cutoff, beta) * up
    taps_per_phase = ceil(n_taps / up)
    padded = np.zeros(taps_per_phase * up, dtype=np.float64)
    padded[:n_taps] = prototype
    # phases[p, i] = h[p + i * up]: the taps that meet input x[j0 - i] at phase p.
    phases = np.ascontiguousarray(padded.reshape(taps_per_phase, up).T)
    return phases, delay_out


class StreamResampler:
    """Streaming rational resampler from `orig_rate` Hz to `target_rate` Hz.

    `process` takes float blocks shaped [frames] or [frames, channels] and returns float32
    blocks of the same rank. Output over any split of the input equals one call on the whole
    input. Equal rates pass through unchanged (delay 0).
    """

    def __init__(self, orig_rate: int, target_rate: int) -> None:
        if orig_rate <= 0 or target_rate <= 0:
            raise ValueError(
                f"resampler rates must be positive, got orig_rate={orig_rate} Hz, "
                f"target_rate={target_rate} Hz"
            )
        self.orig_rate = int(orig_rate)
        self.target_rate = int(target_rate)
        common = gcd(self.orig_rate, self.target_rate)
        self.up = self.target_rate // common
        self.down = self.orig_rate // common
        self._passthrough = self.up == self.down
        if self._passthrough:
            self._phases = np.ones((1, 1), dtype=np.float64)
            self._delay = 0
        else:
            self._phases, self._delay = _design_polyphase(self.up, self.down)
        self._taps = self._phases.shape[1]
        # Oldest-first taps, to meet the sliding windows buffer[s : s + taps] directly.
        self._reversed = np.ascontiguousarray(self._phases[:, ::-1])
        self._history: npt.NDArray[np.float64] | None = None
        # Upsampled-time position of the next output, relative to the next input block's start.
        self._next_pos = 0
        _LOGGER.debug(
            "resampler %d -> %d Hz: up=%d down=%d taps/phase=%d delay=%d output samples",
            self.orig_rate,
            self.target_rate,
            self.up,
            self.down,
            self._taps,
            self._delay,
        )

    @property
    def delay_samples(self) -> int:
        """Constant delay of the stream output, in output (target-rate) samples."""
        return self._delay

    @property
    def taps_per_phase(self) -> int:
        """FIR taps applied per output sample (input samples per dot product)."""
        return self._taps

    def reset(self) -> None:
        """Forget history and phase, as if freshly constructed."""
        self._history = None
        self._next_pos = 0

    def _compute(self, buffer: npt.NDArray[np.float64], out: npt.NDArray[np.float32]) -> None:
        """Fill `out` [n_out, channels] from `buffer` (history + block), from `_next_pos`."""
        n_out = out.shape[0]
        # Outputs m, m + up, m + 2 up, ... share a phase and their newest inputs are `down`
        # apart, so each phase is one strided view of the sliding windows times one tap vector:
        # no gathered copy, and the same arithmetic for every output whatever the block split.
        windows = np.lib.stride_tricks.sliding_window_view(buffer, self._taps, axis=0)
        for first in range(min(self.up, n_out)):
            pos = self._next_pos + first * self.down
            oldest = pos // self.up  # buffer index of x[j0 - taps + 1]
            count = (n_out - first + self.up - 1) // self.up
            rows = windows[oldest : oldest + (count - 1) * self.down + 1 : self.down]
            out[first :: self.up] = rows @ self._reversed[pos % self.up]

    def process(self, block: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Resample the next block; returns the outputs that this input completes."""
        x = np.asarray(block)
        if x.ndim not in (1, 2):
            raise ValueError(
                f"resampler input must be [frames] or [frames, channels], got {x.shape}"
            )
        squeeze = x.ndim == 1
        x2 = x.reshape(-1, 1) if squeeze else x
        if self._passthrough:
            out = x2.astype(np.float32, copy=True)
            return out[:, 0] if squeeze else out
        channels = x2.shape[1]
        if self._history is None:
            self._history = np.zeros((self._taps - 1, channels), dtype=np.float64)
        elif self._history.shape[1] != channels:
            raise ValueError(
                f"resampler got {channels} channels after {self._history.shape[1]}; "
                "create a new StreamResampler for a different layout"
            )
        n_in = x2.shape[0]
        buffer = np.concatenate([self._history, x2.astype(np.float64, copy=False)], axis=0)
        last_pos = n_in * self.up - 1  # outputs at positions <= this have all their inputs
        n_out = 0 if self._next_pos > last_pos else (last_pos - self._next_pos) // self.down + 1
        out = np.empty((n_out, channels), dtype=np.float32)
        if n_out:
            self._compute(buffer, out)
        self._next_pos += n_out * self.down - n_in * self.up
        keep = self._taps - 1
        self._history = buffer[buffer.shape[0] - keep :].copy() if keep else buffer[:0].copy()
        return out[:, 0] if squeeze else out


def resample(x: npt.ArrayLike, orig_rate: int, target_rate: int) -> npt.NDArray[np.float32]:
    """Resample a whole signal ([frames] or [frames, channels]), delay removed.

    Output length is ceil(frames * target / orig); output sample m is aligned with input time
    m / target_rate seconds. Same filter and samples as `StreamResampler`, shifted by its delay.
    """
    data = np.asarray(x)
    stream = StreamResampler(orig_rate, target_rate)
    if stream.up == stream.down:
        return data.astype(np.float32, copy=True)
    n_in = data.shape[0]
    n_out = ceil(n_in * stream.up / stream.down)
    total_out = stream.delay_samples + n_out
    # Input frames needed for the last wanted output to be complete; the tail is zeros.
    needed_in = ((total_out - 1) * stream.down) // stream.up + 1 if total_out else 0
    pad = max(0, needed_in - n_in)
    pieces = []
    for start in range(0, n_in, WHOLE_SIGNAL_CHUNK_FRAMES):
        pieces.append(stream.process(data[start : start + WHOLE_SIGNAL_CHUNK_FRAMES]))
    if pad:
        pieces.append(stream.process(np.zeros((pad, *data.shape[1:]), dtype=np.float64)))
    if not pieces:
        return np.zeros((0, *data.shape[1:]), dtype=np.float32)
    full = np.concatenate(pieces, axis=0)
    return np.ascontiguousarray(full[stream.delay_samples : total_out])
