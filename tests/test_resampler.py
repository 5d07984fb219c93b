"""Tests for edge_asd.audio.resampler: block-split invariance, alignment, anti-aliasing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_asd.audio.resampler import StreamResampler, resample
from edge_asd.constants import SAMPLE_RATE_HZ

RATES_IN = [48_000, 44_100, 22_050, 8_000, 16_000]
TONE_HZ = 1_000.0
ALIAS_LIMIT_DB = -70.0


def _tone(freq_hz: float, rate: int, seconds: float) -> np.ndarray:
    return np.sin(2 * np.pi * freq_hz * np.arange(round(rate * seconds)) / rate)


def _db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.max(np.abs(x)) + 1e-12))


@pytest.mark.parametrize("orig", RATES_IN)
def test_random_split_matches_single_call(orig: int) -> None:
    rng = np.random.default_rng(orig)
    x = rng.standard_normal(orig // 2).astype(np.float32)
    whole = StreamResampler(orig, SAMPLE_RATE_HZ).process(x)
    stream = StreamResampler(orig, SAMPLE_RATE_HZ)
    cuts = np.sort(rng.integers(0, x.shape[0], 25))
    parts = [stream.process(p) for p in np.split(x, cuts)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    orig=st.sampled_from(RATES_IN),
    sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=20),
)
def test_any_block_sizes_property(orig: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(len(sizes))
    x = rng.uniform(-1, 1, size=(sum(sizes), 2)).astype(np.float32)
    whole = StreamResampler(orig, SAMPLE_RATE_HZ).process(x)
    stream = StreamResampler(orig, SAMPLE_RATE_HZ)
    parts, start = [], 0
    for size in sizes:
        parts.append(stream.process(x[start : start + size]))
        start += size
    got = np.concatenate(parts)
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("orig", RATES_IN)
def test_output_length_and_dtype(orig: int) -> None:
    x = np.zeros(orig, dtype=np.float32)
    y = resample(x, orig, SAMPLE_RATE_HZ)
    assert y.dtype == np.float32
    assert y.shape == (SAMPLE_RATE_HZ,)
    assert StreamResampler(orig, SAMPLE_RATE_HZ).process(x).shape == (SAMPLE_RATE_HZ,)


@pytest.mark.parametrize("orig", RATES_IN)
def test_whole_signal_resample_is_time_aligned(orig: int) -> None:
    y = resample(_tone(TONE_HZ, orig, 1.0), orig, SAMPLE_RATE_HZ)
    ref = _tone(TONE_HZ, SAMPLE_RATE_HZ, 1.0)
    edge = 400  # filter start-up and tail transients
    np.testing.assert_allclose(y[edge:-edge], ref[edge:-edge], atol=1e-3)


@pytest.mark.parametrize("orig", RATES_IN)
def test_stream_equals_resample_shifted_by_delay(orig: int) -> None:
    x = np.random.default_rng(1).standard_normal(orig // 4)
    stream = StreamResampler(orig, SAMPLE_RATE_HZ)
    live = stream.process(x)
    whole = resample(x, orig, SAMPLE_RATE_HZ)
    d = stream.delay_samples
    n = live.shape[0] - d
    np.testing.assert_allclose(live[d:], whole[:n], atol=1e-6, rtol=0)


@pytest.mark.parametrize("orig", [48_000, 44_100, 22_050])
def test_frequencies_above_target_nyquist_are_suppressed(orig: int) -> None:
    alias_source_hz = SAMPLE_RATE_HZ / 2 + 1_000  # would fold to 7 kHz without filtering
    y = resample(_tone(alias_source_hz, orig, 0.5), orig, SAMPLE_RATE_HZ)
    assert _db(y[200:-200]) < ALIAS_LIMIT_DB


def test_passband_tone_keeps_its_level_when_upsampling() -> None:
    y = resample(_tone(3_000.0, 8_000, 0.5), 8_000, SAMPLE_RATE_HZ)
    assert abs(_db(y[400:-400])) < 0.1


def test_identity_passthrough_is_exact() -> None:
    x = np.random.default_rng(2).standard_normal((500, 3)).astype(np.float32)
    stream = StreamResampler(SAMPLE_RATE_HZ, SAMPLE_RATE_HZ)
    assert stream.delay_samples == 0
    np.testing.assert_array_equal(stream.process(x), x)
    np.testing.assert_array_equal(resample(x[:, 0], SAMPLE_RATE_HZ, SAMPLE_RATE_HZ), x[:, 0])


def test_multichannel_channels_are_independent() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4410, 2))
    both = StreamResampler(44_100, SAMPLE_RATE_HZ).process(x)
    left = StreamResampler(44_100, SAMPLE_RATE_HZ).process(x[:, 0])
    right = StreamResampler(44_100, SAMPLE_RATE_HZ).process(x[:, 1])
    np.testing.assert_allclose(both[:, 0], left, atol=1e-6)
    np.testing.assert_allclose(both[:, 1], right, atol=1e-6)


def test_channel_count_change_is_rejected() -> None:
    stream = StreamResampler(48_000, SAMPLE_RATE_HZ)
    stream.process(np.zeros((30, 1)))
    with pytest.raises(ValueError, match="channels"):
        stream.process(np.zeros((30, 2)))


def test_invalid_rates_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, SAMPLE_RATE_HZ)


def test_reset_restarts_the_stream() -> None:
    x = np.random.default_rng(4).standard_normal(3000)
    stream = StreamResampler(48_000, SAMPLE_RATE_HZ)
    first = stream.process(x)
    stream.reset()
    np.testing.assert_array_equal(stream.process(x), first)
