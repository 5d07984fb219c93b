"""Cheap numpy views of a window: what the learned embedding misses (issue 8).

Each view turns framed windows [B, S] (16 kHz float32) into a small feature vector per window:

- ``bands``: log band energies over short frames, their mean and spread (spectral shape);
- ``tonal``: how far the strongest bin of each band stands above the local spectral floor of the
  window's average spectrum (whines, tones under broadband noise);
- ``modulation``: the spectrum of the window's level envelope, broadband and high-passed
  (bearing defect rates, imbalance, periodic rub);
- ``transient``: short-frame statistics: the loudest frames over the median frame, kurtosis,
  crest factor (impacts, bursts, valve clicks);
- ``subframes``: band energies of each quarter second inside the window, relative to the window
  and sorted (time structure at 0.25 s, independent of where the window starts).

All views share one short-time Fourier transform (`_Spectra`) and the raw samples; everything
is vectorised over the batch. A view that cannot be computed for the framing (a window shorter
than its time scale) raises `ViewUnavailableError` and calibration skips it with a warning.

Features are raw here; `fusion.FeatureScaler` standardises them with the calibration's
statistics before they meet a memory bank.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.vocabulary import FEATURE_VIEWS

FRAME_SAMPLES: Final = 512
"""STFT frame (32 ms at 16 kHz): 31 Hz bins, fine enough to separate a tone from its floor."""
FRAME_HOP_SAMPLES: Final = 512
"""Frames do not overlap: half the FFTs of a 50 % overlap, for the 1 ms budget; the transient
view has its own finer framing, so what falls between two tapered frames is not lost."""
BAND_EDGES_HZ: Final = (100.0, 8_000.0)
"""Range of the log-spaced bands; below 100 Hz a 512-sample frame has too few bins."""
N_BANDS: Final = 16
N_TONAL_BANDS: Final = 12
TONAL_EDGES_HZ: Final = (200.0, 8_000.0)
"""Tonal bands start higher so that every band holds several bins to stand out from."""
TONAL_FLOOR_BINS: Final = 9
"""Width (bins, ~280 Hz) of the running median that is a bin's local spectral floor."""
ENVELOPE_BLOCK_SAMPLES: Final = 16
"""The level envelope is the RMS of 16-sample blocks: a 1 kHz envelope, up to 500 Hz modulation
(CWRU bearing defect rates are 100-160 Hz)."""
N_MODULATION_BANDS: Final = 12
MODULATION_EDGES_HZ: Final = (2.0, 500.0)
MODULATION_MIN_SECONDS: Final = 1.0 / MODULATION_EDGES_HZ[0]
"""The slowest modulation band needs a window at least one of its periods long."""
TRANSIENT_FRAME_SAMPLES: Final = 128
"""8 ms frames: a click and its 20-40 ms bounce land in different frames."""
TRANSIENT_TOP_FRAMES: Final = 8
TRANSIENT_DIFF_TOP_FRAMES: Final = 4
TRANSIENT_LOUD_DB: Final = 6.0
"""A frame this far over the median frame counts as loud (share of loud frames)."""
SUBFRAME_SECONDS: Final = 0.25
N_SUBFRAME_BANDS: Final = 8
"""Subframes use pairs of the 16 bands: 4 x 8 values, not 4 x 16."""
MIN_SUBFRAMES: Final = 2
POWER_FLOOR: Final = 1e-12
"""Power (full scale = 1) under which a value is treated as silence before taking logs."""
DB_PER_LOG10: Final = 10.0


class ViewUnavailableError(ValueError):
    """A view cannot be computed for this framing (the message says why)."""


def _band_index(freqs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Band of each frequency bin (-1 outside all bands); a band left without a bin (narrower
    than a bin at the low end) gets the bin nearest its centre."""
    n_bands = edges.size - 1
    index = np.searchsorted(edges, freqs, side="right") - 1
    index[(freqs < edges[0]) | (freqs >= edges[-1])] = -1
    for band in range(n_bands):
        if not np.any(index == band):
            centre = np.sqrt(edges[band] * edges[band + 1])
            index[int(np.argmin(np.abs(freqs - centre)))] = band
    return index


def _band_matrix(freqs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """float32 [bins, bands] that sums a power spectrum into bands."""
    index = _band_index(freqs, edges)
    matrix = np.zeros((freqs.size, edges.size - 1), dtype=np.float32)
    inside = index >= 0
    matrix[np.flatnonzero(inside), index[inside]] = 1.0
    return matrix


_FREQS: Final = np.fft.rfftfreq(FRAME_SAMPLES, 1.0 / SAMPLE_RATE_HZ)
_BANDS: Final = _band_matrix(_FREQS, np.geomspace(*BAND_EDGES_HZ, N_BANDS + 1))
_TONAL_BAND: Final = _band_index(_FREQS, np.geomspace(*TONAL_EDGES_HZ, N_TONAL_BANDS + 1))
_HANN: Final = np.hanning(FRAME_SAMPLES).astype(np.float32)


def _db(power: np.ndarray) -> np.ndarray:
    return DB_PER_LOG10 * np.log10(np.maximum(power, POWER_FLOOR))


@dataclass
class _Spectra:
    """What several views share, computed once per batch (lazily)."""

    windows: np.ndarray
    """float32 [B, S]."""
    _power: np.ndarray | None = None
    _band_power: np.ndarray | None = None
    _diff: np.ndarray | None = None

    @property
    def power(self) -> np.ndarray:
        """float32 [B, frames, bins] power spectra of the STFT frames."""
        if self._power is None:
            x = self.windows
            n_frames = 1 + (x.shape[1] - FRAME_SAMPLES) // FRAME_HOP_SAMPLES
            frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_SAMPLES, axis=1)
            frames = frames[:, : n_frames * FRAME_HOP_SAMPLES : FRAME_HOP_SAMPLES] * _HANN
            spectrum = np.fft.rfft(frames, axis=-1)
            self._power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        return self._power

    @property
    def diff(self) -> np.ndarray:
        """float32 [B, S - 1] first difference: a cheap high-pass (bearing impacts and clicks
        excite high resonances)."""
        if self._diff is None:
            self._diff = np.diff(self.windows, axis=1)
        return self._diff

    @property
    def band_power(self) -> np.ndarray:
        """float32 [B, frames, N_BANDS] band energies."""
        if self._band_power is None:
            self._band_power = self.power @ _BANDS
        return self._band_power

    @property
    def band_db(self) -> np.ndarray:
        """float32 [B, frames, N_BANDS] log band energies (dB)."""
        return _db(self.band_power)


def _bands(s: _Spectra) -> np.ndarray:
    db = s.band_db
    return np.concatenate([db.mean(axis=1), db.std(axis=1)], axis=1)


def _tonal(s: _Spectra) -> np.ndarray:
    mean_db = _db(s.power.mean(axis=1))  # [B, bins]
    half = TONAL_FLOOR_BINS // 2
    padded = np.pad(mean_db, ((0, 0), (half, half)), mode="edge")
    # The middle of a partition is the median (odd width), at a fraction of np.median's cost.
    floor = np.partition(
        np.lib.stride_tricks.sliding_window_view(padded, TONAL_FLOOR_BINS, axis=1), half, axis=-1
    )[..., half]
    excess = mean_db - floor
    out = np.empty((mean_db.shape[0], N_TONAL_BANDS), dtype=np.float32)
    for band in range(N_TONAL_BANDS):
        out[:, band] = excess[:, band == _TONAL_BAND].max(axis=1)
    return out


@functools.lru_cache(maxsize=8)
def _modulation_setup(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(taper [n], band matrix [bins, bands]) for envelopes of n blocks; cached per length."""
    rate = SAMPLE_RATE_HZ / ENVELOPE_BLOCK_SAMPLES
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    matrix = _band_matrix(freqs, np.geomspace(*MODULATION_EDGES_HZ, N_MODULATION_BANDS + 1))
    return np.hanning(n).astype(np.float32), matrix


def _envelope_bands(envelope: np.ndarray) -> np.ndarray:
    """log10 power of the normalised envelope in the modulation bands, [B, N_MODULATION_BANDS]."""
    taper, matrix = _modulation_setup(envelope.shape[1])
    mean = envelope.mean(axis=1, keepdims=True)
    depth = (envelope - mean) / np.maximum(mean, np.sqrt(POWER_FLOOR))
    spectrum = np.fft.rfft(depth * taper, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return np.log10(np.maximum(power @ matrix, POWER_FLOOR))


def _block_power(x: np.ndarray, block: int) -> np.ndarray:
    """[B, n] mean square of consecutive `block`-sample blocks."""
    n = x.shape[1] // block
    blocks = x[:, : n * block].reshape(x.shape[0], n, block)
    return np.einsum("bnk,bnk->bn", blocks, blocks) / block


def _modulation(s: _Spectra) -> np.ndarray:
    x = s.windows
    if x.shape[1] < MODULATION_MIN_SECONDS * SAMPLE_RATE_HZ:
        raise ViewUnavailableError(
            f"modulation needs windows of at least {MODULATION_MIN_SECONDS:g} s "
            f"(its slowest band is {MODULATION_EDGES_HZ[0]:g} Hz), got "
            f"{x.shape[1] / SAMPLE_RATE_HZ:g} s"
        )
    broadband = np.sqrt(_block_power(x, ENVELOPE_BLOCK_SAMPLES))
    high = np.sqrt(_block_power(s.diff, ENVELOPE_BLOCK_SAMPLES))
    return np.concatenate([_envelope_bands(broadband), _envelope_bands(high)], axis=1)


def _top_frames(frame_db: np.ndarray, n: int) -> np.ndarray:
    """The n loudest frames (dB), loudest first, over the median frame."""
    median = np.median(frame_db, axis=1, keepdims=True)
    top = -np.sort(-frame_db, axis=1)[:, :n]
    return top - median


def _kurtosis_crest(x: np.ndarray) -> np.ndarray:
    """[B, 2]: log10 kurtosis and crest factor (dB) of each row."""
    centred = x - x.mean(axis=1, keepdims=True)
    squared = centred * centred  # products, not **4: a float32 power is ten times slower
    m2 = squared.mean(axis=1)
    m4 = np.einsum("bs,bs->b", squared, squared) / x.shape[1]
    kurtosis = m4 / np.maximum(m2 * m2, POWER_FLOOR**2)
    crest = np.max(np.abs(centred), axis=1) ** 2 / np.maximum(m2, POWER_FLOOR)
    return np.stack([np.log10(np.maximum(kurtosis, POWER_FLOOR)), _db(crest)], axis=1)


def _transient(s: _Spectra) -> np.ndarray:
    x, diff = s.windows, s.diff
    frame_db = _db(_block_power(x, TRANSIENT_FRAME_SAMPLES))
    diff_db = _db(_block_power(diff, TRANSIENT_FRAME_SAMPLES))
    median = np.median(frame_db, axis=1, keepdims=True)
    loud = np.mean(frame_db > median + TRANSIENT_LOUD_DB, axis=1, keepdims=True)
    return np.concatenate(
        [
            _top_frames(frame_db, TRANSIENT_TOP_FRAMES),
            _top_frames(diff_db, TRANSIENT_DIFF_TOP_FRAMES),
            frame_db.std(axis=1, keepdims=True),
            loud,
            _kurtosis_crest(x),
            _kurtosis_crest(diff),
        ],
        axis=1,
    )


def _subframes(s: _Spectra) -> np.ndarray:
    x = s.windows
    n_sub = round(x.shape[1] / (SUBFRAME_SECONDS * SAMPLE_RATE_HZ))
    if n_sub < MIN_SUBFRAMES or s.power.shape[1] < n_sub:
        raise ViewUnavailableError(
            f"subframes needs windows of at least {MIN_SUBFRAMES * SUBFRAME_SECONDS:g} s "
            f"({MIN_SUBFRAMES} subframes of {SUBFRAME_SECONDS:g} s), got "
            f"{x.shape[1] / SAMPLE_RATE_HZ:g} s"
        )
    power = s.band_power
    b, n_frames, _ = power.shape
    coarse = power.reshape(b, n_frames, N_SUBFRAME_BANDS, -1).sum(axis=3)
    which = (np.arange(n_frames) * n_sub) // n_frames
    sums = np.stack([coarse[:, which == i].mean(axis=1) for i in range(n_sub)], axis=1)
    sub_db = _db(sums)  # [B, n_sub, bands]
    relative = np.sort(sub_db - sub_db.mean(axis=1, keepdims=True), axis=1)
    total = _db(sums.sum(axis=2))
    total = np.sort(total - total.mean(axis=1, keepdims=True), axis=1)
    return np.concatenate([relative.reshape(b, -1), total], axis=1)


_EXTRACTORS: Final[dict[str, Callable[[_Spectra], np.ndarray]]] = {
    "bands": _bands,
    "tonal": _tonal,
    "modulation": _modulation,
    "transient": _transient,
    "subframes": _subframes,
}
assert tuple(_EXTRACTORS) == FEATURE_VIEWS, "vocabulary.FEATURE_VIEWS and the extractors differ"


VIEW_BANDS_HZ: Final[dict[str, tuple[float, float]]] = {
    "bands": BAND_EDGES_HZ,
    "tonal": TONAL_EDGES_HZ,
    "subframes": BAND_EDGES_HZ,
}
"""The frequency range a view's bands cover; the views not listed use the whole signal."""
CONTENT_DYNAMIC_RANGE: Final = 1e-8
"""Audio 'has content' up to the highest frequency whose average power is within 80 dB of the
strongest: above, a resampled low-rate recording holds only the resampler's residue."""
CONTENT_MAX_FRAMES: Final = 2_000
"""Frames (about a minute) the content check averages at most: it only needs the spectrum."""


def content_hz(signals: Sequence[np.ndarray]) -> float:
    """The highest frequency (Hz) with content in `signals` (CONTENT_DYNAMIC_RANGE)."""
    frames = []
    budget = CONTENT_MAX_FRAMES
    for x in signals:
        n = min(budget, x.size // FRAME_SAMPLES)
        if n > 0:
            frames.append(np.asarray(x[: n * FRAME_SAMPLES]).reshape(n, FRAME_SAMPLES))
            budget -= n
        if budget <= 0:
            break
    if not frames:
        return 0.0
    spectrum = np.fft.rfft(np.concatenate(frames) * _HANN, axis=1)
    power = np.mean(spectrum.real**2 + spectrum.imag**2, axis=0)
    peak = float(power.max())
    if peak <= 0.0:
        return 0.0
    return float(_FREQS[np.flatnonzero(power >= CONTENT_DYNAMIC_RANGE * peak)[-1]])


def content_reason(name: str, top_hz: float) -> str | None:
    """Why view `name` cannot be computed on audio with content up to `top_hz`, or None: most of
    its (log-spaced) bands would be empty when the content stops below their geometric middle."""
    if name not in VIEW_BANDS_HZ:
        return None
    low, high = VIEW_BANDS_HZ[name]
    middle = float(np.sqrt(low * high))
    if top_hz >= middle:
        return None
    return (
        f"its bands span {low:g}-{high:g} Hz but the audio has no content above {top_hz:.0f} Hz "
        f"(recorded at a sample rate of about {2 * top_hz:.0f} Hz?): most of its bands are empty"
    )


def check_windows(windows: np.ndarray) -> np.ndarray:
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"windows must be [B, samples], got shape {x.shape}")
    if x.shape[1] < FRAME_SAMPLES:
        raise ViewUnavailableError(
            f"views need windows of at least {FRAME_SAMPLES} samples, got {x.shape[1]}"
        )
    return x


def compute_views(windows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """float32 [B, D_view] features of framed windows [B, S] for each feature view in `names`
    (one shared STFT). ViewUnavailableError when one of them cannot be computed."""
    spectra = _Spectra(check_windows(windows))
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name not in _EXTRACTORS:
            raise ValueError(f"unknown view {name!r}; expected one of {FEATURE_VIEWS}")
        out[name] = np.ascontiguousarray(_EXTRACTORS[name](spectra), dtype=np.float32)
    return out


def available_views(window_samples: int, names: Sequence[str]) -> dict[str, str | None]:
    """For each feature view, None if it can be computed on windows of `window_samples`, else
    why not (tried on a silent window: the checks depend on the framing only)."""
    probe = np.zeros((1, max(1, window_samples)), dtype=np.float32)
    reasons: dict[str, str | None] = {}
    for name in names:
        try:
            compute_views(probe, [name])
            reasons[name] = None
        except ViewUnavailableError as exc:
            reasons[name] = str(exc)
    return reasons


def concat_features(
    parts: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Batches of `compute_views` output joined along the windows."""
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in names}
