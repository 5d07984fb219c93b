"""ClipScorer: framing, batching, padding, aggregation, bundle wiring."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import Bundle, BundleError
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.pipeline import EMBED_BATCH_WINDOWS
from edge_asd.detection.scoring import ClipScore, ClipScorer
from edge_asd.detection.windowing import frame_signal, iter_window_batches, window_count
from edge_asd.model.contract import ModelInfo

WINDOW = 1_600  # 0.1 s keeps the tests fast; the scorer does not care about the length
HOP = 800
DIM = 6


class FakeEncoder:
    """Embedding = a few spectral statistics of the window (numpy only)."""

    def __init__(self, sha: str = "1" * 64) -> None:
        self.info = ModelInfo(
            path="fake.onnx",
            sha256=sha,
            name="fake-stats",
            version="0",
            sample_rate=SAMPLE_RATE_HZ,
            window_samples=WINDOW,
            embedding_dim=DIM,
        )
        self.batch_sizes: list[int] = []

    def embed(self, windows: np.ndarray) -> np.ndarray:
        assert windows.ndim == 2 and windows.shape[1] == WINDOW
        self.batch_sizes.append(windows.shape[0])
        power = np.abs(np.fft.rfft(windows, axis=1)) ** 2 + 1e-12
        freqs = np.fft.rfftfreq(WINDOW, 1.0 / SAMPLE_RATE_HZ)
        total = power.sum(axis=1)
        centroid = (power * freqs).sum(axis=1) / total / 1000.0
        spread = np.sqrt((power * (freqs / 1000.0 - centroid[:, None]) ** 2).sum(axis=1) / total)
        low = power[:, freqs < 500].sum(axis=1) / total
        mid = power[:, (freqs >= 500) & (freqs < 2000)].sum(axis=1) / total
        high = power[:, freqs >= 2000].sum(axis=1) / total
        flatness = np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)
        return np.stack([centroid, spread, low, mid, high, flatness], axis=1).astype(np.float32)


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    return (0.1 * np.sin(2 * np.pi * 200 * t) + 0.02 * rng.normal(size=n)).astype(np.float32)


@pytest.fixture(scope="module")
def bank() -> MemoryBank:
    rng = np.random.default_rng(0)
    windows = frame_signal(_noise(5.0, rng), WINDOW, HOP)
    return MemoryBank(FakeEncoder().embed(windows), k=1)


def test_window_scores_match_direct_scoring(bank: MemoryBank) -> None:
    rng = np.random.default_rng(1)
    x = _noise(2.0, rng)
    enc = FakeEncoder()
    result = ClipScorer(enc, bank, window_samples=WINDOW, hop_samples=HOP).score_clip(x)
    windows = frame_signal(x, WINDOW, HOP)
    want = bank.score(FakeEncoder().embed(windows), "density")
    assert result.n_windows == windows.shape[0] == window_count(x.size, WINDOW, HOP)
    np.testing.assert_allclose(result.window_scores, want, rtol=1e-6)
    assert result.clip_score == pytest.approx(float(want.mean()), rel=1e-6)
    assert isinstance(result, ClipScore)


def test_scoring_stage_alone_scores_like_the_windows(bank: MemoryBank) -> None:
    """`score_embeddings` (what benchmarks/latency.py times) is `score_windows` after the
    encoder, with the pipeline's method."""
    windows = frame_signal(_noise(1.0, np.random.default_rng(4)), WINDOW, HOP)
    enc = FakeEncoder()
    for method in ("density", "raw"):
        scorer = ClipScorer(enc, bank, method=method, window_samples=WINDOW, hop_samples=HOP)
        np.testing.assert_array_equal(
            scorer.pipeline.score_embeddings(enc.embed(windows)), scorer.score_windows(windows)
        )


def test_long_clip_is_embedded_in_bounded_batches(bank: MemoryBank) -> None:
    rng = np.random.default_rng(2)
    x = _noise(3.3, rng)  # 65 windows: two full batches and a ragged one
    enc = FakeEncoder()
    result = ClipScorer(enc, bank, window_samples=WINDOW, hop_samples=HOP).score_clip(x)
    assert max(enc.batch_sizes) <= EMBED_BATCH_WINDOWS
    assert sum(enc.batch_sizes) == result.n_windows == 65
    batched = np.concatenate(list(iter_window_batches(x, WINDOW, HOP, 7)))
    np.testing.assert_array_equal(batched, frame_signal(x, WINDOW, HOP))


def test_aggregates_and_methods(bank: MemoryBank) -> None:
    rng = np.random.default_rng(3)
    x = _noise(1.0, rng)
    x[8000:9600] += 0.3 * rng.normal(size=1600).astype(np.float32)  # a noisy burst
    enc = FakeEncoder()
    mean = ClipScorer(enc, bank, window_samples=WINDOW, hop_samples=HOP).score_clip(x)
    peak = ClipScorer(
        enc, bank, window_samples=WINDOW, hop_samples=HOP, aggregate="max"
    ).score_clip(x)
    np.testing.assert_array_equal(mean.window_scores, peak.window_scores)
    assert peak.clip_score == pytest.approx(float(peak.window_scores.max()))
    assert peak.clip_score > mean.clip_score
    raw = ClipScorer(enc, bank, method="raw", window_samples=WINDOW, hop_samples=HOP)
    np.testing.assert_allclose(
        raw.score_clip(x).window_scores,
        bank.score(enc.embed(frame_signal(x, WINDOW, HOP)), "raw"),
        rtol=1e-6,
    )


def test_short_clip_is_zero_padded_to_one_window(bank: MemoryBank) -> None:
    rng = np.random.default_rng(4)
    x = _noise(0.05, rng)  # 800 samples
    enc = FakeEncoder()
    result = ClipScorer(enc, bank, window_samples=WINDOW, hop_samples=HOP).score_clip(x)
    padded = np.concatenate([x, np.zeros(WINDOW - x.size, dtype=np.float32)])
    assert result.n_windows == 1
    np.testing.assert_allclose(
        result.window_scores, bank.score(enc.embed(padded[None, :])), rtol=1e-6
    )


def test_bad_input_and_settings(bank: MemoryBank) -> None:
    enc = FakeEncoder()
    scorer = ClipScorer(enc, bank, window_samples=WINDOW, hop_samples=HOP)
    with pytest.raises(ValueError, match="NaN"):
        scorer.score_clip(np.full(WINDOW, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        scorer.score_clip(np.zeros((2, WINDOW), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        scorer.score_clip(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="aggregate"):
        ClipScorer(enc, bank, window_samples=WINDOW, hop_samples=HOP, aggregate="median")
    with pytest.raises(ValueError, match="scoring method"):
        ClipScorer(enc, bank, method="lof", window_samples=WINDOW, hop_samples=HOP)


def test_encoder_output_is_checked(bank: MemoryBank) -> None:
    class Broken(FakeEncoder):
        def embed(self, windows: np.ndarray) -> np.ndarray:
            return np.zeros((windows.shape[0], DIM + 1), dtype=np.float32)

    scorer = ClipScorer(Broken(), bank, window_samples=WINDOW, hop_samples=HOP)
    with pytest.raises(ValueError, match="fake-stats returned embeddings of shape"):
        scorer.score_clip(np.zeros(WINDOW, dtype=np.float32))


def _bundle(bank: MemoryBank, enc: FakeEncoder, method: str) -> Bundle:
    return Bundle(
        embeddings=bank.embeddings,
        rho=bank.rho,
        labels=None,
        k=bank.k,
        method=method,
        threshold=1.0,
        threshold_method="quantile",
        threshold_percentile=0.99,
        normal_stats={},
        model=enc.info,
        window_samples=WINDOW,
        hop_samples=HOP // 2,
        sample_rate=SAMPLE_RATE_HZ,
    )


def test_from_bundle_uses_its_method_and_framing(bank: MemoryBank) -> None:
    enc = FakeEncoder()
    scorer = ClipScorer.from_bundle(_bundle(bank, enc, "difference"), enc, aggregate="max")
    assert (scorer.pipeline.method, scorer.pipeline.hop_samples, scorer.aggregate) == (
        "difference",
        HOP // 2,
        "max",
    )
    x = _noise(0.5, np.random.default_rng(5))
    result = scorer.score_clip(x)
    assert result.n_windows == window_count(x.size, WINDOW, HOP // 2)
    np.testing.assert_allclose(
        result.window_scores,
        bank.score(enc.embed(frame_signal(x, WINDOW, HOP // 2)), "difference"),
        rtol=1e-5,
        atol=1e-7,
    )


def test_from_bundle_refuses_another_model(bank: MemoryBank) -> None:
    enc = FakeEncoder()
    other = FakeEncoder(sha="2" * 64)
    other.info = dataclasses.replace(other.info, name="other")
    with pytest.raises(BundleError, match="recalibrate"):
        ClipScorer.from_bundle(_bundle(bank, enc, "density"), other)


_REAL_ENCODER: list[object] = []


def _real_encoder():  # type: ignore[no-untyped-def]
    from edge_asd.model.encoder import Encoder
    from edge_asd.model.registry import resolve_model

    if not _REAL_ENCODER:
        _REAL_ENCODER.append(Encoder(resolve_model(None)))
    return _REAL_ENCODER[0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=40))
def test_scores_do_not_depend_on_source_block_size(blocks: list[int]) -> None:
    """Streaming a signal through a WavSource-sized split, the Windower, the real encoder and a
    bank gives the same window scores as scoring the whole clip at once."""
    from edge_asd.detection.windowing import Windower

    encoder = _real_encoder()
    rng = np.random.default_rng(4)
    signal = rng.normal(0, 0.1, 4 * SAMPLE_RATE_HZ).astype(np.float32)
    bank = MemoryBank(encoder.embed(frame_signal(signal[::-1].copy(), 16000, 8000)))
    whole = bank.score(encoder.embed(frame_signal(signal, 16000, 8000)))
    windower = Windower(16000, 8000)
    streamed: list[np.ndarray] = []
    position = 0
    sizes = itertools.cycle(blocks)
    while position < len(signal):
        size = next(sizes)
        windows = windower.push(signal[position : position + size])
        position += size
        if len(windows):
            streamed.append(bank.score(encoder.embed(windows)))
    # The windows are bit-identical (tests/test_windowing.py); what remains is float rounding
    # from onnxruntime and BLAS summing in another order for another batch size (~1e-4).
    np.testing.assert_allclose(np.concatenate(streamed), whole, rtol=1e-3, atol=1e-4)
