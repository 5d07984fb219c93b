"""Why an event fired, in words a person on shift can act on.

The encoder's score says *that* a machine sounds wrong, not *how*. This module compares the
event's audio with a reference profile of the normal machine in 1/3-octave bands and says which
band changed, by how much, when, and whether the change is steady, intermittent or a train of
impulses (and at what rate):

    "+9 dB at 2.8-3.6 kHz, steady"
    "impulses at 12 per s in 3.5-4.5 kHz, +11 dB"

The reference (`BandProfile`) is measured from normal audio: at calibration, or, for bundles
calibrated before profiles existed, from the clip's pre-roll. It is a handful of plain float
arrays, so a bundle can store it next to its bank.

numpy only, on purpose: the daemon must not import scipy (start-up time and memory on a
gateway), and this runs on the inference thread at the end of an event, so its cost is bounded
by `MAX_EXPLAIN_SECONDS` of audio (a few tens of milliseconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from edge_asd.constants import SAMPLE_RATE_HZ

FloatArray = npt.NDArray[np.float64]

FRAME_SAMPLES: Final = 1024
"""64 ms at 16 kHz: 15.6 Hz bins, enough to give every 1/3-octave band from 100 Hz two bins."""
HOP_SAMPLES: Final = 256
"""16 ms: band levels are tracked at 62.5 frames per second."""
BAND_MIN_HZ: Final = 100.0
"""The lowest band is the one around 100 Hz (88-111 Hz). Below it a 64 ms frame cannot tell
bands apart, and factory rooms are full of structure-borne rumble that says little about one
machine."""
BANDS_PER_OCTAVE: Final = 3
REFERENCE_HZ: Final = 1000.0
"""1/3-octave centres are 1 kHz * 2^(n/3) (IEC 61260 base-2 series)."""

ENVELOPE_SAMPLES: Final = 16
"""1 ms frames for the impulse envelope: a bearing impact rings for about a millisecond."""
MIN_RATE_HZ: Final = 0.5
MAX_IMPULSE_RATE_HZ: Final = 300.0
"""Impulse rates searched in the 1 ms envelope's autocorrelation (bearing defects: tens to a
few hundred per second)."""
MAX_BURST_RATE_HZ: Final = 10.0
"""Burst rates searched in the band level's autocorrelation (62.5 frames per second): faster
level changes are the machine's own modulation, not bursts."""
PERIODIC_MIN_CORRELATION: Final = 0.3
"""Normalised autocorrelation a repetition peak must reach to count as a rate."""
PEAK_SHARE_OF_BEST: Final = 0.7
"""The shortest lag whose peak reaches this share of the best one is the period (the best one
may be a multiple of it)."""

IMPULSIVE_KURTOSIS: Final = 6.0
"""Kurtosis of the band signal above which it is called impulsive (Gaussian noise: 3, a tone:
1.5, a train of short impacts: tens)."""
MIN_EXCESS_DB: Final = 3.0
"""A band change smaller than this is not worth naming."""
SPREAD_SHARE: Final = 0.25
"""Neighbouring bands that changed by at least this share of the strongest band's added (or
removed) power join its frequency range."""
ACTIVE_MIN_SIGMAS: Final = 2.0
"""A frame is 'active' when its level in the band exceeds normal by this many of the band's
frame-to-frame standard deviations (and at least MIN_EXCESS_DB)."""
SPAN_TAIL: Final = 0.02
"""Share of the changed energy left out at each end of the region's time span."""
STEADY_FRACTION: Final = 0.8
"""Active in at least this share of the frames: steady; fewer: intermittent."""
MIN_STD_DB: Final = 1.0
"""Floor of a band's standard deviation, so a perfectly stationary reference does not turn
tiny differences into many sigmas."""
MAX_EXPLAIN_SECONDS: Final = 10.0
"""Only the first 10 s of a long event are analysed: the cost (and the daemon's peak memory,
which has a 100 MB target: 10 s cost about 2 MB of numpy temporaries) stays bounded, and a
persistent fault shows its character by then (five periods of the slowest rate searched,
`MIN_RATE_HZ`)."""
FRAMES_PER_CHUNK: Final = 128
"""Frames whose power spectra are handed on at once (0.26 MB of float32). `band_power` sums
bands over a chunk with one matrix product, and BLAS rounds a product's rows differently for
another row count, so this stays 128 to keep band levels (and calibrated profiles) as they were."""
FRAMES_PER_FFT: Final = 16
"""Frames transformed at once within a chunk. numpy's `rfft` of float32 frames (default norm)
runs its float64 loop and casts around it, so a transform holds about five times its output in
temporaries: 128 frames at once were 3.2 MB, the daemon's whole step in peak memory at an
event's end (it has a 100 MB target); 16 frames are 0.4 MB, for the same spectra."""
_EPS: Final = 1e-20


def _power_chunks(
    samples: npt.ArrayLike, frame: int, hop: int
) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """(first frame, power spectra [<= FRAMES_PER_CHUNK, frame // 2 + 1]) of Hann-windowed
    frames, chunk by chunk, scaled so that a full-scale sine reads about 0.5 (its mean square)
    summed over its bins. A signal shorter than one frame is zero-padded to one frame."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {x.shape}")
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    window = np.hanning(frame).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    # Parseval with a window: sum over bins of 2|X|^2 / (N * sum w^2) is the frame's mean square.
    scale = np.float32(2.0 / (frame * float(np.sum(window**2))))
    # In chunks: the overlapping frames' windowed copy and spectrum of a whole event at once
    # would be tens of MB in the daemon.
    for start in range(0, frames.shape[0], FRAMES_PER_CHUNK):
        chunk = frames[start : start + FRAMES_PER_CHUNK]
        power = np.empty((chunk.shape[0], frame // 2 + 1), dtype=np.float32)
        for first in range(0, chunk.shape[0], FRAMES_PER_FFT):
            part = power[first : first + FRAMES_PER_FFT]
            spectrum = np.fft.rfft(chunk[first : first + FRAMES_PER_FFT] * window, axis=1)
            np.square(np.abs(spectrum), out=part)
            part *= scale
        yield start, power


def _frame_count(n_samples: int, frame: int, hop: int) -> int:
    return (max(n_samples, frame) - frame) // hop + 1


def frame_power(samples: npt.ArrayLike, frame: int, hop: int) -> npt.NDArray[np.float32]:
    """Power spectra [T, frame // 2 + 1] of Hann-windowed frames (`_power_chunks`)."""
    n = int(np.asarray(samples).shape[-1]) if np.ndim(samples) == 1 else 0
    power = np.empty((_frame_count(n, frame, hop), frame // 2 + 1), dtype=np.float32)
    for start, chunk in _power_chunks(samples, frame, hop):
        power[start : start + chunk.shape[0]] = chunk
    return power


def band_edges(sample_rate: int = SAMPLE_RATE_HZ) -> FloatArray:
    """[B, 2] lower and upper edges (Hz) of the 1/3-octave bands from `BAND_MIN_HZ` up to
    Nyquist (the top band is cut at Nyquist)."""
    nyquist = sample_rate / 2.0
    half = 2.0 ** (1.0 / (2 * BANDS_PER_OCTAVE))
    first = round(BANDS_PER_OCTAVE * math.log2(BAND_MIN_HZ / REFERENCE_HZ))
    edges = []
    n = first
    while True:
        centre = REFERENCE_HZ * 2.0 ** (n / BANDS_PER_OCTAVE)
        lower = centre / half
        if lower >= nyquist:
            break
        edges.append((lower, min(centre * half, nyquist)))
        n += 1
    return np.asarray(edges, dtype=np.float64)


def band_matrix(edges: FloatArray, frame: int, sample_rate: int) -> FloatArray:
    """[B, bins] 0/1 weights summing each band's bins; a band narrower than a bin takes the bin
    nearest its centre, so no band is ever empty."""
    freqs = np.fft.rfftfreq(frame, 1.0 / sample_rate)
    matrix = np.zeros((edges.shape[0], freqs.size))
    for b, (lower, upper) in enumerate(edges):
        inside = (freqs >= lower) & (freqs < upper)
        if not np.any(inside):
            inside[int(np.argmin(np.abs(freqs - math.sqrt(lower * upper))))] = True
        matrix[b, inside] = 1.0
    return matrix


def band_power(
    samples: npt.ArrayLike, sample_rate: int = SAMPLE_RATE_HZ, hop: int = HOP_SAMPLES
) -> tuple[FloatArray, FloatArray]:
    """(band edges [B, 2], per-frame band power [T, B]) of `FRAME_SAMPLES` frames every `hop`
    samples."""
    edges = band_edges(sample_rate)
    # Chunk by chunk into bands: the [T, bins] spectrum of an event is never held whole
    # (the daemon explains on its inference thread, under a 100 MB memory target).
    weights = band_matrix(edges, FRAME_SAMPLES, sample_rate).T.astype(np.float32)
    x = np.asarray(samples)
    bands = np.empty((_frame_count(x.size, FRAME_SAMPLES, hop), edges.shape[0]))
    for start, chunk in _power_chunks(x, FRAME_SAMPLES, hop):
        bands[start : start + chunk.shape[0]] = chunk @ weights
    return edges, bands


def _db(power: npt.ArrayLike) -> FloatArray:
    return np.asarray(10.0 * np.log10(np.asarray(power, dtype=np.float64) + _EPS))


@dataclass(frozen=True)
class BandProfile:
    """The normal machine's level in each 1/3-octave band.

    `level_db` is the energy-average level (dB re full-scale mean square) and `std_db` the
    frame-to-frame standard deviation of the band's level in dB, over 64 ms frames.
    """

    edges_hz: FloatArray
    """[B, 2] band edges."""
    level_db: FloatArray
    """[B]"""
    std_db: FloatArray
    """[B]"""
    sample_rate: int = SAMPLE_RATE_HZ
    frames: int = 0
    """How many frames the profile was measured over (its reliability)."""

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges_hz, dtype=np.float64)
        level = np.asarray(self.level_db, dtype=np.float64)
        std = np.asarray(self.std_db, dtype=np.float64)
        if edges.ndim != 2 or edges.shape[1] != 2 or level.shape != (edges.shape[0],):
            raise ValueError(
                f"band profile: edges {edges.shape} and levels {level.shape} do not match"
            )
        if std.shape != level.shape:
            raise ValueError(f"band profile: std {std.shape} and levels {level.shape} differ")
        if not (np.all(np.isfinite(level)) and np.all(np.isfinite(std))):
            raise ValueError("band profile: levels must be finite")
        object.__setattr__(self, "edges_hz", edges)
        object.__setattr__(self, "level_db", level)
        object.__setattr__(self, "std_db", std)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (bundle.json)."""
        return {
            "edges_hz": self.edges_hz.round(3).tolist(),
            "level_db": self.level_db.round(3).tolist(),
            "std_db": self.std_db.round(3).tolist(),
            "sample_rate": int(self.sample_rate),
            "frames": int(self.frames),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BandProfile:
        return cls(
            edges_hz=np.asarray(data["edges_hz"], dtype=np.float64).reshape(-1, 2),
            level_db=np.asarray(data["level_db"], dtype=np.float64),
            std_db=np.asarray(data["std_db"], dtype=np.float64),
            sample_rate=int(data.get("sample_rate", SAMPLE_RATE_HZ)),
            frames=int(data.get("frames", 0)),
        )


def band_profile(samples: npt.ArrayLike, *, sample_rate: int = SAMPLE_RATE_HZ) -> BandProfile:
    """The reference profile of normal audio (calibration, or a clip's pre-roll)."""
    x = _check_samples(samples, "band_profile")
    edges, power = band_power(x, sample_rate)
    levels = _db(power)
    return BandProfile(
        edges_hz=edges,
        level_db=_db(np.mean(power, axis=0)),
        std_db=np.maximum(np.std(levels, axis=0), MIN_STD_DB),
        sample_rate=sample_rate,
        frames=int(power.shape[0]),
    )


@dataclass(frozen=True)
class Explanation:
    """What differs most between the event and normal, and where in time and frequency.

    Times are seconds from the start of the samples given to `explain` (the event's start).
    """

    summary: str
    band_hz: tuple[float, float]
    start_s: float
    end_s: float
    excess_db: float
    """Level change of the band against normal (negative: quieter than normal)."""
    impulsive: bool
    rate_hz: float | None
    """Repetition rate of the impulses or bursts; None when not periodic or not impulsive."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "band_hz": [round(self.band_hz[0], 1), round(self.band_hz[1], 1)],
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "excess_db": round(self.excess_db, 1),
            "impulsive": self.impulsive,
            "rate_hz": None if self.rate_hz is None else round(self.rate_hz, 2),
        }


def _check_samples(samples: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
    # float32: the daemon explains events on its inference thread, and its peak memory has a
    # 100 MB target; a level in dB needs nowhere near float64's precision.
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what}: expected non-empty 1-D samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: samples contain NaN or inf")
    return x


def _format_hz(hz: float) -> str:
    """Two significant digits: 280 Hz, 2.8 kHz, 12 kHz."""
    if hz < 1000.0:
        return f"{float(f'{hz:.2g}'):.0f}"
    khz = float(f"{hz / 1000.0:.2g}")
    return f"{khz:g}"


def format_band(lower_hz: float, upper_hz: float) -> str:
    """'2.8-3.6 kHz', '180-220 Hz', '890 Hz-1.1 kHz'."""
    lo, hi = _format_hz(lower_hz), _format_hz(upper_hz)
    if lower_hz >= 1000.0:
        return f"{lo}-{hi} kHz"
    if upper_hz < 1000.0:
        return f"{lo}-{hi} Hz"
    return f"{lo} Hz-{hi} kHz"


def _choose_bands(event_power: FloatArray, profile: BandProfile) -> tuple[int, int]:
    """[first, last] band indices of the contiguous range around the strongest change.

    Bands are ranked by the power the event added (or removed), not by their change in dB: the
    quiet top bands of a machine jump by 20 dB at any click, while the fault's energy, the part
    a person can hear and look for, sits where the added power is. A change within a band's
    own fluctuation does not count.
    """
    normal_power = 10.0 ** (profile.level_db / 10.0)
    excess = _db(event_power) - profile.level_db
    significant = np.abs(excess) >= np.maximum(MIN_EXCESS_DB, ACTIVE_MIN_SIGMAS * profile.std_db)
    delta = np.where(significant, event_power - normal_power, 0.0)
    if not np.any(significant):
        # Nothing stands out: name the band that changed most in dB, marked as insignificant.
        peak = int(np.argmax(np.abs(excess)))
        return peak, peak
    sign = 1.0 if np.max(delta) >= -np.min(delta) else -1.0
    signed = sign * delta
    peak = int(np.argmax(signed))
    floor = SPREAD_SHARE * float(signed[peak])
    first = last = peak
    while first > 0 and signed[first - 1] >= floor:
        first -= 1
    while last < signed.size - 1 and signed[last + 1] >= floor:
        last += 1
    return first, last


def fft_size(n: int) -> int:
    """The smallest 5-smooth length (2^a 3^b 5^c) >= n.

    An event's length is arbitrary; for a length with a large prime factor pocketfft falls back
    to Bluestein's algorithm, whose scratch buffers and cached plan cost the daemon 20-25 MB of
    peak memory on a 10 s event (measured: VmHWM +27 MB for 176 123 samples, +2 MB padded). A
    5-smooth length is at most a few percent longer and never needs it."""
    if n < 1:
        raise ValueError(f"fft_size: n must be >= 1, got {n}")
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def _bandpass(
    x: npt.NDArray[np.floating[Any]], band_hz: tuple[float, float], sample_rate: int
) -> npt.NDArray[np.floating[Any]]:
    """Brick-wall band-pass in the frequency domain: exact enough for an envelope. Zero-padded
    to a 5-smooth length (`fft_size`), which also keeps the filter from wrapping around.
    float32 in, float32 out (float64 in, float64 out)."""
    size = fft_size(x.size)
    # "ortho" both ways (together the default's 1/size): its scale factor has the input's
    # dtype, so numpy runs the float32 transform itself. With the default norm the forward
    # transform of float32 goes through float64 copies of the input and the spectrum, twice
    # the peak memory at an event's end (the daemon's 100 MB target).
    spectrum = np.fft.rfft(x, size, norm="ortho")
    # Bin k is at k * sample_rate / size Hz: keep lower <= f < upper (no frequency array).
    lower, upper = (math.ceil(f * size / sample_rate) for f in band_hz)
    spectrum[:lower] = 0.0
    spectrum[upper:] = 0.0
    return np.asarray(np.fft.irfft(spectrum, size, norm="ortho")[: x.size])


def _kurtosis(x: npt.NDArray[np.floating[Any]]) -> float:
    centred = x - np.mean(x)
    var = float(np.mean(centred**2))
    if var <= _EPS:
        return 0.0
    return float(np.mean(centred**4)) / var**2


def repetition_rate(
    envelope: npt.ArrayLike, envelope_rate_hz: float, max_rate_hz: float
) -> float | None:
    """Repetition rate (Hz) of an envelope from its autocorrelation: the shortest lag whose
    peak is both clearly periodic and nearly as strong as the best peak (the best one may be
    two or three periods). None when nothing repeats."""
    env = np.asarray(envelope, dtype=np.float64)
    env = env - np.mean(env)
    if env.size < 4 or float(np.dot(env, env)) <= _EPS:
        return None
    size = 1 << math.ceil(math.log2(2 * env.size))
    spectrum = np.fft.rfft(env, size)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, size)[: env.size]
    acf = acf / acf[0]
    min_lag = max(2, math.floor(envelope_rate_hz / max_rate_hz))
    # At least two periods must fit in the envelope for a lag to be trusted.
    max_lag = min(math.ceil(envelope_rate_hz / MIN_RATE_HZ), env.size // 2)
    if max_lag <= min_lag + 1:
        return None
    inner = acf[min_lag:max_lag]
    is_peak = (inner[1:-1] > inner[:-2]) & (inner[1:-1] >= inner[2:])
    lags = np.flatnonzero(is_peak) + min_lag + 1
    lags = lags[acf[lags] >= PERIODIC_MIN_CORRELATION]
    if lags.size == 0:
        return None
    best = float(np.max(acf[lags]))
    lag = int(lags[np.flatnonzero(acf[lags] >= PEAK_SHARE_OF_BEST * best)[0]])
    # Parabolic interpolation of the peak: a lag of 83 envelope frames should not read as 12.05
    # when it is 83.3.
    left, centre, right = acf[lag - 1], acf[lag], acf[lag + 1]
    denom = left - 2 * centre + right
    shift = 0.5 * (left - right) / denom if denom < 0 else 0.0
    return float(envelope_rate_hz / (lag + shift))


def _active_span(weights: FloatArray) -> tuple[int, int]:
    """First and last frame of the central `1 - 2 * SPAN_TAIL` of the changed energy; the
    whole range when nothing changed.

    Quantiles of the energy, not the first and last active frame: a band's level crosses any
    threshold by chance now and then, and one such frame must not stretch the region over the
    whole event, while the fault's frames carry far more energy than the chance ones.
    """
    total = float(np.sum(weights))
    if total <= 0.0:
        return 0, weights.size - 1
    cumulative = np.cumsum(weights) / total
    first = int(np.searchsorted(cumulative, SPAN_TAIL))
    last = int(np.searchsorted(cumulative, 1.0 - SPAN_TAIL))
    return first, min(max(first, last), weights.size - 1)


def explain(
    samples: npt.ArrayLike, profile: BandProfile, *, sample_rate: int = SAMPLE_RATE_HZ
) -> Explanation:
    """Which band of the event's audio differs most from `profile`, when, and how.

    `samples` is the event's audio (mono float, from the event's start); only the first
    `MAX_EXPLAIN_SECONDS` are analysed. ValueError on empty or non-finite samples or a profile
    of another sample rate.
    """
    # Cut before the float64 copy: a long event's audio is never copied whole.
    head = np.asarray(samples)[: int(MAX_EXPLAIN_SECONDS * sample_rate)]
    x = _check_samples(head, "explain")
    if profile.sample_rate != sample_rate:
        raise ValueError(
            f"explain: profile is for {profile.sample_rate} Hz audio, samples are {sample_rate} Hz"
        )
    edges, power = band_power(x, sample_rate)
    if edges.shape != profile.edges_hz.shape or not np.allclose(edges, profile.edges_hz):
        raise ValueError("explain: the profile's bands do not match this module's bands")
    first, last = _choose_bands(np.mean(power, axis=0), profile)
    band = (float(edges[first, 0]), float(edges[last, 1]))
    chosen = slice(first, last + 1)
    reference_db = float(_db(np.sum(10.0 ** (profile.level_db[chosen] / 10.0))))
    band_excess = float(_db(np.mean(np.sum(power[:, chosen], axis=1)))) - reference_db
    spread = float(np.max(profile.std_db[chosen]))

    # When, frame by frame: where the band is clearly off its normal level.
    frame_band_power = np.sum(power[:, chosen], axis=1)
    frame_excess = _db(frame_band_power) - reference_db
    margin = max(MIN_EXCESS_DB, ACTIVE_MIN_SIGMAS * spread)
    active = frame_excess >= margin if band_excess >= 0 else frame_excess <= -margin
    reference_power = 10.0 ** (reference_db / 10.0)
    changed = np.abs(frame_band_power - reference_power)
    first_frame, last_frame = _active_span(np.where(active, changed, 0.0))
    active_fraction = float(np.mean(active))
    if abs(band_excess) < MIN_EXCESS_DB or active_fraction >= STEADY_FRACTION:
        # Nothing to point at, or a steady change: the whole event.
        first_frame, last_frame = 0, active.size - 1
    # A frame stands for the hop around its centre.
    centre = (FRAME_SAMPLES - HOP_SAMPLES) / 2
    start_s = max(0.0, first_frame * HOP_SAMPLES + centre) / sample_rate
    end_s = min(x.size, last_frame * HOP_SAMPLES + centre + HOP_SAMPLES) / sample_rate
    if first_frame == 0:
        start_s = 0.0
    if last_frame == active.size - 1:
        end_s = x.size / sample_rate

    # How: a train of impacts has a heavy-tailed band signal; its rate is the envelope's period.
    impulsive = False
    rate: float | None = None
    if band_excess >= MIN_EXCESS_DB:
        band_signal = _bandpass(x, band, sample_rate)
        impulsive = _kurtosis(band_signal) >= IMPULSIVE_KURTOSIS
        if impulsive:
            n_env = band_signal.size // ENVELOPE_SAMPLES
            frames = band_signal[: n_env * ENVELOPE_SAMPLES].reshape(n_env, ENVELOPE_SAMPLES)
            envelope = np.sqrt(np.mean(frames**2, axis=1))
            rate = repetition_rate(envelope, sample_rate / ENVELOPE_SAMPLES, MAX_IMPULSE_RATE_HZ)
        elif active_fraction < STEADY_FRACTION:
            rate = repetition_rate(frame_excess, sample_rate / HOP_SAMPLES, MAX_BURST_RATE_HZ)

    summary = _summary(band, band_excess, impulsive, rate, active_fraction)
    return Explanation(
        summary=summary,
        band_hz=band,
        start_s=float(start_s),
        end_s=float(end_s),
        excess_db=band_excess,
        impulsive=impulsive,
        rate_hz=rate,
    )


def _summary(
    band: tuple[float, float],
    excess_db: float,
    impulsive: bool,
    rate: float | None,
    active_fraction: float,
) -> str:
    where = format_band(*band)
    if abs(excess_db) < MIN_EXCESS_DB:
        return f"no band stands out: within {MIN_EXCESS_DB:.0f} dB of normal"
    if excess_db < 0:
        return f"{excess_db:.0f} dB at {where}, quieter than normal"
    level = f"+{excess_db:.0f} dB"
    if impulsive and rate is not None:
        return f"impulses at {rate:.3g} per s in {where}, {level}"
    if impulsive:
        return f"irregular impulses in {where}, {level}"
    if active_fraction >= STEADY_FRACTION:
        return f"{level} at {where}, steady"
    share = f"{100 * active_fraction:.0f}% of the time"
    if rate is not None:
        return f"{level} at {where}, bursts at {rate:.2g} per s ({share})"
    return f"{level} at {where}, intermittent ({share})"
