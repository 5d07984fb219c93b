"""Machine stops, `edge-asd replay` and `edge-asd learn`, through the CLI as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_asd.audio.files import write_wav
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import load_bundle
from edge_asd_dev.synth import apply_fault, machine_sound, mix_at_snr

TIMEOUT = 240
MODEL = "logmel-stats"
"""Built from code, fast: the pipeline's behaviour does not depend on the encoder."""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_asd", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _machine(seconds: float, seed: int, fundamental: float = 50.0) -> np.ndarray:
    return machine_sound(seconds, rng=np.random.default_rng(seed), fundamental_hz=fundamental)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    normal = root / "normal"
    normal.mkdir()
    for i in range(6):
        write_wav(normal / f"n{i}.wav", _machine(20.0, i), SAMPLE_RATE_HZ)
    bundle = root / "bundle"
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump({"model": MODEL, "machines": [{"name": "press-1", "bundle": str(bundle)}]})
    )
    result = _cli(
        "calibrate", "--config", str(config), "--from-dir", str(normal), "--out", str(bundle)
    )
    assert result.returncode == 0, result.stderr
    return {"root": root, "config": config, "bundle": bundle, "normal": normal}


def _replay(config: Path, *files: Path) -> list[dict]:
    result = _cli("replay", "--config", str(config), *map(str, files))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return lines


def test_calibration_writes_a_report_with_the_budget(setup: dict[str, Path]) -> None:
    report = json.loads((setup["bundle"] / "report.json").read_text())
    decision = report["decision"]
    assert decision["target_false_alarms_per_week"] == 1.0
    assert decision["settings"]["alarm_level"] > 0
    assert len(report["files"]) == 6 and all(not f["silent"] for f in report["files"])
    assert report["windows"]["total"] == load_bundle(setup["bundle"]).size
    # 2 minutes cannot promise a week: the report says how much more to record.
    assert any("record at least" in w for w in report["warnings"])


def test_a_stop_is_idle_not_a_fault_and_a_persistent_fault_alarms(
    setup: dict[str, Path],
) -> None:
    rng = np.random.default_rng(11)
    run = _machine(20.0, 20)
    stop = np.zeros(10 * SAMPLE_RATE_HZ, dtype=np.float32)
    restart = _machine(20.0, 21)
    fault = apply_fault(_machine(20.0, 22), "whine", rng=rng, level_db=-10.0)
    stream = setup["root"] / "stream.wav"
    write_wav(
        stream, np.concatenate([run, stop, restart, fault]).astype(np.float32), SAMPLE_RATE_HZ
    )
    lines = _replay(setup["config"], stream)
    states = [(line["state"], line["offset_seconds"]) for line in lines if line["kind"] == "state"]
    events = [line for line in lines if line["kind"] == "event"]
    assert [s for s, _ in states][:3] == ["normal", "idle", "normal"]
    idle_at = states[1][1]
    assert 20.0 <= idle_at <= 23.5  # within a few windows of the stop
    starts = [e for e in events if e["type"] == "start"]
    assert len(starts) == 1, events  # the stop raised nothing; the fault did
    assert 50.0 <= starts[0]["offset_seconds"] <= 60.0
    assert all(line["file"] == str(stream) for line in lines)


def test_replay_reports_a_bad_file_and_runs_the_others(setup: dict[str, Path]) -> None:
    bad = setup["root"] / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    good = setup["normal"] / "n0.wav"
    result = _cli("replay", "--config", str(setup["config"]), str(bad), str(good))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["kind"] == "error" and lines[0]["file"] == str(bad)
    assert any(line.get("file") == str(good) and line["kind"] == "state" for line in lines)
    assert result.returncode == 1


def test_learn_adds_unheard_normal_and_refuses_a_fault(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    result = _cli(
        "calibrate",
        "--config",
        str(setup["config"]),
        "--from-dir",
        str(setup["normal"]),
        "--out",
        str(bundle),
    )
    assert result.returncode == 0, result.stderr
    before = load_bundle(bundle)
    # Another operating condition (a higher shaft speed) that calibration never heard.
    new = tmp_path / "new"
    new.mkdir()
    for i in range(2):
        write_wav(new / f"fast{i}.wav", _machine(15.0, 40 + i, fundamental=53.0), SAMPLE_RATE_HZ)
    learned = _cli("learn", "--bundle", str(bundle), str(new))
    assert learned.returncode == 0, learned.stderr
    after = load_bundle(bundle)
    assert after.size > before.size and after.bundle_id != before.bundle_id
    assert after.report is not None and after.report["learned"]
    # A recording that is mostly a loud fault is refused, and the bundle is untouched.
    faulty = tmp_path / "faulty.wav"
    rng = np.random.default_rng(3)
    write_wav(
        faulty, apply_fault(_machine(15.0, 50), "rub_bursts", rng=rng, level_db=0.0), SAMPLE_RATE_HZ
    )
    refused = _cli("learn", "--bundle", str(bundle), str(faulty))
    assert refused.returncode == 2
    assert "fault" in refused.stderr and "--force" in refused.stderr
    assert load_bundle(bundle).bundle_id == after.bundle_id


def test_learn_refuses_a_bundle_of_another_model(setup: dict[str, Path]) -> None:
    result = _cli(
        "learn",
        "--bundle",
        str(setup["bundle"]),
        "--model",
        "yamnet-port",
        str(setup["normal"] / "n0.wav"),
    )
    assert result.returncode == 2
    assert "recalibrate" in result.stderr or "model" in result.stderr


def test_replay_reports_a_changed_environment_and_its_return(setup: dict[str, Path]) -> None:
    # A loud broadband noise (ten times the machine's power, 500 Hz-8 kHz) next to the machine
    # for 80 s, between stretches of the machine as calibrated.
    rng = np.random.default_rng(12)
    n = 80 * SAMPLE_RATE_HZ
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
    spectrum[freqs < 500.0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    loud = mix_at_snr(_machine(80.0, 31), noise, -10.0)
    stream = setup["root"] / "loud.wav"
    write_wav(
        stream,
        np.concatenate([_machine(30.0, 30), loud, _machine(60.0, 32)]).astype(np.float32),
        SAMPLE_RATE_HZ,
    )
    lines = _replay(setup["config"], stream)
    environment = [line for line in lines if line["kind"] == "environment"]
    assert [line["changed"] for line in environment] == [True, False]
    changed, back = environment
    assert 30.0 + 20.0 <= changed["offset_seconds"] <= 30.0 + 40.0
    assert changed["level_change_db"] > 6.0 and changed["change_db"] > changed["margin_db"]
    assert all(band["hz"][0] >= 445 and band["change_db"] > 0 for band in changed["bands"])
    states = [line["state"] for line in lines if line["kind"] == "state"]
    assert "environment_changed" in states and states[-1] == "normal"
    assert back["offset_seconds"] > 110.0
