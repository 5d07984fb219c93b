"""Views (detection.views) and their fusion (detection.fusion): each view hears the fault it is
for, bad input is skipped with a warning, one noisy view cannot run away with the score, and
`views: [embedding]` and old bundles score exactly as before."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import load_bundle, save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.detection.fusion import (
    Z_MARGIN,
    Z_MAX,
    FeatureScaler,
    ViewNorm,
    choose_views,
    fuse,
)
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.pipeline import MachinePipeline
from edge_asd.detection.views import (
    ViewUnavailableError,
    available_views,
    compute_views,
)
from edge_asd.detection.vocabulary import EMBEDDING_VIEW, FEATURE_VIEWS
from edge_asd.detection.windowing import frame_signal
from edge_asd_dev import synth
from tests.test_calibration import FakeEncoder, settings

WINDOW = SAMPLE_RATE_HZ
HOP = SAMPLE_RATE_HZ // 2
CLIP_SECONDS = 5.0
N_TRAIN = 8
N_TEST = 6
MIN_AUC = 0.9


def _features(clips: Sequence[np.ndarray], view: str) -> list[np.ndarray]:
    return [compute_views(frame_signal(x, WINDOW, HOP), [view])[view] for x in clips]


def clip_auc(
    view: str,
    train: Sequence[np.ndarray],
    normal: Sequence[np.ndarray],
    faulty: Sequence[np.ndarray],
) -> float:
    """AUC of clip scores (mean window score against a bank of `train`'s windows, density
    kNN on standardised features: what a view's bank does in a bundle)."""
    features = np.concatenate(_features(train, view))
    scaler = FeatureScaler.fit(features)
    bank = MemoryBank(scaler.transform(features), k=1)

    def scores(clips: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(
            [bank.score(scaler.transform(f), "density").mean() for f in _features(clips, view)]
        )

    sn, sf = scores(normal), scores(faulty)
    return float(np.mean(sf[:, np.newaxis] > sn[np.newaxis, :]))


def machines(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [synth.machine_sound(CLIP_SECONDS, rng=rng) for _ in range(n)]


@pytest.fixture(scope="module")
def machine_sets() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return machines(N_TRAIN, rng), machines(N_TEST, rng)


def faulty(fault: str, level_db: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synth.apply_fault(x, fault, rng=rng, level_db=level_db) for x in machines(N_TEST, rng)]


def test_every_view_is_finite_and_batch_independent() -> None:
    rng = np.random.default_rng(1)
    windows = frame_signal(synth.machine_sound(3.0, rng=rng), WINDOW, HOP)
    together = compute_views(windows, FEATURE_VIEWS)
    for name in FEATURE_VIEWS:
        assert together[name].shape[0] == windows.shape[0]
        assert np.all(np.isfinite(together[name]))
        one = compute_views(windows[2:3], [name])[name]
        np.testing.assert_allclose(one[0], together[name][2], rtol=1e-4, atol=1e-4)
    silent = compute_views(np.zeros((2, WINDOW), dtype=np.float32), FEATURE_VIEWS)
    assert all(np.all(np.isfinite(v)) for v in silent.values())


@pytest.mark.parametrize(
    ("view", "fault", "level_db"),
    [
        ("tonal", "whine", -15.0),
        ("modulation", "imbalance_modulation", -15.0),
        ("modulation", "bearing_impacts", -10.0),
        ("transient", "rub_bursts", -15.0),
        ("transient", "imbalance_modulation", -15.0),
        ("bands", "rub_bursts", -15.0),
        ("subframes", "rub_bursts", -15.0),
    ],
)
def test_each_view_hears_its_fault(
    machine_sets: tuple[list[np.ndarray], list[np.ndarray]],
    view: str,
    fault: str,
    level_db: float,
) -> None:
    train, normal = machine_sets
    assert clip_auc(view, train, normal, faulty(fault, level_db, seed=7)) >= MIN_AUC


def test_transient_hears_a_valve_click_bounce() -> None:
    """The fault the embedding missed (docs/results.md, breadth): a 20-40 ms bounce."""

    def valves(seed: int, fault: str = "normal", n: int = N_TEST) -> list[np.ndarray]:
        return [
            synth.valve_sound(CLIP_SECONDS, rng=np.random.default_rng(seed + i), fault=fault)[0]
            for i in range(n)
        ]

    auc = clip_auc("transient", valves(100, n=N_TRAIN), valves(200), valves(300, "double"))
    assert auc >= MIN_AUC


def test_views_that_need_longer_windows_say_why() -> None:
    reasons = available_views(SAMPLE_RATE_HZ // 4, FEATURE_VIEWS)
    assert reasons["bands"] is None and reasons["transient"] is None
    assert reasons["modulation"] is not None and "0.5 s" in reasons["modulation"]
    assert reasons["subframes"] is not None
    with pytest.raises(ViewUnavailableError):
        compute_views(np.zeros((1, 100), dtype=np.float32), ["bands"])


# --- fusion -------------------------------------------------------------------------------------


def test_fusion_is_bounded_when_one_view_is_noisy() -> None:
    norm = ViewNorm(centre=0.0, spread=0.5, weight=1.0)
    norms = {EMBEDDING_VIEW: norm, "bands": norm, "tonal": norm}
    normal = np.ones(4)
    crazy = np.array([1.0, 1e3, 1e9, 1e30])
    fused = fuse({EMBEDDING_VIEW: normal, "bands": crazy, "tonal": normal}, norms)
    assert np.all(np.isfinite(fused))
    # A view can add at most weight x (Z_MAX - Z_MARGIN) to the log score.
    assert float(fused.max()) <= np.exp(Z_MAX - Z_MARGIN) * 1.0001
    assert float(fused[0]) == pytest.approx(1.0)
    # The embedding (the base) still ranks windows the same when the views are quiet.
    base = fuse(
        {EMBEDDING_VIEW: np.array([1.0, 2.0, 3.0]), "bands": np.ones(3), "tonal": np.ones(3)},
        norms,
    )
    assert np.all(np.diff(base) > 0)


def test_auto_drops_a_view_with_a_heavy_held_out_tail() -> None:
    rng = np.random.default_rng(3)
    n = 400
    folds = np.arange(n) % 5
    steady = np.exp(rng.normal(0.0, 0.2, n))
    bursty = steady.copy()
    bursty[rng.choice(n, 20, replace=False)] *= 50.0  # noise bursts on normal audio
    # Two folds' recordings sit far from the rest (0.8 in log score) with little noise.
    offset = np.select([folds == 0, folds == 1], [0.8, -0.8], 0.0)
    shifted = np.exp(rng.normal(0.0, 0.1, n) + offset)
    decisions = {
        d.name: d
        for d in choose_views(
            {EMBEDDING_VIEW: steady, "bands": steady, "transient": bursty, "tonal": shifted},
            folds,
            auto=True,
            skipped={"modulation": "modulation: too short; skipped"},
        )
    }
    assert decisions[EMBEDDING_VIEW].used and decisions["bands"].used
    assert not decisions["transient"].used and "tail" in decisions["transient"].reason
    assert not decisions["tonal"].used and "folds" in decisions["tonal"].reason
    assert not decisions["modulation"].used and decisions["modulation"].warning
    explicit = choose_views({EMBEDDING_VIEW: steady, "transient": bursty}, folds, auto=False)
    assert all(d.used for d in explicit)


# --- calibration, bundles, pipeline -----------------------------------------------------------


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    rng = np.random.default_rng(11)
    return [Clip(f"n{i}.wav", synth.machine_sound(8.0, rng=rng)) for i in range(5)]


def _calibrate(clips: Sequence[Clip], views: object, **kwargs: object) -> object:
    return calibrate(
        clips,
        FakeEncoder(),
        Framing(WINDOW, HOP),
        settings(views=views, **kwargs),
        progress=False,
    )


def _scores(bundle: object, x: np.ndarray) -> np.ndarray:
    pipeline = MachinePipeline.from_bundle(bundle, FakeEncoder())  # type: ignore[arg-type]
    return pipeline.run_recording(x).scores


def test_embedding_only_reproduces_the_embedding_score(clips: list[Clip]) -> None:
    bundle = _calibrate(clips, ["embedding"])
    assert bundle.views is None  # type: ignore[attr-defined]
    x = synth.machine_sound(4.0, rng=np.random.default_rng(5))
    bank_scores = bundle.memory_bank().score(  # type: ignore[attr-defined]
        FakeEncoder().embed(frame_signal(x, WINDOW, HOP)), "density"
    )
    np.testing.assert_array_equal(_scores(bundle, x), bank_scores)


def test_auto_calibrates_reports_and_round_trips(clips: list[Clip], tmp_path: Path) -> None:
    bundle = _calibrate(clips, "auto")
    report = bundle.report["views"]  # type: ignore[attr-defined]
    names = [v["name"] for v in report["views"]]
    assert names[0] == EMBEDDING_VIEW and set(names) == {EMBEDDING_VIEW, *FEATURE_VIEWS}
    assert all("reason" in v and "weight" in v for v in report["views"])
    assert bundle.views is not None  # type: ignore[attr-defined]
    assert report["scored_on"] == "fused"
    save_bundle(bundle, tmp_path / "b")  # type: ignore[arg-type]
    loaded = load_bundle(tmp_path / "b")
    assert loaded.views is not None and loaded.views.names == bundle.views.names  # type: ignore[attr-defined]
    x = synth.apply_fault(
        synth.machine_sound(4.0, rng=np.random.default_rng(6)),
        "rub_bursts",
        rng=np.random.default_rng(6),
        level_db=-15.0,
    )
    np.testing.assert_array_equal(_scores(bundle, x), _scores(loaded, x))
    assert _scores(loaded, x).mean() > bundle.threshold  # type: ignore[attr-defined]
    on_disk = json.loads((tmp_path / "b" / "report.json").read_text())
    assert on_disk["views"]["requested"] == "auto"


def test_old_bundle_without_views_scores_as_before(clips: list[Clip], tmp_path: Path) -> None:
    """A bundle written the old way: no `views` key in bundle.json, no view arrays."""
    new = _calibrate(clips, ["embedding"])
    save_bundle(new, tmp_path / "new")  # type: ignore[arg-type]
    old_dir = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old_dir)
    meta = json.loads((old_dir / "bundle.json").read_text())
    del meta["views"]
    (old_dir / "bundle.json").write_text(json.dumps(meta))
    old = load_bundle(old_dir)
    assert old.views is None
    x = synth.machine_sound(4.0, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(_scores(old, x), _scores(new, x))


def test_views_that_cannot_be_computed_are_skipped_with_a_warning(clips: list[Clip]) -> None:
    """A 0.25 s window is too short for modulation and subframes; audio band-limited to 400 Hz
    (a low sample rate) leaves the tonal bands without content. Calibration goes on."""
    quarter = SAMPLE_RATE_HZ // 4
    bundle = calibrate(
        clips,
        FakeEncoder(window_samples=quarter),
        Framing(quarter, quarter // 2),
        settings(views="auto"),
        progress=False,
    )
    report = bundle.report
    assert report is not None
    skipped = {v["name"]: v for v in report["views"]["views"] if not v["used"]}
    assert {"modulation", "subframes"} <= set(skipped)
    assert any("modulation" in w for w in report["warnings"])
    band_limited = [Clip(c.name, _lowpass(c.samples, 400.0)) for c in clips]
    bundle = _calibrate(band_limited, ["embedding", "tonal", "transient"])
    report = bundle.report
    assert report is not None
    by_name = {v["name"]: v for v in report["views"]["views"]}
    assert not by_name["tonal"]["used"] and "no content above" in by_name["tonal"]["reason"]
    assert by_name["transient"]["used"]
    assert any("tonal" in w for w in report["warnings"])


def _lowpass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE_HZ) > cutoff_hz] = 0.0
    return np.fft.irfft(spectrum, n=x.size).astype(np.float32)


def test_feature_scaler_round_trip_keeps_constant_features() -> None:
    features = np.stack([np.arange(10.0), np.full(10, 3.0)], axis=1)
    scaler = FeatureScaler.fit(features)
    assert scaler.dead == 1
    again = FeatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(again.transform(features), scaler.transform(features))


def test_a_pure_tone_calibrates_to_finite_scores() -> None:
    """Near-identical windows: held-out spreads of almost nothing must not overflow the fused
    score (the daemon's recalibration met this)."""
    t = np.arange(int(8.0 * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    rng = np.random.default_rng(2)
    tone = [
        Clip(f"t{i}.wav", (0.1 * np.sin(2 * np.pi * 440.0 * t) + 1e-5 * rng.normal(size=t.size)))
        for i in range(5)
    ]
    bundle = _calibrate([Clip(c.name, c.samples.astype(np.float32)) for c in tone], "auto")
    assert np.isfinite(bundle.threshold) and bundle.threshold > 0  # type: ignore[attr-defined]
    loud = (0.5 * np.sin(2 * np.pi * 3000.0 * t[: 4 * SAMPLE_RATE_HZ])).astype(np.float32)
    assert np.all(np.isfinite(_scores(bundle, loud)))
