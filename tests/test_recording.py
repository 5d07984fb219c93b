"""`calibrate --record`: real PortAudio capture from the PulseAudio virtual microphone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_asd.audio.recording import RecordingError, record
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd_dev.synth import machine_sound
from tests.pulse_fixture import VirtualMic

pytestmark = pytest.mark.integration
TONE_HZ = 1000.0


def test_record_returns_the_requested_length_of_audio(virtual_mic: VirtualMic) -> None:
    t = np.arange(4 * SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    virtual_mic.play(0.3 * np.sin(2 * np.pi * TONE_HZ * t))
    samples = record(virtual_mic.device, channel=0, seconds=1.5, progress=False)
    assert samples.shape == (round(1.5 * SAMPLE_RATE_HZ),) and samples.dtype == np.float32
    segment = samples[-SAMPLE_RATE_HZ:]
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * SAMPLE_RATE_HZ / len(segment)
    assert abs(peak_hz - TONE_HZ) < 5


def test_record_from_a_missing_device_names_it(virtual_mic: VirtualMic) -> None:
    with pytest.raises(RecordingError, match="no-such-mic"):
        record("no-such-mic", channel=0, seconds=1.0, progress=False)


def test_calibrate_record_cli(tmp_path: Path) -> None:
    mic = VirtualMic()
    mic.start()
    try:
        rng = np.random.default_rng(2)
        mic.set_source(_looping(machine_sound(30.0, rng=rng)))
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "machines": [
                        {"name": "m", "device": mic.device, "bundle": str(tmp_path / "b")}
                    ],
                    "calibration": {"min_windows": 10},
                }
            )
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_asd",
                "calibrate",
                "--config",
                str(config),
                "--record",
                "8",
                "--out",
                str(tmp_path / "b"),
            ],
            env={**os.environ, **mic.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        mic.stop()
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr  # progress bars only on a terminal, not in a pipe
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["threshold"] > 0
    assert any("recording from" in s for s in meta["sources"])


def _looping(signal: np.ndarray):  # type: ignore[no-untyped-def]
    position = 0

    def provide(frames: int) -> np.ndarray:
        nonlocal position
        start = position % (len(signal) - frames)
        position += frames
        return signal[start : start + frames]

    return provide
