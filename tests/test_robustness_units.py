"""Unit tests of the robustness pieces: the monotonic timeline, the open-events file, the
per-device block numbering that marks a gap another device's drop caused, the fault-injection
parser, start-up error classification, and `score` on a clip shorter than one window."""

from __future__ import annotations

import errno
import json
import queue
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio.capture import CapturedBlock, CaptureSupervisor
from edge_asd.audio.files import write_wav
from edge_asd.audio.sources import SourceStats
from edge_asd.config import parse_config
from edge_asd.constants import EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE, SAMPLE_RATE_HZ
from edge_asd.detection.bundle import save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.model.contract import ModelError
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.service.faults import FaultInjection, parse_faults
from edge_asd.service.open_events import OpenEvent, OpenEventStore, path_for
from edge_asd.service.startup import Problem, StartupError, is_transient, outbox_problem
from edge_asd.service.timeline import Timeline
from edge_asd_dev.synth import machine_sound
from tests.test_daemon import FakePublisher

MODEL = "logmel-stats"


class FakeClock:
    def __init__(self, wall: float = 1_800_000_000.0, mono: float = 100.0) -> None:
        self.wall, self.mono = wall, mono

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_timeline_never_jumps_and_re_anchors_wall_time(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    timeline = Timeline(wall=lambda: clock.wall, monotonic=lambda: clock.mono)
    start = timeline.now()
    assert timeline.to_wall(start) == pytest.approx(clock.wall)
    clock.tick(10)
    assert timeline.check() is None
    clock.wall -= 3600  # NTP steps the clock back an hour
    clock.tick(5)
    assert timeline.check() == pytest.approx(-3600)
    assert "wall clock jumped by -3600.0 s" in caplog.text
    now = timeline.now()
    assert now - start == pytest.approx(15)  # durations stay monotonic
    assert timeline.to_wall(now) == pytest.approx(clock.wall)  # timestamps follow the clock
    assert timeline.check() is None and timeline.jumps == 1
    clock.wall += 1.0  # below the step threshold: drift, not a jump
    assert timeline.check() is None


def _event(event_id: str, last_ts: float = 1000.0) -> OpenEvent:
    return OpenEvent(
        event_id=event_id,
        machine="m1",
        start_ts=990.0,
        last_ts=last_ts,
        score=float("nan"),
        peak_score=3.5,
        threshold=1.2,
        windows_over=4,
        dbfs=-20.0,
        bundle_id="b",
        model={"name": "x", "version": "1", "sha256": "0" * 64},
    )


def test_open_events_file_round_trip_rate_limited_and_removed(tmp_path: Path) -> None:
    path = path_for(tmp_path / "outbox.sqlite")
    assert path.name == "outbox.sqlite.open-events.json"
    store = OpenEventStore(path)
    assert store.load() == []
    store.record(_event("a"), force=True)
    loaded = OpenEventStore(path).load()
    assert [e.event_id for e in loaded] == ["a"] and loaded[0].peak_score == 3.5
    assert loaded[0].score is None  # NaN is stored as null (strict JSON)
    store.record(_event("a", last_ts=1005.0))  # an update 5 s later: not rewritten yet
    assert OpenEventStore(path).load()[0].last_ts == 1000.0
    store.record(_event("a", last_ts=1040.0))  # 40 s later: refreshed
    assert OpenEventStore(path).load()[0].last_ts == 1040.0
    assert not list(tmp_path.glob("*.tmp"))  # atomic: no temporary left behind
    store.remove("a")
    assert not path.exists()


def test_unreadable_open_events_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "x.open-events.json"
    path.write_text("{torn", encoding="utf-8")
    assert OpenEventStore(path).load() == []


def test_fault_injection_parsing() -> None:
    faults = parse_faults("inference-crash@3, capture-hang:wav:/a b.wav@1.5,bogus,clock-jump:-60")
    assert [(f.name, f.target, f.after_seconds) for f in faults] == [
        ("inference-crash", "", 3.0),
        ("capture-hang", "wav:/a b.wav", 1.5),
        ("clock-jump", "-60", 0.0),
    ]
    assert not FaultInjection.from_env({}).active
    assert FaultInjection(faults).wall_offset() == -60.0


def test_startup_errors_are_classified() -> None:
    eio = OSError(errno.EIO, "Input/output error")
    try:
        try:
            raise eio
        except OSError:
            raise ModelError("cannot read model file x") from None
    except ModelError as wrapped:
        assert is_transient(wrapped)  # found through __context__ despite `from None`
    assert not is_transient(FileNotFoundError(errno.ENOENT, "missing"))
    assert is_transient(sqlite3.OperationalError("database or disk is full"))
    assert StartupError("machines.0.bundle: gone").problems == [
        Problem("machines.0.bundle", "gone")
    ]
    assert StartupError("model: x").exit_code == EXIT_USAGE
    assert StartupError("model: x", transient=True).exit_code == EXIT_TEMPFAIL
    mixed = StartupError([Problem("a", "x", transient=True), Problem("b", "y")])
    assert mixed.exit_code == EXIT_USAGE and str(mixed) == "a: x\nb: y"


def test_outbox_problem_classification(tmp_path: Path) -> None:
    assert outbox_problem(tmp_path / "o", sqlite3.OperationalError("unable to open")).transient
    assert not outbox_problem(tmp_path, OSError(errno.EISDIR, "is a directory")).transient


# ---------------------------------------------------------------- a gap in the shared queue


class _Noise:
    description = "noise"
    sample_rate = SAMPLE_RATE_HZ
    channels = 1

    def start(self) -> None:
        pass

    def read(self, timeout_seconds: float) -> np.ndarray:
        threading.Event().wait(0.002)
        return np.random.default_rng(0).normal(0, 0.1, (160, 1)).astype(np.float32)

    def stop(self) -> None:
        pass

    def stats(self) -> SourceStats:
        return SourceStats(0, 0, 0)


def test_a_block_dropped_by_another_device_is_seen_as_a_gap() -> None:
    """Two devices share one full queue: device B's thread drops device A's oldest block. A's
    next block in the queue carries no discontinuity flag of its own, but its number shows
    the gap."""
    shared: queue.Queue[CapturedBlock] = queue.Queue(maxsize=4)
    stop = threading.Event()
    supervisors = [
        CaptureSupervisor(
            name,
            [0],
            shared,
            stop,
            no_audio_seconds=5.0,
            on_health=lambda ok, msg: None,
            source_factory=lambda device, channels: _Noise(),
        )
        for name in ("a", "b")
    ]
    for supervisor in supervisors:
        supervisor.start()
    threading.Event().wait(0.5)
    stop.set()
    for supervisor in supervisors:
        supervisor.join(5)
    dropped = sum(s.counters.dropped_blocks for s in supervisors)
    assert dropped > 0
    remaining = [shared.get_nowait() for _ in range(shared.qsize())]
    by_device: dict[str, list[int]] = {}
    for block in remaining:
        by_device.setdefault(block.device_key, []).append(block.seq)
    # Every device's numbers are increasing; the holes are the dropped blocks.
    for seqs in by_device.values():
        assert seqs == sorted(seqs)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    clips = [Clip(f"n{i}", machine_sound(8.0, rng=rng)) for i in range(5)]
    out = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(calibrate(clips, Encoder(resolve_model(MODEL)), Framing.from_seconds()), out)
    return out


def test_daemon_resets_a_machine_on_a_numbering_gap(tmp_path: Path, bundle: Path) -> None:
    from edge_asd.service.daemon import Daemon

    config = parse_config(
        {
            "node_id": "u",
            "model": MODEL,
            "machines": [{"name": "m1", "device": "wav:/none.wav", "bundle": str(bundle)}],
            "outbox": {"path": str(tmp_path / "o.sqlite")},
        },
        source=tmp_path / "c.yaml",
    )
    daemon = Daemon(config, publisher=FakePublisher())
    resets: list[int] = []
    pipeline = daemon.machines[0].pipeline
    real_reset = pipeline.reset

    def counting_reset() -> None:
        resets.append(1)
        real_reset()

    pipeline.reset = counting_reset  # type: ignore[method-assign]
    samples = np.zeros((1600, 1), np.float32)
    for seq in (0, 1, 2, 5, 6):  # blocks 3 and 4 were dropped by another device's thread
        daemon._process_block(CapturedBlock("wav:/none.wav", samples, 1000.0 + seq, False, seq))
    assert len(resets) == 1 and daemon.counters.block_gaps == 1
    daemon.outbox.close()


# ---------------------------------------------------------------- score on a short clip


def test_score_flags_a_clip_shorter_than_one_window(tmp_path: Path, bundle: Path) -> None:
    short, full = tmp_path / "short.wav", tmp_path / "full.wav"
    rng = np.random.default_rng(2)
    write_wav(short, machine_sound(0.4, rng=rng), SAMPLE_RATE_HZ)
    write_wav(full, machine_sound(3.0, rng=rng), SAMPLE_RATE_HZ)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_asd",
            "score",
            "--bundle",
            str(bundle),
            "--model",
            MODEL,
            str(short),
            str(full),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_OK, result.stderr
    short_line, full_line = (json.loads(line) for line in result.stdout.splitlines())
    assert "shorter than one 1 s window" in short_line["warning"]
    assert "padded" in short_line["warning"]
    assert full_line["warning"] is None


def test_run_warns_about_a_password_without_tls(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_asd.service.daemon import Daemon

    monkeypatch.setenv("EDGE_ASD_UNIT_PASSWORD", "s3cret")
    config = parse_config(
        {
            "node_id": "u",
            "model": MODEL,
            "machines": [{"name": "m1", "device": "wav:/none.wav", "bundle": str(bundle)}],
            "mqtt": {"username": "sensor", "password_env": "EDGE_ASD_UNIT_PASSWORD"},
            "outbox": {"path": str(tmp_path / "o.sqlite")},
        },
        source=tmp_path / "c.yaml",
    )
    daemon = Daemon(config, publisher=FakePublisher())
    daemon.outbox.close()
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert any("password is configured but TLS is off" in w for w in warnings)
    assert "s3cret" not in caplog.text
