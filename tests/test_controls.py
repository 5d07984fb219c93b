"""Control commands: parsing and validation, state, expiry, persistence across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_asd.detection.states import MachineState
from edge_asd.service.clips import ClipRecorder
from edge_asd.service.controls import (
    DEFAULT_MUTE_SECONDS,
    MAX_MUTE_SECONDS,
    Ack,
    ControlError,
    Controls,
    LearnRequest,
    parse_learn,
    parse_mute,
    parse_switch,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_795_316_645.0

    def __call__(self) -> float:
        return self.now


def test_mute_payloads() -> None:
    assert parse_mute(b"ON") == DEFAULT_MUTE_SECONDS
    assert parse_mute(b"off") is None
    assert parse_mute(b'{"seconds": 90}') == 90.0
    assert parse_mute(b'{"seconds": 1.5}') == 1.5
    assert parse_mute(f'{{"seconds": {MAX_MUTE_SECONDS:.0f}}}'.encode()) == MAX_MUTE_SECONDS
    for payload, reason in (
        (b'{"seconds": 0}', "out of range"),
        (b'{"seconds": -5}', "out of range"),
        (b'{"seconds": 1e9}', "out of range"),
        (b'{"seconds": true}', "must be a number"),
        (b'{"seconds": "60"}', "must be a number"),
        (b'{"minutes": 5}', "unknown key"),
        (b"[60]", "malformed"),
        (b"{oops", "malformed"),
        (b"\xff\xfe", "UTF-8"),
        (b"maybe", "malformed"),
    ):
        with pytest.raises(ControlError, match=reason):
            parse_mute(payload)


def test_switch_and_learn_payloads() -> None:
    assert parse_switch(b"ON") is True
    assert parse_switch(b" off\n") is False
    with pytest.raises(ControlError, match="expected ON or OFF"):
        parse_switch(b"1")
    assert parse_learn(b"PRESS", last=True) == LearnRequest(None, True)
    assert parse_learn(b'{"force": false}', last=True) == LearnRequest(None, False)
    assert parse_learn(b"abc123", last=False) == LearnRequest("abc123", True)
    assert parse_learn(b'{"event_id": "abc", "force": false}', last=False) == LearnRequest(
        "abc", False
    )
    for payload in (b'{"event_id": "../../etc/passwd"}', b"", b'{"event_id": 5}', b"a/b"):
        with pytest.raises(ControlError, match="not an event id"):
            parse_learn(payload, last=False)
    with pytest.raises(ControlError, match="force"):
        parse_learn(b'{"event_id": "abc", "force": "yes"}', last=False)


def test_state_expiry_and_overrides() -> None:
    clock = Clock()
    controls = Controls(["a", "b"], clock=clock)
    assert controls.override("a") is None
    ack = controls.mute("a", 60)
    assert ack == Ack(True, None, "ON", clock.now + 60)
    assert controls.override("a") is MachineState.MUTED
    controls.set_detection("a", False)
    assert controls.override("a") is MachineState.DISABLED  # disabled wins
    controls.set_detection("a", True)
    clock.now += 61
    assert not controls.muted("a")
    assert controls.expire() == ["a"]
    assert controls.expire() == []
    assert controls.current("a", "mute").value == "OFF"
    payload = json.loads(controls.mute("b", 30).to_json(clock.now))
    assert payload["ok"] is True and payload["until"].endswith("Z")


def test_state_survives_a_restart_and_bad_files_do_not_stop_it(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state" / "controls.json"
    controls = Controls(["a", "b", "gone"], path, clock=clock)
    controls.mute("a", 600)
    controls.mute("gone", 600)
    controls.set_detection("b", False)
    again = Controls(["a", "b", "new"], path, clock=clock)
    assert again.muted_until("a") == clock.now + 600
    assert not again.detection_enabled("b")
    assert again.detection_enabled("new") and not again.muted("new")
    clock.now += 601  # the mute ran out while the daemon was down
    assert not Controls(["a"], path, clock=clock).muted("a")
    path.write_text("{not json")
    broken = Controls(["a", "b"], path, clock=clock)
    assert broken.detection_enabled("b") and not broken.muted("a")
    assert not list(path.parent.glob(".*.tmp"))


def test_clip_recorder_without_a_directory_keeps_audio_but_writes_nothing(
    tmp_path: Path,
) -> None:
    recorder = ClipRecorder(None, 1.0, 0.5, 10, 1, 16_000)
    try:
        block = np.full(1600, 0.1, dtype=np.float32)
        for i in range(20):
            recorder.push("m", block, 100.0 + 0.1 * (i + 1))
        recorder.event_started("m", "ev1", 101.5)
        for i in range(10):
            recorder.push("m", block, 102.0 + 0.1 * (i + 1))
        audio = recorder.event_audio("m")
        assert audio is not None and audio.pre.size == 16_000 and audio.event.size > 0
        assert recorder.event_ended("m", "ev1", 103.0) is None
        for i in range(10):
            recorder.push("m", block, 103.0 + 0.1 * (i + 1))
        assert recorder.stats().written == 0 and recorder.stats().pending == 0
    finally:
        recorder.close()
    assert recorder.dir is None


def test_recalibrate_payloads() -> None:
    from edge_asd.service.controls import (
        MAX_RECALIBRATE_SECONDS,
        MIN_RECALIBRATE_SECONDS,
        parse_recalibrate,
    )

    assert parse_recalibrate(b'{"seconds": 120}') == 120.0
    assert parse_recalibrate(b"45") == 45.0
    for bad in (b"{}", b'{"seconds": "x"}', b"nan", b'{"seconds": 10, "x": 1}'):
        with pytest.raises(ControlError):
            parse_recalibrate(bad)
    with pytest.raises(ControlError, match="out of range"):
        parse_recalibrate(str(MIN_RECALIBRATE_SECONDS - 1).encode())
    with pytest.raises(ControlError, match="out of range"):
        parse_recalibrate(str(MAX_RECALIBRATE_SECONDS + 1).encode())
