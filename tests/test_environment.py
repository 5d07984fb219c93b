"""environment_changed: the sound around the machine no longer resembles calibration.

Generated audio only: a synthetic machine (`edge_asd_dev.synth`) in a quiet pink noise at
calibration, then louder and different noises, gain drift, stops and faults through the
daemon's own `MachinePipeline` with the bundled `logmel-stats` encoder (fast, and the monitor
does not depend on the encoder).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import load_bundle, save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.detection.detector import DetectorSettings
from edge_asd.detection.environment import (
    BLOCK_SECONDS,
    MIN_CHANGE_DB,
    EnvironmentMonitor,
    EnvironmentProfile,
    calibration_spread,
    clip_blocks,
    environment_profile,
)
from edge_asd.detection.learn import learn
from edge_asd.detection.pipeline import MachinePipeline, RecordingResult
from edge_asd.detection.running import RunningSettings
from edge_asd.detection.states import EventType, MachineState
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd_dev.synth import apply_fault, machine_sound, mix_at_snr

CALIBRATION_SNR_DB = 20.0
"""The calibration's room noise: quiet pink noise 20 dB under the machine..."""
CALIBRATION_VARIATION_DB = ((-3.0, 17.0), (-1.5, 20.0), (0.0, 23.0), (1.5, 20.0), (3.0, 17.0))
"""...give or take: (input gain, SNR) of the calibration recordings, the variation calibration
heard."""
LOUD_SNR_DB = -10.0
"""The new noise: ten times the machine's power."""
LOUD_BAND_HZ = (500.0, 8_000.0)
"""The new noise's band (flat inside, nothing outside)."""
HOP = 8_000


def _noise(seconds: float, seed: int, band_hz: tuple[float, float] | None = None) -> np.ndarray:
    """Unit-power noise: pink, or flat within `band_hz`."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE_HZ)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
    if band_hz is None:
        spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    else:
        spectrum[(freqs < band_hz[0]) | (freqs >= band_hz[1])] = 0.0
    x = np.fft.irfft(spectrum, n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def _running(
    seconds: float, seed: int, snr_db: float = CALIBRATION_SNR_DB, gain_db: float = 0.0
) -> np.ndarray:
    """The machine in the calibration's room noise (every seed a fresh stretch of both)."""
    machine = machine_sound(seconds, rng=np.random.default_rng(seed))
    mixed = mix_at_snr(machine, _noise(seconds, 1_000 + seed), snr_db)
    return (mixed * 10 ** (gain_db / 20.0)).astype(np.float32)


def _loud(seconds: float, seed: int) -> np.ndarray:
    """The machine with a much louder, different noise next to it."""
    machine = machine_sound(seconds, rng=np.random.default_rng(seed))
    return mix_at_snr(machine, _noise(seconds, 2_000 + seed, LOUD_BAND_HZ), LOUD_SNR_DB)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(resolve_model("logmel-stats"))


@pytest.fixture(scope="module")
def bundle(encoder: Encoder):  # type: ignore[no-untyped-def]
    clips = [
        Clip(f"n{i}.wav", _running(20.0, i, snr_db=snr, gain_db=gain))
        for i, (gain, snr) in enumerate([*CALIBRATION_VARIATION_DB, (0.0, CALIBRATION_SNR_DB)])
    ]
    return calibrate(clips, encoder, Framing.from_seconds(), progress=False)


def _pipeline(bundle, encoder: Encoder, **kwargs) -> MachinePipeline:  # type: ignore[no-untyped-def]
    assert bundle.evidence is not None
    return MachinePipeline.from_bundle(
        bundle,
        encoder,
        detector=DetectorSettings(threshold=bundle.evidence.reference, evidence=bundle.evidence),
        running=RunningSettings(),
        **kwargs,
    )


def _states(result: RecordingResult) -> list[tuple[MachineState, float]]:
    return [(change.state, change.time) for change in result.step.state_changes]


def _alarm_open(result: RecordingResult, at: float) -> bool:
    """Is an event open just after `at` (a start at or before it, its end after it)?"""
    opened: dict[str, float] = {}
    for t in result.step.transitions:
        if t.kind is EventType.START and t.ts <= at:
            opened[t.event_id] = t.ts
        elif t.kind is EventType.END and t.ts <= at:
            opened.pop(t.event_id, None)
    return bool(opened)


# ------------------------------------------------------------------ profile and monitor


def test_calibration_stores_one_block_per_ten_seconds(bundle) -> None:  # type: ignore[no-untyped-def]
    profile = bundle.environment
    assert profile is not None
    assert profile.blocks_db.shape == (6 * 2, profile.edges_hz.shape[0])
    # Each recording's blocks are compared with the others': the spread is the gain and noise
    # variation calibration heard (a few dB), the margin that plus 3 dB.
    assert 0.5 < profile.spread_db < 4.0
    assert profile.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert profile.enter_db == pytest.approx(profile.spread_db + MIN_CHANGE_DB)
    assert profile.release_db < profile.enter_db


def test_profile_round_trips_and_survives_a_bundle_save(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    profile = bundle.environment
    again = EnvironmentProfile.from_dict(profile.to_dict())
    np.testing.assert_allclose(again.blocks_db, profile.blocks_db, atol=0.01)
    assert again.spread_db == pytest.approx(profile.spread_db, abs=1e-3)
    loaded = load_bundle(save_bundle(bundle, tmp_path / "b"))
    assert loaded.environment is not None
    np.testing.assert_allclose(loaded.environment.blocks_db, profile.blocks_db, atol=0.01)


def test_bad_profiles_are_refused() -> None:
    edges = np.array([[100.0, 200.0], [200.0, 400.0]])
    with pytest.raises(ValueError, match="do not match"):
        EnvironmentProfile(edges, np.zeros((3, 5)), 0.0)
    with pytest.raises(ValueError, match="finite"):
        EnvironmentProfile(edges, np.full((1, 2), np.nan), 0.0)
    with pytest.raises(ValueError, match="long enough"):
        environment_profile([np.zeros(100, dtype=np.float32)])


def test_spread_is_the_worst_nearest_independent_block() -> None:
    blocks = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [5.5, 5.5, 5.5]])
    # One recording each: block 2's nearest other is block 3 (0.5 dB), block 1's is block 0.
    assert calibration_spread(blocks, [0, 1, 2, 3]) == pytest.approx(1.0)
    # Blocks 2 and 3 of one recording are near-copies: block 3 is 4.5 dB from the others.
    assert calibration_spread(blocks, [0, 1, 2, 2]) == pytest.approx(4.5)
    # One recording: neighbours in time are left out, block 0's nearest is block 2.
    assert calibration_spread(blocks) == pytest.approx(5.0)
    assert calibration_spread(blocks[:1]) == 0.0


def test_a_short_clip_still_gives_a_block_and_a_short_tail_none() -> None:
    rate = SAMPLE_RATE_HZ
    block = round(BLOCK_SECONDS * rate)
    assert clip_blocks([_running(3.0, 1)])[0].shape[0] == 1
    assert clip_blocks([_running(BLOCK_SECONDS + 2.0, 1)])[0].shape[0] == 1  # 2 s tail: out
    blocks, groups = clip_blocks([np.zeros(2 * block, dtype=np.float32), _running(3.0, 1)])
    assert blocks.shape[0] == 3 and groups.tolist() == [0, 0, 1]


def test_monitor_names_the_bands_of_the_new_noise(bundle) -> None:  # type: ignore[no-untyped-def]
    monitor = EnvironmentMonitor(bundle.environment, HOP)
    decisions = []
    windows = np.lib.stride_tricks.sliding_window_view(_loud(60.0, 40), SAMPLE_RATE_HZ)[::HOP]
    for window in windows:
        decisions.append(monitor.update(window))
    assert decisions.count(True) == 1 and False not in decisions
    summary = monitor.summary
    assert summary is not None and summary.change_db > summary.margin_db
    assert summary.level_change_db > 6.0  # ten times the power, mostly added
    assert len(summary.bands) == 3
    for band in summary.bands:
        # The bands named are the noise's, and they got louder.
        assert LOUD_BAND_HZ[0] * 0.89 <= band.low_hz and band.high_hz <= LOUD_BAND_HZ[1] * 1.12
        assert band.change_db > summary.margin_db
    data = summary.to_dict()
    assert set(data) == {"level_change_db", "change_db", "margin_db", "bands"}
    assert data["bands"][0]["hz"][0] < data["bands"][0]["hz"][1]


# ------------------------------------------------------------------ through the pipeline


def test_a_louder_different_noise_is_environment_changed_and_clears(bundle, encoder) -> None:  # type: ignore[no-untyped-def]
    stream = np.concatenate([_running(40.0, 50), _loud(90.0, 51), _running(60.0, 52)])
    result = _pipeline(bundle, encoder).run_recording(stream)
    changes = result.step.environment
    # Exactly one change and one return: no flapping.
    assert [c.changed for c in changes] == [True, False]
    changed_at, back_at = changes[0].time, changes[1].time
    assert 40.0 + 20.0 <= changed_at <= 40.0 + 40.0  # sustained: tens of seconds, not at once
    assert 130.0 + 20.0 <= back_at <= 130.0 + 40.0
    summary = changes[0].summary
    assert summary is not None
    assert all(LOUD_BAND_HZ[0] * 0.89 <= b.low_hz < LOUD_BAND_HZ[1] for b in summary.bands)
    states = _states(result)
    assert MachineState.ENVIRONMENT_CHANGED in [s for s, _ in states]
    assert states[-1][0] is MachineState.NORMAL and states[-1][1] == pytest.approx(back_at)
    # While the surroundings are changed, the state says so whenever no alarm is open: an open
    # alarm stays `anomalous` and carries the surroundings as its context.
    for state, at in states:
        if changed_at <= at < back_at:
            open_alarm = _alarm_open(result, at)
            assert state is (
                MachineState.ANOMALOUS if open_alarm else MachineState.ENVIRONMENT_CHANGED
            ), (state, at)
    late = [t for t in result.step.transitions if changed_at <= t.ts <= back_at]
    assert all(t.environment is not None for t in late)
    early = [t for t in result.step.transitions if t.ts < changed_at]
    assert all(t.environment is None for t in early)


def test_normal_variation_of_the_calibrated_condition_never_triggers_it(bundle, encoder) -> None:  # type: ignore[no-untyped-def]
    # Fresh stretches of the machine and its room noise, with the gain and noise level moving
    # within what calibration heard.
    parts = [
        _running(40.0, 60),
        _running(40.0, 61, snr_db=17.5, gain_db=2.5),
        _running(40.0, 62, snr_db=22.0, gain_db=-2.0),
        _running(40.0, 63, snr_db=19.0, gain_db=-3.0),
        _running(40.0, 64, snr_db=23.0, gain_db=1.0),
    ]
    result = _pipeline(bundle, encoder).run_recording(np.concatenate(parts))
    assert result.step.environment == []
    assert MachineState.ENVIRONMENT_CHANGED not in [s for s, _ in _states(result)]


def test_a_stop_is_idle_not_a_changed_environment(bundle, encoder) -> None:  # type: ignore[no-untyped-def]
    stop = np.zeros(60 * SAMPLE_RATE_HZ, dtype=np.float32)
    result = _pipeline(bundle, encoder).run_recording(
        np.concatenate([_running(30.0, 70), stop, _running(30.0, 71)])
    )
    assert [s for s, _ in _states(result)] == [
        MachineState.NORMAL,
        MachineState.IDLE,
        MachineState.NORMAL,
    ]
    assert result.step.environment == []


def test_a_clear_fault_raises_an_event_not_a_changed_environment(bundle, encoder) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    fault = apply_fault(_running(60.0, 81), "whine", rng=rng, level_db=-5.0)
    result = _pipeline(bundle, encoder).run_recording(np.concatenate([_running(30.0, 80), fault]))
    starts = [t for t in result.step.transitions if t.kind is EventType.START]
    assert starts and all(t.environment is None for t in result.step.transitions)
    assert result.step.environment == []
    assert MachineState.ANOMALOUS in [s for s, _ in _states(result)]


def test_the_decision_stands_through_an_audio_gap(bundle, encoder) -> None:  # type: ignore[no-untyped-def]
    pipeline = _pipeline(bundle, encoder)
    loud = _loud(60.0, 90)
    step = pipeline.push(loud, 60.0)
    assert [c.changed for c in step.environment] == [True]
    pipeline.set_audio(False, 61.0)
    pipeline.reset()
    back = pipeline.set_audio(True, 70.0)
    # Still the same surroundings as far as anyone knows: no flap to normal and back.
    assert [c.state for c in back.state_changes] == [MachineState.ENVIRONMENT_CHANGED]


def test_learning_the_new_condition_clears_it(bundle, encoder) -> None:  # type: ignore[no-untyped-def]
    learned, _ = learn(
        bundle,
        [Clip("loud.wav", _loud(60.0, 100))],
        encoder,
        force=True,
        progress=False,
    )
    assert learned.environment is not None
    assert learned.environment.blocks_db.shape[0] == bundle.environment.blocks_db.shape[0] + 6
    assert learned.environment.groups.tolist()[-6:] == [6] * 6
    result = _pipeline(learned, encoder).run_recording(_loud(90.0, 101))
    assert result.step.environment == []


def test_a_bundle_without_the_profile_runs_without_the_monitor(
    bundle,  # type: ignore[no-untyped-def]
    encoder: Encoder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import dataclasses

    old = dataclasses.replace(bundle, environment=None, bundle_id="old-bundle")
    with caplog.at_level(logging.INFO, logger="edge_asd.detection.pipeline"):
        first = _pipeline(old, encoder).run_recording(_loud(60.0, 110))
        _pipeline(old, encoder).run_recording(_loud(20.0, 111))
    assert first.step.environment == []
    logged = [r for r in caplog.records if "no environment profile" in r.getMessage()]
    assert len(logged) == 1  # once, not per pipeline


def test_the_monitor_can_be_switched_off(bundle, encoder) -> None:  # type: ignore[no-untyped-def]
    result = _pipeline(bundle, encoder, detect_environment=False).run_recording(_loud(60.0, 120))
    assert result.step.environment == []
