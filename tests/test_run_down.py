"""A machine switched off runs down before it is quiet: not a fault (pipeline._hold_start).

The run-down's windows are quieter than any calibrated running window and sound unlike normal
before they are quiet enough to look stopped. An event that starts on such a window is held
until the machine is heard running on, and dropped when it stops instead.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import Bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.detection.detector import DetectorSettings
from edge_asd.detection.pipeline import MachinePipeline, RecordingResult
from edge_asd.detection.running import RunningSettings
from edge_asd.detection.states import EventType, MachineState
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd_dev.synth import apply_fault, machine_sound, mix_at_snr

RUNNING_SECONDS = 30.0
QUIET_DB = -8.0
"""The run-down's level: under the calibration's quietest windows (its gains vary by +-1.5 dB),
above the level that looks stopped (10 dB under them)."""
QUIET_SECONDS = 3.0


def _pink(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE_HZ)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ), 20.0))
    return np.fft.irfft(spectrum, n).astype(np.float32)


def _machine(seconds: float, seed: int, gain_db: float = 0.0) -> np.ndarray:
    """The machine in quiet room noise (20 dB under it), at an input gain."""
    x = mix_at_snr(
        machine_sound(seconds, rng=np.random.default_rng(seed)), _pink(seconds, seed), 20
    )
    return (x * 10 ** (gain_db / 20.0)).astype(np.float32)


def _quiet_whine(seconds: float, seed: int) -> np.ndarray:
    """The machine quieter than it ever ran, with a whine it never had: anomalous and quiet."""
    loud = apply_fault(
        _machine(seconds, seed), "whine", rng=np.random.default_rng(seed), level_db=0
    )
    return (loud * 10 ** (QUIET_DB / 20.0)).astype(np.float32)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(resolve_model("logmel-stats"))


@pytest.fixture(scope="module")
def bundle(encoder: Encoder) -> Bundle:
    gains = (-1.5, -0.75, 0.0, 0.0, 0.75, 1.5)
    clips = [Clip(f"n{i}.wav", _machine(20.0, i, gain)) for i, gain in enumerate(gains)]
    return calibrate(clips, encoder, Framing.from_seconds(), progress=False)


def _run(bundle: Bundle, encoder: Encoder, audio: np.ndarray) -> RecordingResult:
    assert bundle.evidence is not None and bundle.running_profile is not None
    pipeline = MachinePipeline.from_bundle(
        bundle,
        encoder,
        detector=DetectorSettings(threshold=bundle.evidence.reference, evidence=bundle.evidence),
        running=RunningSettings(),
    )
    return pipeline.run_recording(audio)


def _starts(result: RecordingResult) -> list[float]:
    return [t.ts for t in result.step.transitions if t.kind is EventType.START]


def test_an_anomaly_that_runs_on_at_a_quiet_level_is_reported_from_its_start(
    bundle: Bundle, encoder: Encoder
) -> None:
    audio = np.concatenate([_machine(RUNNING_SECONDS, 20), _quiet_whine(30.0, 11)])
    result = _run(bundle, encoder, audio)
    starts = _starts(result)
    # The quiet whine alarms within the seconds a run-down would last (so the next test's
    # silence is what keeps that one quiet), and it is reported, with its own start time.
    assert starts and RUNNING_SECONDS <= starts[0] < RUNNING_SECONDS + QUIET_SECONDS
    states = [c.state for c in result.step.state_changes]
    assert MachineState.ANOMALOUS in states and MachineState.IDLE not in states


def _run_down(seconds: float, seed: int) -> np.ndarray:
    """The faulty machine switched off: its level falls from QUIET_DB to -40 dB (linear in dB)
    over `seconds`, as a motor's sound dies away."""
    gain_db = np.linspace(QUIET_DB, -40.0, round(seconds * SAMPLE_RATE_HZ), dtype=np.float32)
    return (_quiet_whine(seconds, seed) * 10 ** ((gain_db - QUIET_DB) / 20.0)).astype(np.float32)


def test_a_run_down_into_a_stop_raises_no_event(bundle: Bundle, encoder: Encoder) -> None:
    stop = np.zeros(30 * SAMPLE_RATE_HZ, dtype=np.float32)
    audio = np.concatenate(
        [_machine(RUNNING_SECONDS, 20), _quiet_whine(1.0, 11), _run_down(QUIET_SECONDS, 11), stop]
    )
    result = _run(bundle, encoder, audio)
    assert result.step.transitions == []
    assert [c.state for c in result.step.state_changes] == [MachineState.NORMAL, MachineState.IDLE]


def test_a_fault_at_the_running_level_starts_at_once(bundle: Bundle, encoder: Encoder) -> None:
    fault = apply_fault(_machine(30.0, 12), "whine", rng=np.random.default_rng(12), level_db=0)
    stop = np.zeros(30 * SAMPLE_RATE_HZ, dtype=np.float32)
    result = _run(bundle, encoder, np.concatenate([_machine(RUNNING_SECONDS, 20), fault, stop]))
    starts = _starts(result)
    assert starts and starts[0] < RUNNING_SECONDS + QUIET_SECONDS
    # Reported, then ended by the stop (an event is never left open by a machine stopping).
    kinds = [t.kind for t in result.step.transitions]
    assert kinds[0] is EventType.START and kinds[-1] is EventType.END
    assert [c.state for c in result.step.state_changes][-1] is MachineState.IDLE
