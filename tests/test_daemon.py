"""The daemon's pipeline with a recorded source (`wav:` device), a fake publisher and a real
sd_notify socket: states, events, stats, watchdog semantics, no-audio handling, shutdown."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio.files import write_wav
from edge_asd.audio.levels import window_dbfs
from edge_asd.config import parse_config
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.mqtt.messages import EnvironmentMessage, EventMessage, StatsMessage
from edge_asd.mqtt.publisher import MqttPublisher, PublisherStats
from edge_asd.service.daemon import Daemon
from edge_asd.service.startup import StartupError, check_setup
from edge_asd_dev.synth import apply_fault, machine_sound, mix_at_snr

WAIT_SECONDS = 30.0
FAULT_START_SECONDS = 4.0
FAULT_SECONDS = 4.0


@dataclass
class FakePublisher:
    """Records what the daemon publishes; never touches the network."""

    states: list[tuple[str, str]] = field(default_factory=list)
    events: list[EventMessage] = field(default_factory=list)
    telemetry: list[tuple[str, str]] = field(default_factory=list)
    started: bool = False
    stopped: bool = False
    connected: bool = True

    def start(self) -> None:
        self.started = True

    failed: bool | None = None

    def stop(self, timeout_seconds: float = 2.0, *, failed: bool = False) -> None:
        self.stopped = True
        self.failed = failed

    def thread_problem(self) -> None:
        return None

    def publish_event(self, machine: str, message: EventMessage) -> None:
        self.events.append(message)

    def publish_state(self, machine: str, state: str) -> None:
        self.states.append((machine, str(state)))

    def publish_telemetry(self, topic: str, payload: bytes | str, qos: int = 0) -> bool:
        self.telemetry.append((topic, payload if isinstance(payload, str) else payload.decode()))
        return True

    def stats(self) -> PublisherStats:
        return PublisherStats(
            connected=True,
            reconnects=0,
            published=len(self.events),
            acked=len(self.events),
            telemetry_published=len(self.telemetry),
            telemetry_dropped=0,
            events_not_stored=0,
            events_lost=0,
            last_connect_error=None,
        )


def _wait(predicate, timeout: float = WAIT_SECONDS) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    clips = [Clip(f"n{i}", machine_sound(8.0, rng=rng)) for i in range(5)]
    encoder = Encoder(resolve_model(None))
    bundle = calibrate(clips, encoder, Framing.from_seconds(), progress=False)
    out = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(bundle, out)
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s of the machine, with a fault from 4 s to 8 s."""
    rng = np.random.default_rng(9)
    audio = machine_sound(12.0, rng=rng)
    start, stop = (
        round(s * SAMPLE_RATE_HZ)
        for s in (FAULT_START_SECONDS, FAULT_START_SECONDS + FAULT_SECONDS)
    )
    audio[start:stop] = apply_fault(audio[start:stop], "whine", rng=rng, level_db=0.0)
    path = tmp_path_factory.mktemp("rec") / "rec.wav"
    write_wav(path, audio, SAMPLE_RATE_HZ)
    return path


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # ping every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    messages: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    # Read continuously, as systemd does: the kernel queues only a few datagrams per socket.
    def reader() -> None:
        while not done.is_set():
            try:
                data = sock.recv(4096).decode()
            except (TimeoutError, BlockingIOError):
                continue
            with lock:
                messages.append(data)

    thread = threading.Thread(target=reader, name="notify-reader", daemon=True)
    thread.start()

    def received() -> list[str]:
        with lock:
            return messages

    yield received
    done.set()
    thread.join(5)
    sock.close()


def _config(tmp_path: Path, bundle: Path, device: str, **machine: object):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "node_id": "test",
            "stats_interval_seconds": 1,
            "machines": [
                {
                    "name": "m1",
                    "device": device,
                    "bundle": str(bundle),
                    "no_audio_seconds": 1,
                    "release_windows": 2,
                    **machine,
                }
            ],
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        },
        source=tmp_path / "config.yaml",
    )


def _start(daemon: Daemon) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), name="daemon-under-test")
    thread.start()
    return thread, result


def test_events_states_stats_and_clean_stop(
    tmp_path: Path,
    bundle_dir: Path,
    recording: Path,
    notify_socket,  # type: ignore[no-untyped-def]
) -> None:
    publisher = FakePublisher()
    daemon = Daemon(_config(tmp_path, bundle_dir, f"wav:{recording}"), publisher=publisher)
    thread, result = _start(daemon)
    try:
        assert _wait(lambda: any(e.type == "end" for e in publisher.events)), publisher.events
    finally:
        daemon.request_stop()
        thread.join(WAIT_SECONDS)
    assert result == [0] and publisher.stopped
    kinds = [str(e.type) for e in publisher.events]
    assert kinds[0] == "start" and "end" in kinds
    first = [e for e in publisher.events if e.event_id == publisher.events[0].event_id]
    assert [str(e.type) for e in first][-1] == "end"
    seqs = [e.seq for e in publisher.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert first[-1].peak_score >= first[-1].threshold
    # States follow the event: normal -> anomalous -> normal.
    states = [s for _, s in publisher.states]
    assert states[:3] == ["normal", "anomalous", "normal"]
    # Score telemetry and stats were published and parse.
    assert any(t.endswith("/m1/score") for t, _ in publisher.telemetry)
    stats = [
        StatsMessage.from_dict(__import__("json").loads(p))
        for t, p in publisher.telemetry
        if t.endswith("/stats")
    ]
    assert stats and stats[-1].windows_processed > 10
    # A changed environment a previous run left retained on the broker is cleared at start.
    environment = [p for t, p in publisher.telemetry if t.endswith("/m1/environment")]
    assert environment and not EnvironmentMessage.from_json(environment[0]).changed
    messages = notify_socket()
    assert "READY=1" in messages
    assert "WATCHDOG=1" in messages
    assert any(m.startswith("STATUS=") for m in messages)
    assert "STOPPING=1" in messages


def test_missing_device_keeps_running_with_no_audio_and_watchdog(
    tmp_path: Path,
    bundle_dir: Path,
    notify_socket,  # type: ignore[no-untyped-def]
) -> None:
    publisher = FakePublisher()
    daemon = Daemon(
        _config(tmp_path, bundle_dir, f"wav:{tmp_path / 'missing.wav'}"), publisher=publisher
    )
    thread, result = _start(daemon)
    try:
        assert _wait(lambda: ("m1", "no_audio") in publisher.states)
        time.sleep(2.0)
        assert thread.is_alive(), "the daemon must keep retrying, not exit"
    finally:
        daemon.request_stop()
        thread.join(WAIT_SECONDS)
    assert result == [0]
    messages = notify_socket()
    assert "READY=1" in messages
    # Waiting for a device is not a stall: the watchdog keeps being fed.
    assert messages.count("WATCHDOG=1") >= 2
    assert publisher.events == []


def test_stalled_pipeline_stops_feeding_the_watchdog(
    tmp_path: Path,
    bundle_dir: Path,
    recording: Path,
    notify_socket,  # type: ignore[no-untyped-def]
) -> None:
    publisher = FakePublisher()
    daemon = Daemon(_config(tmp_path, bundle_dir, f"wav:{recording}"), publisher=publisher)
    stall = threading.Event()
    real_embed = daemon.encoder.embed

    def stalling_embed(windows: np.ndarray) -> np.ndarray:
        stall.wait(WAIT_SECONDS)  # a hung inference step
        return real_embed(windows)

    thread, _result = _start(daemon)
    try:
        assert _wait(lambda: "WATCHDOG=1" in notify_socket())
        daemon.encoder.embed = stalling_embed  # type: ignore[method-assign]
        time.sleep(1.0)
        notify_socket().clear()
        time.sleep(2.0)
        assert "WATCHDOG=1" not in notify_socket()
    finally:
        stall.set()
        daemon.request_stop()
        thread.join(WAIT_SECONDS)


def test_startup_errors_name_the_key(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(StartupError, match="machines: at least one"):
        check_setup(parse_config({}, source=tmp_path / "c.yaml"))
    config = _config(tmp_path, bundle_dir, "default", window_seconds=2.0, hop_seconds=0.5)
    with pytest.raises(StartupError, match=r"machines\.0\.window_seconds"):
        check_setup(config)
    config = _config(tmp_path, tmp_path / "nope", "default")
    with pytest.raises(StartupError, match=r"machines\.0\.bundle"):
        check_setup(config)
    lines = check_setup(_config(tmp_path, bundle_dir, "default"))
    assert any("machine m1" in line for line in lines)


def test_window_dbfs() -> None:
    assert window_dbfs(np.zeros(100, np.float32)) == -120.0
    tone = np.sin(np.linspace(0, 200 * np.pi, 16000)).astype(np.float32)
    assert window_dbfs(tone) == pytest.approx(-3.01, abs=0.05)


def test_two_machines_share_one_multichannel_stream(
    tmp_path: Path,
    bundle_dir: Path,
    notify_socket,  # type: ignore[no-untyped-def]
) -> None:
    """Two machines on channels 0 and 1 of one device: one capture stream, separate detectors;
    only the machine whose channel carries the fault raises an event."""
    from scipy.io import wavfile

    rng = np.random.default_rng(21)
    healthy = machine_sound(12.0, rng=rng)
    faulty = machine_sound(12.0, rng=rng)
    start, stop = (round(s * SAMPLE_RATE_HZ) for s in (FAULT_START_SECONDS, 10.0))
    faulty[start:stop] = apply_fault(faulty[start:stop], "whine", rng=rng, level_db=0.0)
    stereo = tmp_path / "stereo.wav"
    wavfile.write(stereo, SAMPLE_RATE_HZ, np.stack([healthy, faulty], axis=1))
    config = parse_config(
        {
            "node_id": "test",
            "machines": [
                {
                    "name": "left",
                    "device": f"wav:{stereo}",
                    "channel": 0,
                    "bundle": str(bundle_dir),
                },
                {
                    "name": "right",
                    "device": f"wav:{stereo}",
                    "channel": 1,
                    "bundle": str(bundle_dir),
                },
            ],
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        },
        source=tmp_path / "config.yaml",
    )
    publisher = FakePublisher()
    daemon = Daemon(config, publisher=publisher)
    thread, result = _start(daemon)
    try:
        assert _wait(lambda: any(e.machine == "right" for e in publisher.events))
        time.sleep(2.0)
    finally:
        daemon.request_stop()
        thread.join(WAIT_SECONDS)
    assert result == [0]
    assert len(daemon.supervisors) == 1, "one capture stream for both channels"
    assert {e.machine for e in publisher.events} == {"right"}
    assert ("left", "normal") in publisher.states and ("right", "anomalous") in publisher.states


def test_mqtt_publisher_is_built_from_the_config(
    tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an injected publisher, the daemon connects with the config's mqtt section and
    the resolved password, as the client id that check-config reports."""
    monkeypatch.setenv("EDGE_ASD_TEST_PASSWORD", "s3cret")
    config = parse_config(
        {
            "node_id": "gw.hall-2",
            "machines": [{"name": "m1", "device": "wav:/none.wav", "bundle": str(bundle_dir)}],
            "mqtt": {"username": "sensor", "password_env": "EDGE_ASD_TEST_PASSWORD"},
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        },
        source=tmp_path / "config.yaml",
    )
    daemon = Daemon(config)
    try:
        publisher = daemon.publisher
        assert isinstance(publisher, MqttPublisher)
        assert publisher.client_id == "edge-asd-gw-hall-2"
        assert publisher._password == "s3cret"
        assert any(f" as {publisher.client_id}," in line for line in check_setup(config))
    finally:
        daemon.outbox.close()


def test_reload_swaps_bundles_and_keeps_them_when_the_new_one_is_broken(
    bundle_dir: Path, recording: Path, tmp_path: Path
) -> None:
    """SIGHUP (`systemctl reload`) after `learn`: the new bundle is used; a bundle that does not
    load leaves the running one in place."""
    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    publisher = FakePublisher()
    daemon = Daemon(_config(tmp_path, live, f"wav:{recording}"), publisher=publisher)
    before = daemon.machines[0].bundle.bundle_id
    rng = np.random.default_rng(21)
    clips = [Clip(f"r{i}", machine_sound(8.0, rng=rng)) for i in range(5)]
    save_bundle(calibrate(clips, daemon.encoder, Framing.from_seconds(), progress=False), live)
    assert daemon.reload_bundles()
    after = daemon.machines[0].bundle.bundle_id
    assert after != before
    (live / "bank.npz").write_bytes(b"not a bank")
    assert not daemon.reload_bundles()
    assert daemon.machines[0].bundle.bundle_id == after
    daemon.outbox.close()


def test_a_changed_environment_is_published_retained_and_cleared_by_a_reload(
    bundle_dir: Path, recording: Path, tmp_path: Path
) -> None:
    publisher = FakePublisher()
    daemon = Daemon(_config(tmp_path, bundle_dir, f"wav:{recording}"), publisher=publisher)
    machine = daemon.machines[0]
    topic = daemon.topics.environment("m1")
    rng = np.random.default_rng(4)
    audio = machine_sound(60.0, rng=rng)
    # Broadband noise ten times the machine's power: surroundings calibration never heard.
    loud = mix_at_snr(audio, rng.standard_normal(audio.size), -10.0)
    daemon._publish_step(machine, machine.pipeline.push(loud, daemon.clock.now()))

    def published() -> list[EnvironmentMessage]:
        return [EnvironmentMessage.from_json(p) for t, p in publisher.telemetry if t == topic]

    assert [m.changed for m in published()] == [True]
    changed = published()[0]
    assert changed.machine == "m1" and changed.level_change_db is not None
    assert changed.level_change_db > 6.0 and len(changed.bands) == 3
    assert changed.change_db is not None and changed.margin_db is not None
    assert changed.change_db > changed.margin_db
    # Events published in the changed surroundings carry them; an open alarm keeps the state
    # anomalous, otherwise it reads environment_changed.
    late = [e for e in publisher.events if e.environment is not None]
    assert all(e.environment.bands for e in late)
    if ("m1", "environment_changed") not in publisher.states:
        assert publisher.states[-1] == ("m1", "anomalous") and late
    # After `learn` or a recalibration the reloaded bundle judges afresh.
    assert daemon.reload_bundles()
    assert [m.changed for m in published()] == [True, False]
    assert published()[-1].bands == [] and published()[-1].level_change_db is None
    daemon.outbox.close()
