"""Why an event fired: band, level, timing and impulse rate against a normal profile."""

from __future__ import annotations

import ast
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection import explain as explain_module
from edge_asd.detection.explain import (
    BandProfile,
    band_edges,
    band_profile,
    explain,
    format_band,
    repetition_rate,
)
from edge_asd_dev.synth import machine_sound, whine

SR = SAMPLE_RATE_HZ


@pytest.fixture(scope="module")
def recording() -> tuple[BandProfile, np.ndarray]:
    """A normal profile from 30 s of a machine, and 10 more seconds of the same machine."""
    full = machine_sound(40.0, rng=np.random.default_rng(7))
    return band_profile(full[: 30 * SR]), full[30 * SR :]


def _impacts(n: int, rate_hz: float, resonance_hz: float, amplitude: float) -> np.ndarray:
    """Short decaying rings at `resonance_hz`, `rate_hz` per second."""
    train = np.zeros(n)
    train[(np.arange(0.01, n / SR, 1.0 / rate_hz) * SR).astype(int)] = 1.0
    t = np.arange(48) / SR
    ring = np.exp(-t / 1e-3) * np.sin(2 * np.pi * resonance_hz * t)
    return amplitude * np.convolve(train, ring)[:n]


def test_whine_at_3khz_is_explained_in_a_band_containing_3khz(recording) -> None:
    profile, normal = recording
    t = np.arange(normal.size) / SR
    event = normal + 0.03 * np.sin(2 * np.pi * 3000.0 * t)
    result = explain(event, profile)
    assert result.band_hz[0] <= 3000.0 <= result.band_hz[1]
    assert result.band_hz[1] - result.band_hz[0] < 1500.0
    assert result.excess_db > 3.0
    assert not result.impulsive
    assert result.rate_hz is None
    assert "steady" in result.summary
    assert "kHz" in result.summary
    assert result.start_s == pytest.approx(0.0, abs=0.1)
    assert result.end_s == pytest.approx(normal.size / SR, abs=0.1)


def test_synth_whine_is_steady_and_narrow(recording) -> None:
    profile, normal = recording
    result = explain(whine(normal, rng=np.random.default_rng(3), level_db=-6.0), profile)
    # The synth draws its tone between 1 and 4 kHz.
    assert result.band_hz[0] >= 900.0 and result.band_hz[1] <= 4600.0
    assert "steady" in result.summary


def test_periodic_impacts_at_12_per_second_get_a_rate_near_12(recording) -> None:
    profile, normal = recording
    event = normal + _impacts(normal.size, 12.0, 4000.0, 0.5)
    result = explain(event, profile)
    assert result.impulsive
    assert result.rate_hz == pytest.approx(12.0, rel=0.05)
    assert result.band_hz[0] <= 4000.0 <= result.band_hz[1]
    assert result.summary.startswith("impulses at 12 per s in ")


def test_timing_points_at_the_part_that_differs(recording) -> None:
    profile, normal = recording
    t = np.arange(normal.size) / SR
    tone = 0.05 * np.sin(2 * np.pi * 1500.0 * t)
    tone[: 4 * SR] = 0.0
    tone[7 * SR :] = 0.0
    result = explain(normal + tone, profile)
    assert result.band_hz[0] <= 1500.0 <= result.band_hz[1]
    assert result.start_s == pytest.approx(4.0, abs=0.15)
    assert result.end_s == pytest.approx(7.0, abs=0.15)
    assert "intermittent" in result.summary or "bursts" in result.summary


def test_normal_audio_has_nothing_to_point_at(recording) -> None:
    profile, normal = recording
    result = explain(normal, profile)
    assert abs(result.excess_db) < 3.0
    assert result.summary.startswith("no band stands out")
    assert result.start_s == 0.0


def test_a_missing_component_reads_quieter_than_normal(recording) -> None:
    profile, normal = recording
    spectrum = np.fft.rfft(normal)
    freqs = np.fft.rfftfreq(normal.size, 1.0 / SR)
    spectrum[(freqs > 200.0) & (freqs < 700.0)] = 0.0
    result = explain(np.fft.irfft(spectrum, normal.size), profile)
    assert result.excess_db < -3.0
    assert "quieter than normal" in result.summary


def test_repetition_rate_of_a_pulse_train() -> None:
    envelope = np.zeros(5000)
    envelope[::40] = 1.0  # 25 per second at 1000 envelope frames per second
    assert repetition_rate(envelope, 1000.0, 300.0) == pytest.approx(25.0, rel=0.01)
    noise = np.random.default_rng(0).random(5000)
    assert repetition_rate(noise, 1000.0, 300.0) is None
    assert repetition_rate(np.ones(100), 1000.0, 300.0) is None


def test_profile_round_trips_as_plain_data(recording) -> None:
    profile, _ = recording
    data = profile.to_dict()
    assert all(isinstance(v, list | int) for v in data.values())
    again = BandProfile.from_dict(data)
    np.testing.assert_allclose(again.level_db, profile.level_db, atol=1e-3)
    np.testing.assert_allclose(again.edges_hz, profile.edges_hz, atol=1e-3)
    assert again.frames == profile.frames


def test_bands_are_third_octaves_up_to_nyquist() -> None:
    edges = band_edges(SR)
    assert edges[0, 0] < 100.0 < edges[0, 1]
    assert edges[-1, 1] == SR / 2
    np.testing.assert_allclose(edges[:-1, 1], edges[1:, 0])
    np.testing.assert_allclose(edges[:-1, 1] / edges[:-1, 0], 2 ** (1 / 3))


def test_band_labels() -> None:
    assert format_band(2828.4, 3563.6) == "2.8-3.6 kHz"
    assert format_band(178.2, 224.5) == "180-220 Hz"
    assert format_band(890.9, 1122.5) == "890 Hz-1.1 kHz"
    assert format_band(3563.6, 5656.9) == "3.6-5.7 kHz"


def test_bad_input_is_refused(recording) -> None:
    profile, _ = recording
    with pytest.raises(ValueError, match="non-empty"):
        explain(np.zeros(0), profile)
    with pytest.raises(ValueError, match="NaN"):
        explain(np.full(SR, np.nan), profile)
    with pytest.raises(ValueError, match="Hz"):
        explain(np.zeros(SR), profile, sample_rate=8000)


def test_explain_imports_neither_scipy_nor_torch() -> None:
    source = Path(explain_module.__file__).read_text(encoding="utf-8")
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"scipy", "torch", "matplotlib"}


@pytest.mark.parametrize("n", [1, 2, 7, 97, 1000, 176_123, 320_001])
def test_fft_size_is_the_smallest_5_smooth_length_at_least_n(n: int) -> None:
    def smooth(m: int) -> bool:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    size = explain_module.fft_size(n)
    assert size >= n and smooth(size)
    assert not any(smooth(m) for m in range(n, size))


def test_bandpass_of_an_awkward_length_keeps_the_band() -> None:
    """A prime length (Bluestein territory before padding) still filters correctly."""
    n = 16_001  # prime
    t = np.arange(n) / SAMPLE_RATE_HZ
    x = np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 4000 * t)
    y = explain_module._bandpass(x, (3000.0, 5000.0), SAMPLE_RATE_HZ)
    assert y.shape == x.shape
    inner = slice(2000, n - 2000)  # away from the ends, where the brick wall rings
    np.testing.assert_allclose(y[inner], np.sin(2 * np.pi * 4000 * t[inner]), atol=0.05)


def test_band_power_does_not_depend_on_the_fft_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transforming fewer frames at once (the daemon's peak memory) gives the same band levels,
    to the bit, so profiles calibrated before the change still apply."""
    x = machine_sound(7.3, rng=np.random.default_rng(3)).astype(np.float32)
    _, stepped = explain_module.band_power(x)
    monkeypatch.setattr(explain_module, "FRAMES_PER_FFT", explain_module.FRAMES_PER_CHUNK)
    _, whole = explain_module.band_power(x)
    np.testing.assert_array_equal(stepped, whole)


def test_explain_working_memory_is_bounded(recording: tuple[BandProfile, np.ndarray]) -> None:
    """The 10 s an event is explained on cost about 2 MB of numpy temporaries at most (the
    band-passed signal and its kurtosis, three copies of 0.6 MB); with 128 frames transformed
    at once and the band-pass through float64 it was 4.1 MB, the daemon's step at an event's
    end (100 MB target)."""
    profile, normal = recording
    n = normal.size
    event = (normal + _impacts(n, 12.0, 4000.0, 0.5)).astype(np.float32)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = explain(event, profile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.impulsive  # the band-pass and its kurtosis ran
    assert peak - before < 2_500_000


def test_bandpass_keeps_float32() -> None:
    """float32 audio is filtered in float32 (no float64 copy of an event) and agrees with the
    float64 filter."""
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 4000 * t)
    single = explain_module._bandpass(x.astype(np.float32), (3000.0, 5000.0), SR)
    double = explain_module._bandpass(x, (3000.0, 5000.0), SR)
    assert single.dtype == np.float32 and double.dtype == np.float64
    np.testing.assert_allclose(single, double, atol=1e-5)
