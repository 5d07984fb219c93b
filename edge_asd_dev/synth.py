"""Synthetic rotating-machine sound and additive fault generators (16 kHz float32, numpy only).

Used by the demo assets, the tests, `benchmarks/make_devset.py` and `benchmarks/streams.py`.
Every random draw comes from the caller's seeded `np.random.Generator`, so a seed reproduces the
audio exactly.

Fault generators ADD a fault component to any signal so that the power of the added
component relative to the power of the input (whole-signal averages) equals `level_db`:
`10 * log10(mean(fault**2) / mean(x**2)) == level_db`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from edge_asd.constants import SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

NOMINAL_SHAFT_HZ: Final = 50.0
"""Shaft/motor rotation rate of the default machine (a 2-pole motor on 50 Hz mains), Hertz."""

NORMAL_RMS: Final = 0.05
"""RMS of `machine_sound` output (about -26 dBFS): loud enough, far from clipping."""

_NYQUIST_MARGIN: Final = 0.9
"""Harmonics are kept below this fraction of Nyquist so none alias."""
_HARMONIC_MAX_HZ: Final = 6_000.0
_JITTER_STD: Final = 0.004
"""Relative standard deviation of the slow speed wander (0.4 %)."""
_JITTER_COMPONENTS: Final = 4
_JITTER_MAX_HZ: Final = 0.5
"""Slowest-to-fastest speed wander rates are below this, Hertz."""
_HARMONIC_LEVEL_SPREAD_DB: Final = 6.0
_HARMONIC_SHARE: Final = 0.6
"""Share of the normal sound's power in the harmonic series; the rest is broadband noise."""
_TEXTURE_DEPTH: Final = 0.3
"""Depth of the periodic amplitude texture of the noise (blade/teeth pass)."""
_BLADES: Final = 7
_NOISE_BANDS_HZ: Final = ((300.0, 250.0), (1_200.0, 600.0), (3_500.0, 1_500.0))
"""Centre and width (Hertz) of the broadband noise resonances, at nominal condition."""
_EPS: Final = 1e-12
_RUB_RATE_HZ: Final = 1.5
"""Mean number of rub bursts per second (`rub_bursts`)."""
_RUB_LENGTH_RANGE_S: Final = (0.05, 0.3)


class FaultFunction(Protocol):
    """Signature shared by every fault generator."""

    def __call__(
        self,
        x: npt.ArrayLike,
        *,
        rng: np.random.Generator,
        level_db: float,
        shaft_hz: float = NOMINAL_SHAFT_HZ,
    ) -> FloatArray: ...


def _power(x: npt.NDArray[np.floating]) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _as_signal(x: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D signal, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: signal contains NaN or inf")
    return arr


def _shaped_noise(
    n: int, rng: np.random.Generator, bands_hz: tuple[tuple[float, float], ...]
) -> npt.NDArray[np.float64]:
    """White noise coloured in the frequency domain by Gaussian resonances (centre, width Hz)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
    shape = np.zeros_like(freqs)
    for centre, width in bands_hz:
        shape += np.exp(-0.5 * ((freqs - centre) / width) ** 2)
    out = np.fft.irfft(spectrum * shape, n)
    return np.asarray(out / np.sqrt(_power(out) + _EPS))


def _slow_wander(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Zero-mean relative speed wander of unit std, made of a few slow sinusoids."""
    t = np.arange(n) / SAMPLE_RATE_HZ
    wander = np.zeros(n)
    for _ in range(_JITTER_COMPONENTS):
        rate = rng.uniform(0.05, _JITTER_MAX_HZ)
        wander += np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return wander / np.sqrt(_JITTER_COMPONENTS / 2)


def machine_sound(
    seconds: float,
    *,
    rng: np.random.Generator,
    fundamental_hz: float = NOMINAL_SHAFT_HZ,
    condition: float = 1.0,
) -> FloatArray:
    """A normal rotating-machine sound, RMS `NORMAL_RMS`, 16 kHz float32.

    A harmonic series of the shaft rate with slow speed wander, broadband resonant noise and a
    blade-pass amplitude texture. `condition` is the relative operating speed/load (1.0 =
    nominal): it scales the shaft rate and the noise resonances and tilts the harmonic levels,
    which is how source and target domains differ.
    """
    if seconds <= 0:
        raise ValueError(f"machine_sound: seconds must be > 0, got {seconds}")
    if condition <= 0 or fundamental_hz <= 0:
        raise ValueError(
            f"machine_sound: fundamental_hz ({fundamental_hz}) and condition ({condition}) "
            "must be > 0"
        )
    n = round(seconds * SAMPLE_RATE_HZ)
    f0 = fundamental_hz * condition
    inst_hz = f0 * (1.0 + _JITTER_STD * _slow_wander(n, rng))
    phase = 2 * np.pi * np.cumsum(inst_hz) / SAMPLE_RATE_HZ
    max_hz = min(_HARMONIC_MAX_HZ, _NYQUIST_MARGIN * SAMPLE_RATE_HZ / 2)
    n_harmonics = max(1, int(max_hz // f0))
    # Heavier load (higher condition) puts relatively more energy in the upper harmonics.
    tilt = 1.2 / condition
    harmonics = np.zeros(n)
    for h in range(1, n_harmonics + 1):
        level_db = rng.uniform(-_HARMONIC_LEVEL_SPREAD_DB, _HARMONIC_LEVEL_SPREAD_DB)
        amp = 10 ** (level_db / 20) / h**tilt
        harmonics += amp * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    harmonics /= np.sqrt(_power(harmonics) + _EPS)
    bands = tuple((c * condition, w * condition) for c, w in _NOISE_BANDS_HZ)
    noise = _shaped_noise(n, rng, bands)
    texture = 1.0 + _TEXTURE_DEPTH * np.cos(_BLADES * phase)
    noise = noise * texture
    noise /= np.sqrt(_power(noise) + _EPS)
    x = np.sqrt(_HARMONIC_SHARE) * harmonics + np.sqrt(1 - _HARMONIC_SHARE) * noise
    x *= NORMAL_RMS / np.sqrt(_power(x) + _EPS)
    return x.astype(np.float32)


def _add_at_ratio(
    x: npt.NDArray[np.float64], component: npt.NDArray[np.float64], level_db: float, name: str
) -> FloatArray:
    """x + component scaled so that power(component) / power(x) is `level_db`."""
    px = _power(x)
    pc = _power(component)
    if px <= _EPS:
        raise ValueError(f"{name}: the input signal is silent; a fault-to-signal ratio needs power")
    if pc <= _EPS:
        raise ValueError(f"{name}: generated an empty fault component (signal too short?)")
    gain = np.sqrt(px * 10 ** (level_db / 10) / pc)
    return (x + gain * component).astype(np.float32)


def _decaying_kernel(
    rng: np.random.Generator, resonance_hz: float, decay_s: float
) -> npt.NDArray[np.float64]:
    length = max(2, round(5 * decay_s * SAMPLE_RATE_HZ))
    t = np.arange(length) / SAMPLE_RATE_HZ
    return np.exp(-t / decay_s) * np.sin(2 * np.pi * resonance_hz * t + rng.uniform(0, 2 * np.pi))


def bearing_impacts(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add periodic short resonant impulses at a ball-pass frequency (outer/inner race defect).

    Ball-pass rate 3-5.5 x shaft, a 2-5 kHz structural resonance ringing for ~1 ms, and a
    once-per-revolution amplitude modulation (the defect passing through the load zone).
    """
    sig = _as_signal(x, "bearing_impacts")
    n = sig.size
    bpf = shaft_hz * rng.uniform(3.0, 5.5)
    period = SAMPLE_RATE_HZ / bpf
    # Rolling elements slip a little, so impacts are not perfectly periodic.
    times = np.arange(rng.uniform(0, period), n, period)
    times = times + rng.normal(0.0, 0.01 * period, times.size)
    idx = np.clip(np.round(times).astype(np.int64), 0, n - 1)
    train = np.zeros(n)
    t_imp = idx / SAMPLE_RATE_HZ
    train[idx] = 1.0 + 0.5 * np.cos(2 * np.pi * shaft_hz * t_imp + rng.uniform(0, 2 * np.pi))
    kernel = _decaying_kernel(rng, rng.uniform(2_000.0, 5_000.0), rng.uniform(0.5e-3, 1.5e-3))
    component = np.convolve(train, kernel)[:n]
    return _add_at_ratio(sig, component, level_db, "bearing_impacts")


def whine(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add a narrow tone (gear mesh, electrical whine, failing fan) that may glide slowly.

    1-4 kHz, gliding up or down by up to 5 % over the signal, with a slight wobble at shaft rate.
    """
    sig = _as_signal(x, "whine")
    n = sig.size
    t = np.arange(n) / SAMPLE_RATE_HZ
    start_hz = rng.uniform(1_000.0, 4_000.0)
    glide = rng.uniform(-0.05, 0.05)
    duration = max(t[-1], 1.0 / SAMPLE_RATE_HZ)
    inst_hz = start_hz * (1.0 + glide * t / duration)
    phase = 2 * np.pi * np.cumsum(inst_hz) / SAMPLE_RATE_HZ + rng.uniform(0, 2 * np.pi)
    wobble = 1.0 + 0.1 * np.sin(2 * np.pi * shaft_hz * t)
    component = wobble * np.sin(phase)
    return _add_at_ratio(sig, component, level_db, "whine")


def imbalance_modulation(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add amplitude modulation of the signal at shaft rate plus the 1x shaft tone it excites.

    The added part is x * cos(2 pi f_shaft t) (sidebands at +-f_shaft) and a 1x tone: an
    unbalanced rotor shakes the whole machine once per revolution.
    """
    sig = _as_signal(x, "imbalance_modulation")
    n = sig.size
    t = np.arange(n) / SAMPLE_RATE_HZ
    phi = rng.uniform(0, 2 * np.pi)
    modulated = sig * np.cos(2 * np.pi * shaft_hz * t + phi)
    tone = np.sin(2 * np.pi * shaft_hz * t + phi)
    modulated /= np.sqrt(_power(modulated) + _EPS)
    component = modulated + 0.5 * tone
    return _add_at_ratio(sig, component, level_db, "imbalance_modulation")


def rub_bursts(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add intermittent broadband scraping bursts (rotor touching a stator or seal).

    Bursts of 50-300 ms, about 1.5 per second, of high-frequency noise chopped at shaft rate
    (contact once per revolution), each with a smooth envelope.
    """
    sig = _as_signal(x, "rub_bursts")
    component = _rub_component(
        sig.size, rng, shaft_hz, rate_hz=_RUB_RATE_HZ, length_range_s=_RUB_LENGTH_RANGE_S
    )
    return _add_at_ratio(sig, component, level_db, "rub_bursts")


def _rub_component(
    n: int,
    rng: np.random.Generator,
    shaft_hz: float,
    *,
    rate_hz: float,
    length_range_s: tuple[float, float],
) -> npt.NDArray[np.float64]:
    """High-frequency noise chopped at shaft rate under Poisson bursts (`rate_hz` per second,
    each `length_range_s` long with a Hann envelope); unscaled."""
    t = np.arange(n) / SAMPLE_RATE_HZ
    noise = _shaped_noise(n, rng, ((4_000.0, 2_000.0), (6_500.0, 1_000.0)))
    chop = np.clip(np.cos(2 * np.pi * shaft_hz * t + rng.uniform(0, 2 * np.pi)), 0.0, None) ** 2
    envelope = np.zeros(n)
    seconds = n / SAMPLE_RATE_HZ
    n_bursts = max(1, rng.poisson(rate_hz * seconds))
    for _ in range(n_bursts):
        length = max(2, round(rng.uniform(*length_range_s) * SAMPLE_RATE_HZ))
        length = min(length, n)
        start = int(rng.integers(0, n - length + 1))
        envelope[start : start + length] += rng.uniform(0.5, 1.0) * np.hanning(length)
    return np.asarray(noise * chop * envelope)


def looseness(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add a rattle: irregular impacts near half the shaft rate with bounces (loose mounting).

    Sub-harmonic (0.5x) impact rate with strong timing jitter, random strengths, a 400-1500 Hz
    resonance with a longer ring than a bearing impact, and 1-3 bounces per impact.
    """
    sig = _as_signal(x, "looseness")
    n = sig.size
    period = SAMPLE_RATE_HZ / (0.5 * shaft_hz)
    times = np.arange(rng.uniform(0, period), n, period)
    times = times + rng.normal(0.0, 0.15 * period, times.size)
    # Loose parts miss some revolutions.
    times = times[rng.random(times.size) > 0.2]
    train = np.zeros(n)
    for t0 in times:
        strength = rng.uniform(0.3, 1.0)
        bounce_at = t0
        for _ in range(int(rng.integers(1, 4))):
            i = round(bounce_at)
            if 0 <= i < n:
                train[i] += strength
            strength *= 0.5
            bounce_at += rng.uniform(0.003, 0.012) * SAMPLE_RATE_HZ
    kernel = _decaying_kernel(rng, rng.uniform(400.0, 1_500.0), rng.uniform(3e-3, 8e-3))
    component = np.convolve(train, kernel)[:n]
    return _add_at_ratio(sig, component, level_db, "looseness")


FAULTS: Final[dict[str, FaultFunction]] = {
    "bearing_impacts": bearing_impacts,
    "whine": whine,
    "imbalance_modulation": imbalance_modulation,
    "rub_bursts": rub_bursts,
    "looseness": looseness,
}
"""Fault name -> generator with the `FaultFunction` signature."""


def hiss_leak(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add a steady high-frequency hiss (compressed air or steam escaping through a leak).

    Broadband noise in a 3-7 kHz band with a slight slow flutter (+-10 %); unrelated to the
    shaft rate (`shaft_hz` is accepted for the common signature and ignored).
    """
    del shaft_hz
    sig = _as_signal(x, "hiss_leak")
    n = sig.size
    centre = rng.uniform(4_000.0, 6_000.0)
    noise = _shaped_noise(n, rng, ((centre, 1_500.0),))
    t = np.arange(n) / SAMPLE_RATE_HZ
    flutter = 1.0 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t + rng.uniform(0, 2 * np.pi))
    return _add_at_ratio(sig, noise * flutter, level_db, "hiss_leak")


def valve_clicks(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add sparse irregular clicks (a chattering valve, a relay, a loose cover ticking).

    Clicks at 0.5-3 per second on average (Poisson), each a 1-4 kHz resonance ringing for a few
    milliseconds, about half of them followed 20-80 ms later by a weaker second click (open then
    close). Not tied to the shaft rate (`shaft_hz` is accepted and ignored).
    """
    del shaft_hz
    sig = _as_signal(x, "valve_clicks")
    n = sig.size
    seconds = n / SAMPLE_RATE_HZ
    rate = rng.uniform(0.5, 3.0)
    n_clicks = max(1, int(rng.poisson(rate * seconds)))
    train = np.zeros(n)
    for start in rng.integers(0, n, n_clicks):
        train[start] += rng.uniform(0.6, 1.0)
        if rng.random() < 0.5:
            second = start + round(rng.uniform(0.02, 0.08) * SAMPLE_RATE_HZ)
            if second < n:
                train[second] += rng.uniform(0.2, 0.5)
    kernel = _decaying_kernel(rng, rng.uniform(1_000.0, 4_000.0), rng.uniform(1e-3, 4e-3))
    component = np.convolve(train, kernel)[:n]
    return _add_at_ratio(sig, component, level_db, "valve_clicks")


EXTRA_FAULTS: Final[dict[str, FaultFunction]] = {
    "hiss_leak": hiss_leak,
    "valve_clicks": valve_clicks,
}
"""Further fault families (same signature), kept out of `FAULTS` so that the development set
built from `FAULTS` (benchmarks/make_devset.py) does not change; `benchmarks/streams.py` uses
both (`ALL_FAULTS`)."""

ALL_FAULTS: Final[dict[str, FaultFunction]] = {**FAULTS, **EXTRA_FAULTS}


def apply_fault(
    x: npt.ArrayLike,
    name: str,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add the fault `name` (a key of `FAULTS`) at fault-to-signal ratio `level_db` (dB)."""
    try:
        fault = FAULTS[name]
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; expected one of {sorted(FAULTS)}") from None
    _LOGGER.debug("adding fault %s at %.1f dB", name, level_db)
    return fault(x, rng=rng, level_db=level_db, shaft_hz=shaft_hz)


def mix_at_snr(signal: npt.ArrayLike, noise: npt.ArrayLike, snr_db: float) -> FloatArray:
    """signal + noise scaled so that power(signal) / power(noise) is `snr_db` (dB).

    A longer noise is cut to the signal's length; a shorter one is repeated.
    """
    sig = _as_signal(signal, "mix_at_snr signal")
    noi = _as_signal(noise, "mix_at_snr noise")
    if noi.size < sig.size:
        noi = np.tile(noi, -(-sig.size // noi.size))
    noi = noi[: sig.size]
    ps = _power(sig)
    pn = _power(noi)
    if ps <= _EPS or pn <= _EPS:
        raise ValueError("mix_at_snr: signal and noise must both have non-zero power")
    gain = np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    return (sig + gain * noi).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Detection breadth (issue 8): weak faults, and a valve machine whose faults are in its timing.

_SHORT_RUB_RATE_HZ: Final = 1.0
_SHORT_RUB_LENGTH_RANGE_S: Final = (0.01, 0.04)
"""Short rub bursts: 10-40 ms, about one per second (`rub_bursts`: 50-300 ms, 1.5/s)."""
_THIN_WHINE_RANGE_HZ: Final = (1_500.0, 6_000.0)
_THIN_WHINE_DRIFT: Final = 0.005
"""Relative frequency drift of the thin whine over the signal (0.5 %; `whine` glides 5 %)."""


def thin_whine(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add a thin, steady tone (a bearing cage squeal or an inverter whine just starting).

    One sinusoid at 1.5-6 kHz drifting by at most 0.5 %, no amplitude wobble: narrower and
    steadier than `whine`. Meant for levels a few dB below `whine`'s (the weak-fault sets).
    `shaft_hz` is accepted for the common signature and ignored.
    """
    del shaft_hz
    sig = _as_signal(x, "thin_whine")
    n = sig.size
    t = np.arange(n) / SAMPLE_RATE_HZ
    start_hz = rng.uniform(*_THIN_WHINE_RANGE_HZ)
    drift = rng.uniform(-_THIN_WHINE_DRIFT, _THIN_WHINE_DRIFT)
    duration = max(t[-1], 1.0 / SAMPLE_RATE_HZ)
    inst_hz = start_hz * (1.0 + drift * t / duration)
    phase = 2 * np.pi * np.cumsum(inst_hz) / SAMPLE_RATE_HZ + rng.uniform(0, 2 * np.pi)
    return _add_at_ratio(sig, np.sin(phase), level_db, "thin_whine")


def short_rub_bursts(
    x: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    level_db: float,
    shaft_hz: float = NOMINAL_SHAFT_HZ,
) -> FloatArray:
    """Add brief scrapes: `rub_bursts` with 10-40 ms bursts, about one per second.

    At the same `level_db` the bursts are as loud on average as `rub_bursts`' over the signal,
    so each burst is louder but rarer; the weak-fault sets use lower levels.
    """
    sig = _as_signal(x, "short_rub_bursts")
    component = _rub_component(
        sig.size,
        rng,
        shaft_hz,
        rate_hz=_SHORT_RUB_RATE_HZ,
        length_range_s=_SHORT_RUB_LENGTH_RANGE_S,
    )
    return _add_at_ratio(sig, component, level_db, "short_rub_bursts")


WEAK_FAULTS: Final[dict[str, FaultFunction]] = {
    "thin_whine": thin_whine,
    "short_rub_bursts": short_rub_bursts,
}
"""Weak-fault families (same signature) for the detection-breadth sets."""


VALVE_PERIOD_S: Final = 1.2
"""Open/close cycle of the normal valve machine, seconds."""
VALVE_OPEN_FRACTION: Final = 0.4
"""The close click follows the open click by this share of the period."""
VALVE_JITTER_S: Final = 0.004
"""Standard deviation of each click's timing, seconds (a pneumatic valve is not a clock)."""
VALVE_RMS: Final = 0.05
"""RMS of the normal valve sound (clicks and floor together)."""
VALVE_FLOOR_DB: Final = -30.0
"""Power of the background floor (the machine's air supply and drive) re the clicks, dB."""
VALVE_LATE_S: Final = 0.15
"""'late': every close click comes this much later (a sticking valve), seconds."""
VALVE_MISSING_SHARE: Final = 0.5
"""'missing': each close click is absent with this probability (at least one is)."""
VALVE_BOUNCE_RANGE_S: Final = (0.02, 0.04)
"""'double': each open click bounces once after this delay, seconds."""
VALVE_PERIOD_FACTOR: Final = 1.25
"""'period': the cycle runs this much slower."""
VALVE_LEAK_DB: Final = -20.0
"""'leak': hiss power re the normal valve sound, dB (the default of `valve_sound`)."""
_VALVE_OPEN_HZ: Final = (2_000.0, 3_000.0)
_VALVE_CLOSE_HZ: Final = (900.0, 1_400.0)
_VALVE_CLICK_DECAY_S: Final = 0.003
_VALVE_CLOSE_STRENGTH: Final = 0.7
_VALVE_BOUNCE_STRENGTH: Final = 0.6
_VALVE_FLOOR_BANDS_HZ: Final = ((150.0, 100.0), (600.0, 300.0))
_VALVE_LEAK_BAND_HZ: Final = (5_000.0, 1_500.0)

VALVE_FAULTS: Final = ("late", "missing", "double", "period", "leak")
"""Fault kinds of `valve_sound` ("normal" is the healthy machine)."""


@dataclass(frozen=True)
class ValveClick:
    """One click of the valve machine."""

    time_s: float
    """Seconds from the start of the signal."""
    kind: str
    """"open", "close" or "bounce"."""
    strength: float
    """Relative amplitude (open clicks about 1)."""


def valve_schedule(
    seconds: float,
    *,
    rng: np.random.Generator,
    fault: str = "normal",
    period_s: float = VALVE_PERIOD_S,
) -> list[ValveClick]:
    """The clicks of `seconds` of the valve machine, sorted by time.

    The same `rng` state gives the same phase, jitter and strengths whatever `fault` is, so a
    faulty schedule differs from the normal one by the fault only (paired test clips).
    """
    if seconds <= 0 or period_s <= 0:
        raise ValueError(f"valve_schedule: seconds ({seconds}) and period_s must be > 0")
    if fault not in ("normal", *VALVE_FAULTS):
        raise ValueError(f"unknown valve fault {fault!r}; expected normal or one of {VALVE_FAULTS}")
    # Every draw is made for the longest schedule, whatever the fault, so draws line up.
    n_cycles = int(np.ceil(seconds / period_s)) + 1
    start = rng.uniform(0.0, period_s)
    jitter = rng.normal(0.0, VALVE_JITTER_S, (n_cycles, 3))
    strengths = rng.uniform(0.8, 1.0, (n_cycles, 2))
    missing = rng.random(n_cycles)
    bounce_s = rng.uniform(*VALVE_BOUNCE_RANGE_S, n_cycles)
    cycle_s = period_s * (VALVE_PERIOD_FACTOR if fault == "period" else 1.0)
    close_after = VALVE_OPEN_FRACTION * period_s + (VALVE_LATE_S if fault == "late" else 0.0)
    # The phase is counted back one cycle so the signal may start in the middle of one.
    first = start - period_s
    clicks: list[ValveClick] = []
    close_s = first + np.arange(n_cycles) * cycle_s + close_after + jitter[:, 1]
    close_kept = missing >= VALVE_MISSING_SHARE if fault == "missing" else np.ones(n_cycles, bool)
    heard = (close_s >= 0.0) & (close_s < seconds)
    if fault == "missing" and close_kept[heard].all() and heard.any():
        # At least one close click that falls inside the signal goes missing.
        close_kept[int(np.argmin(np.where(heard, missing, np.inf)))] = False
    for i in range(n_cycles):
        open_s = float(first + i * cycle_s + jitter[i, 0])
        clicks.append(ValveClick(open_s, "open", float(strengths[i, 0])))
        if fault == "double":
            clicks.append(
                ValveClick(
                    open_s + bounce_s[i] + jitter[i, 2],
                    "bounce",
                    _VALVE_BOUNCE_STRENGTH * float(strengths[i, 0]),
                )
            )
        if close_kept[i]:
            clicks.append(
                ValveClick(
                    float(close_s[i]),
                    "close",
                    _VALVE_CLOSE_STRENGTH * float(strengths[i, 1]),
                )
            )
    return sorted((c for c in clicks if 0.0 <= c.time_s < seconds), key=lambda c: c.time_s)


def valve_sound(
    seconds: float,
    *,
    rng: np.random.Generator,
    fault: str = "normal",
    leak_db: float = VALVE_LEAK_DB,
    period_s: float = VALVE_PERIOD_S,
) -> tuple[FloatArray, list[ValveClick]]:
    """A valve machine (open/close click cycle over a low floor), RMS `VALVE_RMS`, 16 kHz.

    Returns the audio and its clicks. `fault` is "normal" or one of `VALVE_FAULTS`: timing
    faults move, drop or add clicks (`valve_schedule`); "leak" adds a steady 3.5-6.5 kHz hiss
    at `leak_db` re the power of the normal sound, heard mostly between the clicks. The normal
    sound is scaled to `VALVE_RMS` before any leak is added, so a fault never changes the
    level of what was there. The same `rng` state gives the same machine for every `fault`.
    """
    # The normal machine's schedule comes from the same draws; the level is set on it, so a
    # fault that removes or adds clicks changes neither the floor nor the clicks' loudness.
    normal_rng = np.random.Generator(type(rng.bit_generator)())
    normal_rng.bit_generator.state = rng.bit_generator.state
    clicks = valve_schedule(seconds, rng=rng, fault=fault, period_s=period_s)
    normal_clicks = (
        clicks
        if fault in ("normal", "leak")
        else valve_schedule(seconds, rng=normal_rng, period_s=period_s)
    )
    n = round(seconds * SAMPLE_RATE_HZ)
    kernels = {
        "open": _decaying_kernel(rng, rng.uniform(*_VALVE_OPEN_HZ), _VALVE_CLICK_DECAY_S),
        "close": _decaying_kernel(rng, rng.uniform(*_VALVE_CLOSE_HZ), _VALVE_CLICK_DECAY_S),
    }
    kernels["bounce"] = kernels["open"]
    floor = _shaped_noise(n, rng, _VALVE_FLOOR_BANDS_HZ)
    hiss = _shaped_noise(n, rng, (_VALVE_LEAK_BAND_HZ,))
    click_power = _power(_render_clicks(normal_clicks, n, kernels))
    if click_power <= _EPS:
        raise ValueError(f"valve_sound: {seconds} s holds no click; use a longer signal")
    floor_gain = np.sqrt(click_power * 10 ** (VALVE_FLOOR_DB / 10))
    gain = VALVE_RMS / np.sqrt(click_power * (1.0 + 10 ** (VALVE_FLOOR_DB / 10)))
    x = gain * (_render_clicks(clicks, n, kernels) + floor_gain * floor)
    if fault == "leak":
        x = x + VALVE_RMS * 10 ** (leak_db / 20) * hiss
    return x.astype(np.float32), clicks


def _render_clicks(
    clicks: list[ValveClick], n: int, kernels: dict[str, npt.NDArray[np.float64]]
) -> npt.NDArray[np.float64]:
    out = np.zeros(n)
    for kind, kernel in kernels.items():
        train = np.zeros(n)
        for click in clicks:
            if click.kind == kind:
                train[min(n - 1, round(click.time_s * SAMPLE_RATE_HZ))] += click.strength
        out += np.convolve(train, kernel)[:n]
    return out
