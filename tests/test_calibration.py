"""Calibration: audio checks, held-out folds, thresholds, and an anomaly over the threshold."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as settings_hyp
from hypothesis import strategies as st

from edge_asd.config import CalibrationConfig, ConfigError
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import load_bundle, save_bundle
from edge_asd.detection.calibration import (
    CalibrationError,
    Clip,
    Framing,
    assign_folds,
    calibrate,
    contiguous_folds,
    fit_threshold,
    heldout_scores,
    window_groups,
)
from edge_asd.detection.memory_bank import NO_EXCLUSION, WHOLE_GROUP, MemoryBank
from edge_asd.detection.scoring import ClipScorer
from edge_asd.detection.windowing import frame_signal
from edge_asd.model.contract import ModelInfo

WINDOW = SAMPLE_RATE_HZ  # 1 s
HOP = SAMPLE_RATE_HZ // 2
N_BANDS = 24
HUM_HZ = 120.0
BURST_HZ = 3_000.0


class FakeEncoder:
    """Centred log energies in log-spaced bands: spectral shape, independent of level."""

    def __init__(self, window_samples: int = WINDOW) -> None:
        self.info = ModelInfo(
            path="fake.onnx",
            sha256="f" * 64,
            name="fake-bands",
            version="0",
            sample_rate=SAMPLE_RATE_HZ,
            window_samples=window_samples,
            embedding_dim=N_BANDS,
        )
        freqs = np.fft.rfftfreq(window_samples, 1.0 / SAMPLE_RATE_HZ)
        edges = np.geomspace(50.0, SAMPLE_RATE_HZ / 2, N_BANDS + 1)
        self._band = np.clip(np.searchsorted(edges, freqs) - 1, 0, N_BANDS - 1)
        self.calls = 0

    def embed(self, windows: np.ndarray) -> np.ndarray:
        self.calls += 1
        power = np.abs(np.fft.rfft(windows, axis=1)) ** 2
        bands = np.zeros((windows.shape[0], N_BANDS))
        for b in range(N_BANDS):
            bands[:, b] = power[:, self._band == b].sum(axis=1)
        logs = np.log10(bands + 1e-9)
        return (logs - logs.mean(axis=1, keepdims=True)).astype(np.float32)


def machine(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Hum with harmonics over noise; the noise colour wanders a little per clip."""
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    hum = sum(0.05 / h * np.sin(2 * np.pi * HUM_HZ * h * t + rng.uniform(0, 6)) for h in (1, 2, 3))
    white = rng.normal(size=n)
    # A short exponential kernel colours the noise; its decay differs per clip.
    decay = rng.uniform(0.8, 0.95)
    coloured = np.convolve(white, decay ** np.arange(64), mode="same")
    noise = 0.02 * coloured / coloured.std()
    return (hum + noise).astype(np.float32)


def with_burst(x: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    y = x.copy()
    a, b = int(start_s * SAMPLE_RATE_HZ), int((start_s + seconds) * SAMPLE_RATE_HZ)
    t = np.arange(b - a) / SAMPLE_RATE_HZ
    y[a:b] += (0.05 * np.sin(2 * np.pi * BURST_HZ * t)).astype(np.float32)
    return y


FRAMING = Framing(WINDOW, HOP)


def settings(**kwargs: object) -> CalibrationConfig:
    """The config's calibration section with `kwargs` changed, validated as the YAML is."""
    return CalibrationConfig.from_dict(kwargs)


@pytest.fixture(scope="module")
def normal_clips() -> list[Clip]:
    rng = np.random.default_rng(10)
    return [Clip(f"normal_{i:02d}.wav", machine(10.0, rng), label="a") for i in range(8)]


# --- refusals ---------------------------------------------------------------------------------


def test_too_little_audio_message() -> None:
    rng = np.random.default_rng(0)
    clip = Clip("short.wav", machine(10.0, rng))
    with pytest.raises(CalibrationError) as info:
        calibrate([clip], FakeEncoder(), FRAMING, settings(), progress=False)
    assert str(info.value) == (
        "too little audio: 19 windows, need at least 60 (= 30.5 s of audio at hop 0.5 s)"
    )


def test_silence_is_refused() -> None:
    rng = np.random.default_rng(1)
    quiet = (1e-5 * rng.normal(size=40 * SAMPLE_RATE_HZ)).astype(np.float32)  # -100 dBFS
    with pytest.raises(CalibrationError, match=r"silent: RMS level -100\.\d dBFS"):
        calibrate([Clip("quiet.wav", quiet)], FakeEncoder(), FRAMING, settings(), progress=False)
    zeros = np.zeros(40 * SAMPLE_RATE_HZ, dtype=np.float32)
    with pytest.raises(CalibrationError, match="silent"):
        calibrate([Clip("zeros.wav", zeros)], FakeEncoder(), FRAMING, settings(), progress=False)


def test_clipping_is_refused_naming_the_clip() -> None:
    rng = np.random.default_rng(2)
    good = machine(40.0, rng)
    bad = np.clip(machine(40.0, rng) * 100.0, -1.0, 1.0)
    with pytest.raises(CalibrationError, match=r"clip loud\.wav: \d+\.\d % of samples are clipped"):
        calibrate(
            [Clip("ok.wav", good), Clip("loud.wav", bad)],
            FakeEncoder(),
            FRAMING,
            settings(),
            progress=False,
        )
    # A few clipped peaks (under 1 %) are accepted.
    peaky = good.copy()
    peaky[::SAMPLE_RATE_HZ] = 1.0
    calibrate([Clip("peaky.wav", peaky)], FakeEncoder(), FRAMING, settings(), progress=False)


def test_nan_is_refused_naming_the_clip() -> None:
    rng = np.random.default_rng(3)
    x = machine(40.0, rng)
    x[100:103] = np.nan
    x[200] = np.inf
    with pytest.raises(CalibrationError, match=r"clip broken\.wav: 4 samples are NaN or inf"):
        calibrate([Clip("broken.wav", x)], FakeEncoder(), FRAMING, settings(), progress=False)


def test_model_window_mismatch_and_bad_settings() -> None:
    rng = np.random.default_rng(4)
    clips = [Clip("a.wav", machine(40.0, rng))]
    with pytest.raises(CalibrationError, match=r"fake-bands.*8000 samples.*16000"):
        calibrate(clips, FakeEncoder(window_samples=8000), FRAMING, settings(), progress=False)
    # Bad settings are refused by the config model, before any audio is looked at.
    with pytest.raises(ConfigError, match="threshold_percentile"):
        settings(threshold_percentile=1.5)
    with pytest.raises(ConfigError, match="scoring method 'lof'"):
        settings(scoring="lof")
    with pytest.raises(CalibrationError, match=r"window_samples \(0\) .* must be positive"):
        Framing(0, HOP)
    with pytest.raises(CalibrationError, match="no calibration clips"):
        calibrate([], FakeEncoder(), FRAMING, settings(), progress=False)


# --- folds ------------------------------------------------------------------------------------


def test_folds_by_whole_clips_when_enough_clips() -> None:
    counts = [19, 19, 7, 19, 0, 12, 19]
    folds, mask, scheme = assign_folds(counts, 5, FRAMING)
    assert scheme == "clips"
    assert mask.all()
    assert set(folds.tolist()) == set(range(5))
    start = 0
    for c in counts:
        assert len(set(folds[start : start + c].tolist())) <= 1  # a clip never splits
        start += c


def test_uneven_clips_fall_back_to_contiguous_folds() -> None:
    """One long recording and a few short clips: whole-clip folds would leave the long clip's
    fold with a bank of the short clips only."""
    counts = [700, 19, 19, 19, 19, 19]
    folds, mask, scheme = assign_folds(counts, 5, FRAMING)
    assert scheme == "contiguous"
    assert np.bincount(folds).max() <= 2 * sum(counts) / 5
    assert 0 < np.count_nonzero(~mask) < 20


@pytest.mark.parametrize("hop", [HOP, WINDOW // 4, WINDOW])
def test_contiguous_folds_never_overlap_a_bank_window(hop: int) -> None:
    counts = [150, 30]  # a long recording and a short one, fewer clips than folds
    s = settings()
    folds, mask, scheme = assign_folds(counts, s.folds, Framing(WINDOW, hop))
    assert scheme == "contiguous"
    clip_id = np.repeat([0, 1], counts)
    starts = np.concatenate([np.arange(c) * hop for c in counts])
    for f in range(s.folds):
        held = np.flatnonzero((folds == f) & mask)
        bank = np.flatnonzero(folds != f)
        assert held.size > 0
        # Contiguous: a fold is one block of the timeline.
        members = np.flatnonzero(folds == f)
        assert np.all(np.diff(members) == 1)
        for i in held:
            same_clip = bank[clip_id[bank] == clip_id[i]]
            assert np.all(np.abs(starts[same_clip] - starts[i]) >= WINDOW)
    # Only the boundary windows are left out.
    overlap = int(np.ceil(WINDOW / hop)) - 1
    assert np.count_nonzero(~mask) <= 2 * overlap * (s.folds - 1)


def test_heldout_scores_use_other_folds_only() -> None:
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(40, 6)).astype(np.float32)
    folds = np.repeat(np.arange(4), 10)
    mask = np.ones(40, dtype=bool)
    mask[:3] = False
    s = settings(k=2, scoring="raw")
    got = heldout_scores(emb, folds, FRAMING, s, score_mask=mask)
    assert got.shape == (37,)
    want = np.concatenate(
        [MemoryBank(emb[folds != f], k=2).score(emb[(folds == f) & mask], "raw") for f in range(4)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # A window that sits in its own bank would score 0; held-out ones never do here.
    assert np.all(got > 0)


def test_contiguous_heldout_scores_exceed_interleaved_ones() -> None:
    """Overlapping neighbours make interleaved (leave-one-window-out) scores too optimistic;
    the contiguous scheme avoids that, so its normal scores are higher."""
    rng = np.random.default_rng(6)
    x = machine(60.0, rng)
    emb = FakeEncoder().embed(frame_signal(x, WINDOW, HOP))
    s = settings(scoring="raw")
    folds, mask, _ = assign_folds([emb.shape[0]], s.folds, FRAMING)
    fair = heldout_scores(emb, folds, FRAMING, s, score_mask=mask)
    interleaved = heldout_scores(emb, np.arange(emb.shape[0]) % s.folds, FRAMING, s)
    assert np.median(fair) > np.median(interleaved)


# --- thresholds -------------------------------------------------------------------------------


def test_quantile_threshold_is_the_heldout_percentile(normal_clips: list[Clip]) -> None:
    # The embedding alone: this checks the threshold against its held-out scores directly.
    s = settings(threshold_method="quantile", threshold_percentile=0.9, views=["embedding"])
    bundle = calibrate(normal_clips, FakeEncoder(), FRAMING, s, progress=False)
    counts = [19] * len(normal_clips)
    folds, mask, scheme = assign_folds(counts, s.folds, FRAMING)
    assert scheme == "clips" and bundle.normal_stats["fold_scheme"] == "clips"
    groups, positions = window_groups(counts, scheme, s.folds)
    scores = heldout_scores(
        bundle.embeddings, folds, FRAMING, s, score_mask=mask, groups=groups, positions=positions
    )
    assert bundle.normal_stats["n"] == scores.size == 152
    assert np.mean(scores <= bundle.threshold) == pytest.approx(0.9, abs=0.01)


def test_fit_threshold_methods() -> None:
    rng = np.random.default_rng(7)
    scores = rng.gamma(4.0, 0.25, size=5000)
    q = fit_threshold(scores, "quantile", 0.99)
    g = fit_threshold(scores, "gamma", 0.99)
    assert q == pytest.approx(np.quantile(scores, 0.99))
    assert g == pytest.approx(q, rel=0.05)  # the gamma model fits gamma data
    # Negative (difference-method) scores and exact zeros still give a finite gamma threshold.
    shifted = scores - 0.5
    assert np.mean(shifted <= fit_threshold(shifted, "gamma", 0.99)) > 0.97
    zeros = np.concatenate([np.zeros(50), scores[:200]])
    assert np.isfinite(fit_threshold(zeros, "gamma", 0.995))
    # Too few scores or no spread: the gamma falls back to the empirical quantile.
    assert fit_threshold(np.full(100, 0.3), "gamma", 0.99) == pytest.approx(0.3)
    with pytest.raises(CalibrationError, match="no finite held-out scores"):
        fit_threshold(np.array([]), "gamma", 0.99)


# --- end to end -------------------------------------------------------------------------------


def test_bundle_contents(normal_clips: list[Clip]) -> None:
    enc = FakeEncoder()
    s = settings(k=2)
    bundle = calibrate(normal_clips, enc, FRAMING, s, progress=False, sources=["/data/x.wav"])
    assert bundle.embeddings.shape == (152, N_BANDS)
    assert bundle.labels == ["a"] * 152
    assert (bundle.k, bundle.method, bundle.threshold_method) == (2, "density", "gamma")
    assert bundle.model == enc.info
    assert (bundle.window_samples, bundle.hop_samples) == (WINDOW, HOP)
    assert bundle.sources == ["/data/x.wav"]
    stats = bundle.normal_stats
    assert stats["gamma"] is not None and stats["n"] == 152
    assert stats["min"] <= stats["median"] <= stats["max"]
    assert stats["min"] <= stats["mean"] <= stats["max"]
    # rho of the bundle is that of the full bank, with the default scope's exclusion.
    assert bundle.rho_scope == CalibrationConfig().rho_scope
    assert bundle.exclusion_windows == FRAMING.exclusion_windows(s.rho_scope)
    assert bundle.groups is not None and bundle.positions is not None
    np.testing.assert_array_equal(bundle.groups, np.repeat(np.arange(8), 19))
    np.testing.assert_array_equal(bundle.positions, np.tile(np.arange(19), 8))
    full = MemoryBank(
        bundle.embeddings,
        k=2,
        groups=bundle.groups,
        positions=bundle.positions,
        exclusion_windows=FRAMING.exclusion_windows(s.rho_scope),
    )
    np.testing.assert_allclose(bundle.rho, full.rho, atol=1e-6)
    # Embedded in batches, not all at once and not window by window.
    assert 152 // 32 <= enc.calls <= 2 * len(normal_clips)
    default = calibrate(normal_clips, enc, FRAMING, s, progress=False)
    assert default.sources == [c.name for c in normal_clips]


def test_single_long_recording_uses_contiguous_folds() -> None:
    rng = np.random.default_rng(8)
    bundle = calibrate(
        [Clip("long.wav", machine(60.0, rng))], FakeEncoder(), FRAMING, settings(), progress=False
    )
    assert bundle.normal_stats["fold_scheme"] == "contiguous"
    assert bundle.normal_stats["windows_left_out"] == 8  # one each side of 4 boundaries
    assert np.isfinite(bundle.threshold)


def test_anomaly_scores_over_threshold_normal_under(normal_clips: list[Clip]) -> None:
    enc = FakeEncoder()
    bundle = calibrate(normal_clips, enc, FRAMING, settings(), progress=False)
    scorer = ClipScorer.from_bundle(bundle, enc)
    rng = np.random.default_rng(99)
    normal_windows = np.concatenate(
        [scorer.score_clip(machine(10.0, rng)).window_scores for _ in range(4)]
    )
    assert np.mean(normal_windows <= bundle.threshold) >= 0.9
    faulty = with_burst(machine(10.0, rng), start_s=4.0, seconds=2.0)
    result = scorer.score_clip(faulty)
    # Windows 8..10 (starts 4.0, 4.5, 5.0 s) lie wholly inside the burst.
    assert np.all(result.window_scores[8:11] > bundle.threshold)
    assert result.window_scores[8:11].min() > 2 * np.median(normal_windows)


def test_calibrate_takes_the_config_section_as_it_is(normal_clips: list[Clip]) -> None:
    cfg = CalibrationConfig(scoring="difference", k=3, folds=4)
    bundle = calibrate(normal_clips, FakeEncoder(), FRAMING, cfg, progress=False)
    assert (bundle.method, bundle.k, bundle.normal_stats["folds"]) == ("difference", 3, 4)
    assert (FRAMING.window_seconds, FRAMING.hop_seconds) == (1.0, 0.5)
    # Without a section, calibrate uses the config's defaults (defined only there).
    default = calibrate(normal_clips, FakeEncoder(), FRAMING, progress=False)
    assert (default.method, default.k, default.rho_scope) == ("density", 1, "all")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_goes_to_stderr_on_a_terminal_only(
    normal_clips: list[Clip], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a terminal (capsys, a pipe, journald): no bar even when asked for.
    calibrate(normal_clips[:4], FakeEncoder(), FRAMING, settings(), progress=True)
    assert capsys.readouterr() == ("", "")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    calibrate(normal_clips[:4], FakeEncoder(), FRAMING, settings(), progress=True)
    assert "embedding" in terminal.getvalue() and "76/76" in terminal.getvalue()
    assert capsys.readouterr().out == ""
    terminal.truncate(0)
    calibrate(normal_clips[:4], FakeEncoder(), FRAMING, settings(), progress=False)
    assert terminal.getvalue() == ""


def test_saved_bundle_scores_like_the_fresh_one(normal_clips: list[Clip], tmp_path: Path) -> None:
    enc = FakeEncoder()
    fresh = calibrate(normal_clips, enc, FRAMING, settings(k=2), progress=False)
    loaded = load_bundle(save_bundle(fresh, tmp_path / "b"), model=enc.info)
    assert loaded.bundle_id == fresh.bundle_id and loaded.threshold == fresh.threshold
    x = with_burst(machine(5.0, np.random.default_rng(11)), 1.0, 1.0)
    a = ClipScorer.from_bundle(fresh, enc).score_clip(x).window_scores
    b = ClipScorer.from_bundle(loaded, enc).score_clip(x).window_scores
    np.testing.assert_allclose(a, b, rtol=1e-5)


@settings_hyp(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    hop=st.integers(1_000, 20_000),
    n_folds=st.integers(2, 6),
)
def test_heldout_windows_never_overlap_bank_windows_property(
    counts: list[int], hop: int, n_folds: int
) -> None:
    folds, mask, _ = assign_folds(counts, n_folds, Framing(WINDOW, hop))
    assert folds.shape == mask.shape == (sum(counts),)
    clip_id = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([np.arange(c) * hop for c in counts]) if counts else np.zeros(0)
    for i in np.flatnonzero(mask):
        others = (folds != folds[i]) & (clip_id == clip_id[i])
        assert np.all(np.abs(starts[others] - starts[i]) >= WINDOW)


# --- rho scope: groups and positions of bank windows ------------------------------------------


def test_window_groups_by_clip_and_by_stretch() -> None:
    groups, positions = window_groups([3, 0, 2], "clips", 5)
    np.testing.assert_array_equal(groups, [0, 0, 0, 2, 2])
    np.testing.assert_array_equal(positions, [0, 1, 2, 0, 1])
    # One long recording, 2 folds: 2 stretches per fold, each inside one fold.
    groups, positions = window_groups([8], "contiguous", 2)
    np.testing.assert_array_equal(groups, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(positions, np.arange(8))
    folds = contiguous_folds(8, 2)
    for g in range(4):
        assert len(set(folds[groups == g].tolist())) == 1
    # A stretch that spans two clips gives two groups (their positions are not comparable).
    groups, positions = window_groups([3, 5], "contiguous", 2)
    np.testing.assert_array_equal(groups, [0, 0, 1, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(positions, [0, 1, 2, 0, 1, 2, 3, 4])
    empty_groups, empty_positions = window_groups([0], "contiguous", 5)
    assert empty_groups.size == 0 and empty_positions.size == 0


@pytest.mark.parametrize(
    ("scope", "exclusion"),
    [("all", NO_EXCLUSION), ("non_overlapping", 2), ("other_groups", WHOLE_GROUP)],
)
def test_bundle_rho_follows_the_scope(normal_clips: list[Clip], scope: str, exclusion: int) -> None:
    enc = FakeEncoder()
    s = settings(rho_scope=scope)
    assert FRAMING.exclusion_windows(scope) == exclusion
    bundle = calibrate(normal_clips, enc, FRAMING, s, progress=False)
    assert (bundle.rho_scope, bundle.exclusion_windows) == (scope, exclusion)
    groups = np.repeat(np.arange(8), 19)
    positions = np.tile(np.arange(19), 8)
    # Reference: rho by explicit exclusion of the same clip's too-close windows.
    emb = bundle.embeddings
    for i in (0, 20, 151):
        d = (1.0 - emb @ emb[i]) / 2.0
        d[i] = np.inf
        d[(groups == groups[i]) & (np.abs(positions - positions[i]) < exclusion)] = np.inf
        assert bundle.rho[i] == pytest.approx(d.min(), rel=1e-4, abs=1e-7)
    assert np.isfinite(bundle.threshold)


def test_wider_scope_never_lowers_rho(normal_clips: list[Clip]) -> None:
    enc = FakeEncoder()
    rho = {
        scope: calibrate(normal_clips, enc, FRAMING, settings(rho_scope=scope), progress=False).rho
        for scope in ("all", "non_overlapping", "other_groups")
    }
    assert np.all(rho["non_overlapping"] >= rho["all"] - 1e-7)
    assert np.all(rho["other_groups"] >= rho["non_overlapping"] - 1e-7)
    # Overlapping windows share half their audio, so they are often the nearest: excluding
    # them raises rho for a good share of windows (about half with this fake encoder).
    assert np.mean(rho["non_overlapping"] > rho["all"]) > 0.25


def test_heldout_banks_apply_the_scope() -> None:
    rng = np.random.default_rng(12)
    emb = rng.normal(size=(40, 6)).astype(np.float32)
    folds = np.repeat(np.arange(4), 10)
    groups = np.repeat(np.arange(8), 5)
    positions = np.tile(np.arange(5), 8)
    s = settings(rho_scope="other_groups")
    got = heldout_scores(emb, folds, FRAMING, s, groups=groups, positions=positions)
    want = np.concatenate(
        [
            MemoryBank(
                emb[folds != f],
                groups=groups[folds != f],
                positions=positions[folds != f],
                exclusion_windows=WHOLE_GROUP,
            ).score(emb[folds == f], "density")
            for f in range(4)
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Without groups there is nothing to exclude: the old behaviour.
    old = heldout_scores(emb, folds, FRAMING, s)
    np.testing.assert_allclose(old, heldout_scores(emb, folds, FRAMING, settings(rho_scope="all")))
    assert not np.allclose(got, old)


def test_single_long_recording_other_groups_uses_stretches() -> None:
    rng = np.random.default_rng(13)
    clip = [Clip("long.wav", machine(60.0, rng))]
    bundle = calibrate(
        clip, FakeEncoder(), FRAMING, settings(rho_scope="other_groups"), progress=False
    )
    assert bundle.normal_stats["fold_scheme"] == "contiguous"
    assert bundle.groups is not None
    assert sorted(set(bundle.groups.tolist())) == list(range(10))  # 2 stretches per fold
    assert np.isfinite(bundle.threshold)
    # Two folds still leave two stretches in each held-out bank.
    two = calibrate(
        clip, FakeEncoder(), FRAMING, settings(rho_scope="other_groups", folds=2), progress=False
    )
    assert np.isfinite(two.threshold)
    # A held-out bank (59 windows, 2 stretches of about 30) cannot give 40 other-stretch
    # neighbours: the error names the fold and the scope.
    with pytest.raises(CalibrationError, match=r"fold 0: .*k=40.*'other_groups'"):
        calibrate(
            clip,
            FakeEncoder(),
            FRAMING,
            settings(rho_scope="other_groups", folds=2, k=40),
            progress=False,
        )


def test_rho_scope_setting_is_checked_and_taken_from_the_config() -> None:
    with pytest.raises(ConfigError, match=r"rho_scope: unknown rho scope 'nearest'"):
        settings(rho_scope="nearest")
    cfg = CalibrationConfig(rho_scope="other_groups")
    assert (cfg.rho_scope, FRAMING.exclusion_windows(cfg.rho_scope)) == (
        "other_groups",
        WHOLE_GROUP,
    )
    assert CalibrationConfig().rho_scope == "all"
