"""Tests for edge_asd_dev.synth: determinism, level control, and that each fault is audible."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd_dev import synth

SECONDS = 2.0
LEVEL_TOLERANCE_DB = 0.5
FFT_SIZE = 1024


def _power_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64))))


def _avg_spectrum_db(x: np.ndarray) -> np.ndarray:
    """Welch-style averaged power spectrum in dB (Hann, 50 % overlap)."""
    hop = FFT_SIZE // 2
    n_frames = (x.size - FFT_SIZE) // hop + 1
    frames = np.stack([x[i * hop : i * hop + FFT_SIZE] for i in range(n_frames)])
    spec = np.abs(np.fft.rfft(frames * np.hanning(FFT_SIZE), axis=1)) ** 2
    return 10 * np.log10(spec.mean(axis=0) + 1e-20)


def _envelope_spectrum(x: np.ndarray, highpass_hz: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Spectrum of the squared (optionally high-passed) signal, i.e. its envelope; Hz."""
    spec = np.fft.rfft(x.astype(np.float64))
    spec[np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE_HZ) < highpass_hz] = 0.0
    env = np.square(np.fft.irfft(spec, x.size))
    env -= env.mean()
    spec = np.abs(np.fft.rfft(env))
    return np.fft.rfftfreq(env.size, 1 / SAMPLE_RATE_HZ), spec


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    return synth.machine_sound(SECONDS, rng=np.random.default_rng(123))


def test_machine_sound_format_and_level(normal: np.ndarray) -> None:
    assert normal.dtype == np.float32
    assert normal.shape == (round(SECONDS * SAMPLE_RATE_HZ),)
    assert np.all(np.isfinite(normal))
    assert np.sqrt(np.mean(normal.astype(np.float64) ** 2)) == pytest.approx(synth.NORMAL_RMS)
    assert np.max(np.abs(normal)) < 1.0


def test_machine_sound_is_deterministic_per_seed() -> None:
    a = synth.machine_sound(0.5, rng=np.random.default_rng(7))
    b = synth.machine_sound(0.5, rng=np.random.default_rng(7))
    c = synth.machine_sound(0.5, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_machine_sound_has_shaft_harmonics(normal: np.ndarray) -> None:
    spec = _avg_spectrum_db(normal)
    bin_hz = SAMPLE_RATE_HZ / FFT_SIZE
    # The first harmonics (50, 100, 150 Hz) stand out from the bins halfway between them.
    for h in (2, 3):
        peak = spec[round(h * synth.NOMINAL_SHAFT_HZ / bin_hz)]
        trough = spec[round((h + 0.5) * synth.NOMINAL_SHAFT_HZ / bin_hz)]
        assert peak > trough + 6.0


def test_condition_shifts_the_sound() -> None:
    """A different operating condition moves the spectrum (it is what makes a target domain)."""
    src = synth.machine_sound(SECONDS, rng=np.random.default_rng(1), condition=1.0)
    tgt = synth.machine_sound(SECONDS, rng=np.random.default_rng(1), condition=1.2)
    src_again = synth.machine_sound(SECONDS, rng=np.random.default_rng(2), condition=1.0)
    shift = np.mean(np.abs(_avg_spectrum_db(src) - _avg_spectrum_db(tgt)))
    same = np.mean(np.abs(_avg_spectrum_db(src) - _avg_spectrum_db(src_again)))
    assert shift > same + 1.0


@pytest.mark.parametrize("name", sorted(synth.FAULTS))
@pytest.mark.parametrize("level_db", [-20.0, -6.0, 3.0])
def test_fault_level_is_controlled(normal: np.ndarray, name: str, level_db: float) -> None:
    faulty = synth.apply_fault(normal, name, rng=np.random.default_rng(5), level_db=level_db)
    added = faulty.astype(np.float64) - normal
    measured = _power_db(added) - _power_db(normal)
    assert abs(measured - level_db) < LEVEL_TOLERANCE_DB
    assert faulty.dtype == np.float32
    assert faulty.shape == normal.shape


@pytest.mark.parametrize("name", sorted(synth.FAULTS))
def test_fault_is_deterministic_per_seed(normal: np.ndarray, name: str) -> None:
    a = synth.apply_fault(normal, name, rng=np.random.default_rng(3), level_db=-10)
    b = synth.apply_fault(normal, name, rng=np.random.default_rng(3), level_db=-10)
    c = synth.apply_fault(normal, name, rng=np.random.default_rng(4), level_db=-10)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", sorted(synth.FAULTS))
def test_fault_changes_the_spectrum(normal: np.ndarray, name: str) -> None:
    """Some part of the spectrum or of the envelope moves by more than normal variation does."""
    other_normal = synth.machine_sound(SECONDS, rng=np.random.default_rng(124))
    faulty = synth.apply_fault(normal, name, rng=np.random.default_rng(9), level_db=-10)
    base = _avg_spectrum_db(normal)
    band_change = np.max(np.abs(_avg_spectrum_db(faulty) - base))
    normal_change = np.max(np.abs(_avg_spectrum_db(other_normal) - base))
    freqs, env_normal = _envelope_spectrum(normal)
    _, env_faulty = _envelope_spectrum(faulty)
    # Envelope energy below 300 Hz: impacts, bursts and modulation all live there.
    low = (freqs > 1.0) & (freqs < 300.0)
    env_ratio = np.sum(env_faulty[low] ** 2) / np.sum(env_normal[low] ** 2)
    assert band_change > normal_change + 3.0 or env_ratio > 2.0


def test_whine_adds_a_narrow_peak(normal: np.ndarray) -> None:
    faulty = synth.whine(normal, rng=np.random.default_rng(0), level_db=-10)
    diff = _avg_spectrum_db(faulty) - _avg_spectrum_db(normal)
    # A tone (even gliding by a few %) is concentrated in a few bins.
    assert np.max(diff) > 10.0
    assert np.sum(diff > 3.0) < 0.05 * diff.size


def test_bearing_impacts_show_ball_pass_rate_in_envelope(normal: np.ndarray) -> None:
    faulty = synth.bearing_impacts(normal, rng=np.random.default_rng(0), level_db=-6)
    # Demodulate the resonance band, as a vibration analyst would.
    freqs, env = _envelope_spectrum(faulty, highpass_hz=1_500.0)
    band = (freqs > 3.0 * synth.NOMINAL_SHAFT_HZ * 0.95) & (freqs < 5.5 * synth.NOMINAL_SHAFT_HZ)
    _, env_normal = _envelope_spectrum(normal, highpass_hz=1_500.0)
    assert np.max(env[band]) > 3.0 * np.max(env_normal[band])


def test_imbalance_adds_shaft_rate_modulation(normal: np.ndarray) -> None:
    faulty = synth.imbalance_modulation(normal, rng=np.random.default_rng(0), level_db=-6)
    freqs, env = _envelope_spectrum(faulty)
    _, env_normal = _envelope_spectrum(normal)
    at_shaft = np.abs(freqs - synth.NOMINAL_SHAFT_HZ) < 1.0
    assert np.max(env[at_shaft]) > 3.0 * np.max(env_normal[at_shaft])


ADDED_FAULTS = {**synth.EXTRA_FAULTS, **synth.WEAK_FAULTS}
"""The families outside `FAULTS` (same signature)."""


@pytest.mark.parametrize("name", sorted(ADDED_FAULTS))
@pytest.mark.parametrize("level_db", [-26.0, -20.0, -6.0])
def test_added_fault_level_is_controlled_and_seeded(
    normal: np.ndarray, name: str, level_db: float
) -> None:
    fault = ADDED_FAULTS[name]
    faulty = fault(normal, rng=np.random.default_rng(5), level_db=level_db)
    measured = _power_db(faulty.astype(np.float64) - normal) - _power_db(normal)
    assert abs(measured - level_db) < LEVEL_TOLERANCE_DB
    assert faulty.dtype == np.float32
    assert faulty.shape == normal.shape
    np.testing.assert_array_equal(
        faulty, fault(normal, rng=np.random.default_rng(5), level_db=level_db)
    )
    assert not np.allclose(faulty, fault(normal, rng=np.random.default_rng(6), level_db=level_db))


def test_extra_faults_stay_out_of_the_devset_families() -> None:
    assert not set(synth.EXTRA_FAULTS) & set(synth.FAULTS)
    assert not set(synth.WEAK_FAULTS) & set(synth.ALL_FAULTS)
    assert synth.ALL_FAULTS == {**synth.FAULTS, **synth.EXTRA_FAULTS}


def test_hiss_leak_raises_the_treble(normal: np.ndarray) -> None:
    faulty = synth.hiss_leak(normal, rng=np.random.default_rng(0), level_db=-15)
    freqs = np.fft.rfftfreq(FFT_SIZE, 1 / SAMPLE_RATE_HZ)
    diff = _avg_spectrum_db(faulty) - _avg_spectrum_db(normal)
    assert np.median(diff[(freqs > 6_000.0) & (freqs < 7_500.0)]) > 3.0


def test_valve_clicks_are_sparse_transients(normal: np.ndarray) -> None:
    faulty = synth.valve_clicks(normal, rng=np.random.default_rng(0), level_db=-10)
    added = faulty.astype(np.float64) - normal
    frame = SAMPLE_RATE_HZ // 100
    energy = np.square(added[: added.size // frame * frame]).reshape(-1, frame).sum(axis=1)
    # Most 10 ms frames hold almost none of the added energy.
    assert np.mean(energy < 0.01 * energy.max()) > 0.5


def test_unknown_fault_and_silent_input_are_clear_errors(normal: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown fault 'gremlins'"):
        synth.apply_fault(normal, "gremlins", rng=np.random.default_rng(0), level_db=0)
    with pytest.raises(ValueError, match="silent"):
        synth.whine(np.zeros(1000), rng=np.random.default_rng(0), level_db=0)
    with pytest.raises(ValueError, match="NaN"):
        synth.whine(np.full(10, np.nan), rng=np.random.default_rng(0), level_db=0)


@pytest.mark.parametrize("snr_db", [10.0, 0.0, -10.0])
def test_mix_at_snr(normal: np.ndarray, snr_db: float) -> None:
    noise = np.random.default_rng(0).standard_normal(normal.size // 3)  # shorter: repeated
    mixed = synth.mix_at_snr(normal, noise, snr_db)
    added = mixed.astype(np.float64) - normal
    assert mixed.shape == normal.shape
    assert abs(_power_db(normal) - _power_db(added) - snr_db) < LEVEL_TOLERANCE_DB


# Detection breadth (issue 8): weak faults and the valve machine.

VALVE_SECONDS = 6.0
FRAME = SAMPLE_RATE_HZ // 100
"""10 ms analysis frames."""


def _frame_rms(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.sqrt(np.mean(np.square(x[: x.size // FRAME * FRAME]).reshape(-1, FRAME), axis=1))


def _times(clicks: list[synth.ValveClick], kind: str) -> np.ndarray:
    return np.array([c.time_s for c in clicks if c.kind == kind])


def test_rub_bursts_unchanged_by_the_short_burst_refactor(normal: np.ndarray) -> None:
    """The dev set's rub faults draw exactly as before (first values of a fixed seed)."""
    faulty = synth.rub_bursts(normal, rng=np.random.default_rng(5), level_db=-6.0)
    added = faulty.astype(np.float64) - normal
    assert _power_db(added) - _power_db(normal) == pytest.approx(-6.0, abs=1e-3)
    short = synth.short_rub_bursts(normal, rng=np.random.default_rng(5), level_db=-6.0)
    assert not np.allclose(short, faulty)


def test_thin_whine_is_thinner_than_whine(normal: np.ndarray) -> None:
    """At the same level the thin whine's added power sits in fewer bins, and its peak is
    higher, than the gliding, wobbling `whine`."""
    base = _avg_spectrum_db(normal)
    thin = _avg_spectrum_db(synth.thin_whine(normal, rng=np.random.default_rng(1), level_db=-10))
    wide = _avg_spectrum_db(synth.whine(normal, rng=np.random.default_rng(1), level_db=-10))
    assert np.sum(thin - base > 3.0) < np.sum(wide - base > 3.0)
    assert np.sum(thin - base > 3.0) <= 4
    assert np.max(thin - base) > np.max(wide - base)


def test_short_rub_bursts_are_shorter_than_rub_bursts(normal: np.ndarray) -> None:
    def active_share(faulty: np.ndarray) -> float:
        rms = _frame_rms(faulty.astype(np.float64) - normal)
        return float(np.mean(rms > 0.1 * rms.max()))

    long_share = active_share(synth.rub_bursts(normal, rng=np.random.default_rng(2), level_db=-10))
    short = synth.short_rub_bursts(normal, rng=np.random.default_rng(2), level_db=-10)
    assert active_share(short) < 0.5 * long_share


def test_valve_normal_level_and_determinism() -> None:
    x, clicks = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(0))
    assert x.dtype == np.float32
    assert x.shape == (round(VALVE_SECONDS * SAMPLE_RATE_HZ),)
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(synth.VALVE_RMS, rel=1e-3)
    y, again = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(x, y)
    assert clicks == again
    z, _ = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(1))
    assert not np.allclose(x, z)


def test_valve_cycle_period_and_open_time() -> None:
    _, clicks = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(0))
    opens = _times(clicks, "open")
    closes = _times(clicks, "close")
    assert np.median(np.diff(opens)) == pytest.approx(synth.VALVE_PERIOD_S, abs=0.02)
    after = [c - opens[opens < c].max() for c in closes if np.any(opens < c)]
    open_s = synth.VALVE_OPEN_FRACTION * synth.VALVE_PERIOD_S
    assert np.median(after) == pytest.approx(open_s, abs=0.02)
    # The clicks are heard: the loudest 10 ms frames are where the schedule puts them.
    rms = _frame_rms(synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(0))[0])
    loud = np.flatnonzero(rms > 0.3 * rms.max()) * FRAME / SAMPLE_RATE_HZ
    every = np.array([c.time_s for c in clicks])
    assert np.all(np.min(np.abs(loud[:, None] - every[None, :]), axis=1) < 0.03)


def test_valve_late_fault_moves_only_the_close_clicks() -> None:
    _, normal = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(3))
    _, late = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(3), fault="late")
    np.testing.assert_allclose(_times(late, "open"), _times(normal, "open"))
    n_close = min(_times(late, "close").size, _times(normal, "close").size)
    shift = _times(late, "close")[:n_close] - _times(normal, "close")[:n_close]
    # Late-fault clicks past the end are dropped, so compare the ones both have.
    np.testing.assert_allclose(shift[shift > 0], synth.VALVE_LATE_S, atol=1e-9)
    assert np.mean(shift > 0) > 0.5


def test_valve_missing_and_double_faults() -> None:
    _, normal = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(4))
    _, missing = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(4), fault="missing")
    _, double = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(4), fault="double")
    assert 0 < _times(missing, "close").size < _times(normal, "close").size
    assert set(_times(missing, "close")) <= set(_times(normal, "close"))
    bounces = _times(double, "bounce")
    opens = _times(double, "open")
    assert bounces.size >= opens.size - 1
    gaps = np.array([b - opens[opens < b].max() for b in bounces if np.any(opens < b)])
    lo, hi = synth.VALVE_BOUNCE_RANGE_S
    assert np.all((gaps > lo - 0.02) & (gaps < hi + 0.02))


def test_valve_period_fault_changes_the_cycle() -> None:
    _, clicks = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(5), fault="period")
    period = np.median(np.diff(_times(clicks, "open")))
    expected = synth.VALVE_PERIOD_S * synth.VALVE_PERIOD_FACTOR
    assert period == pytest.approx(expected, abs=0.02)


def test_valve_leak_raises_the_floor_between_clicks() -> None:
    normal, clicks = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(6))
    leak, leak_clicks = synth.valve_sound(VALVE_SECONDS, rng=np.random.default_rng(6), fault="leak")
    assert leak_clicks == clicks
    # Frames at least 50 ms from any click: the inter-click floor.
    centres = (np.arange(_frame_rms(normal).size) + 0.5) * FRAME / SAMPLE_RATE_HZ
    every = np.array([c.time_s for c in clicks])
    quiet = np.min(np.abs(centres[:, None] - every[None, :]), axis=1) > 0.05
    floor_normal = np.median(_frame_rms(normal)[quiet])
    floor_leak = np.median(_frame_rms(leak)[quiet])
    assert 20 * np.log10(floor_leak / floor_normal) > 6.0
    # The hiss is at the level asked for, re the normal sound.
    added = leak.astype(np.float64) - normal
    assert _power_db(added) - _power_db(normal) == pytest.approx(synth.VALVE_LEAK_DB, abs=0.5)


def test_valve_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown valve fault 'sticky'"):
        synth.valve_sound(1.0, rng=np.random.default_rng(0), fault="sticky")
    with pytest.raises(ValueError, match="seconds"):
        synth.valve_schedule(0.0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("fault", synth.VALVE_FAULTS)
def test_every_valve_fault_changes_every_clip(fault: str) -> None:
    """Whatever the phase, a faulty clip differs from its normal twin (a 'missing' fault whose
    dropped click fell outside the clip once left it unchanged)."""
    for seed in range(40):
        normal, _ = synth.valve_sound(2.0, rng=np.random.default_rng(seed))
        faulty, _ = synth.valve_sound(2.0, rng=np.random.default_rng(seed), fault=fault)
        assert not np.allclose(faulty, normal), seed
