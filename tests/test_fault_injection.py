"""Fault injection: cause each failure the daemon must survive or report, and assert what the
plant sees (exit codes, retained states, events, stats, watchdog pings, log lines).

The daemon runs as a subprocess (`python -m edge_asd run`) with `wav:` devices, the fast
`logmel-stats` encoder and a real Mosquitto broker. Worker crashes and hangs and wall-clock
jumps are injected with the TEST-ONLY `EDGE_ASD_FAULT_INJECT` hook (edge_asd/service/faults.py).
The MQTT layer's faults (a host paho cannot even encode, exceptions in callbacks, a broker that
flaps without acknowledging, a broker that refuses a message) and a PortAudio stop that blocks
are exercised in-process, against fakes where no real part can produce the fault on demand. A
full disk is a real one (a small tmpfs, filled; needs root), and a microphone that comes back
under another PortAudio index is real too: PortAudio's ALSA host API over a private PulseAudio
server, the microphone an ALSA device routed to a PulseAudio pipe source.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from edge_asd.audio import sources
from edge_asd.audio.capture import CapturedBlock, CaptureSupervisor
from edge_asd.audio.files import read_wav, write_wav
from edge_asd.config import MqttConfig, load_config
from edge_asd.constants import EXIT_FAILURE, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE, SAMPLE_RATE_HZ
from edge_asd.detection.bundle import META_FILE, save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.mqtt import outbox as outbox_module
from edge_asd.mqtt.messages import event_schema, stats_schema
from edge_asd.mqtt.outbox import Outbox
from edge_asd.mqtt.publisher import MAX_INFLIGHT_MESSAGES, MqttPublisher
from edge_asd.service import daemon as daemon_module
from edge_asd.service.daemon import Daemon
from edge_asd.service.open_events import path_for
from edge_asd.service.startup import StartupError
from edge_asd_dev.synth import apply_fault, machine_sound
from tests.mqtt_fixture import MosquittoBroker, Subscriber, free_port, mosquitto_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

NODE = "fi"
PREFIX = f"edge-asd/{NODE}"
MODEL = "logmel-stats"
FAULT_START, FAULT_END = 4.0, 8.0
"""Seconds into the looped 12 s recording where the fault sounds (events start ~1 s later)."""
RECORDING_SECONDS = 12.0
WAIT = 30.0
POLL = 0.05


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL)
    return predicate()


# ---------------------------------------------------------------- shared assets


@dataclass(frozen=True)
class Assets:
    bundle: Path
    faulty: Path
    """12 s of the machine with a fault from 4 s to 8 s."""
    normal: Path
    """12 s of the same machine, normal."""
    normal_b: Path
    """Another copy of the normal recording, for a second device."""


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A logmel-stats bundle calibrated on 36 s of one machine, and recordings of the next
    12 s of the same machine (so that its normal stretches score as normal)."""
    work = tmp_path_factory.mktemp("fi-assets")
    rng = np.random.default_rng(11)
    base = machine_sound(48.0, rng=rng)
    n = round(RECORDING_SECONDS * SAMPLE_RATE_HZ)
    encoder = Encoder(resolve_model(MODEL))
    clips = [Clip(f"n{i}", base[i * n : (i + 1) * n]) for i in range(3)]
    bundle = calibrate(clips, encoder, Framing.from_seconds(), progress=False)
    save_bundle(bundle, work / "bundle")
    normal = base[3 * n :].copy()
    faulty = normal.copy()
    start, stop = round(FAULT_START * SAMPLE_RATE_HZ), round(FAULT_END * SAMPLE_RATE_HZ)
    faulty[start:stop] = apply_fault(faulty[start:stop], "whine", rng=rng, level_db=0.0)
    for name, audio in (("faulty", faulty), ("normal", normal), ("normal_b", normal)):
        write_wav(work / f"{name}.wav", audio, SAMPLE_RATE_HZ)
    return Assets(work / "bundle", work / "faulty.wav", work / "normal.wav", work / "normal_b.wav")


def machine(name: str, wav: Path, bundle: Path, **changes: object) -> dict[str, object]:
    values: dict[str, object] = {
        "name": name,
        "device": f"wav:{wav}",
        "bundle": str(bundle),
        "decision": "hysteresis",
        "trigger_windows": 2,
        "release_windows": 2,
        "no_audio_seconds": 2,
    }
    values.update(changes)
    return values


def write_config(
    directory: Path,
    machines: list[dict[str, object]],
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    **top: object,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "node_id": NODE,
        "model": MODEL,
        "stats_interval_seconds": 1,
        "machines": machines,
        "mqtt": {"host": host, "port": port or free_port(), "keepalive_seconds": 5},
        "outbox": {"path": str(directory / "outbox.sqlite")},
    }
    config.update(top)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class DaemonProcess:
    """`python -m edge_asd run` with its log in a file; always killed at the end."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_asd", "run", "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = WAIT) -> bool:
        return wait_until(lambda: text in self.log, timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        process = DaemonProcess(config, config.parent / f"daemon-{len(started)}.log", env)
        started.append(process)
        return process.start()

    yield make
    for process in started:
        process.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[Subscriber]:
    sub = Subscriber(broker.host, broker.port, f"{PREFIX}/#").start()
    assert sub.wait_subscribed()
    yield sub
    sub.close()


def payloads(sub: Subscriber, suffix: str) -> list[str]:
    return [m.payload.decode() for m in sub.messages(f"{PREFIX}/{suffix}")]


def events(sub: Subscriber, machine_name: str = "m1") -> list[dict[str, Any]]:
    found = [json.loads(p) for p in payloads(sub, f"{machine_name}/event")]
    for event in found:
        jsonschema.validate(event, event_schema())
    return found


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[dict[str, str], Callable[[], list[str]]]]:
    """A systemd-like notify socket: (environment for the daemon, datagrams so far)."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    received: list[tuple[float, str]] = []
    lock = threading.Lock()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                data = sock.recv(4096).decode()
            except (TimeoutError, BlockingIOError):
                continue
            with lock:
                received.append((time.monotonic(), data))

    thread = threading.Thread(target=reader, name="notify-reader", daemon=True)
    thread.start()

    def messages() -> list[str]:
        with lock:
            return [text for _, text in received]

    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}  # a ping every 0.5 s
    yield env, messages
    done.set()
    thread.join(5)
    sock.close()


# ---------------------------------------------------------------- worker crashes: exit codes


def test_inference_crash_exits_non_zero_and_shows_fault(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """A bug in the inference thread: exit 1 (systemd restarts), state fault, availability
    offline (not the operator's stopped)."""
    config = write_config(
        tmp_path / "d", [machine("m1", assets.normal, assets.bundle)], port=broker.port
    )
    daemon = daemons(config, {"EDGE_ASD_FAULT_INJECT": "inference-crash@3"})
    assert daemon.wait(WAIT) == EXIT_FAILURE, daemon.log
    assert "inference thread crashed" in daemon.log
    assert subscriber.wait_for(lambda _: "fault" in payloads(subscriber, "m1/state"), 5)
    assert payloads(subscriber, "m1/state")[0] == "normal"
    assert payloads(subscriber, "availability")[-1] == "offline"
    assert "stopped" not in payloads(subscriber, "availability")


def test_sigterm_is_a_clean_stop(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """The contrast: an operator's stop exits 0 and says stopped."""
    config = write_config(
        tmp_path / "d", [machine("m1", assets.normal, assets.bundle)], port=broker.port
    )
    daemon = daemons(config)
    assert subscriber.wait_for(lambda _: "normal" in payloads(subscriber, "m1/state"), WAIT)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == EXIT_OK
    assert subscriber.wait_for(lambda _: "stopped" in payloads(subscriber, "availability"), 5)
    assert "fault" not in payloads(subscriber, "m1/state")


def test_capture_crash_of_one_of_two_devices(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """One capture thread dies: its machine shows fault, the other does not, exit 1."""
    config = write_config(
        tmp_path / "d",
        [machine("a", assets.normal, assets.bundle), machine("b", assets.normal_b, assets.bundle)],
        port=broker.port,
    )
    daemon = daemons(config, {"EDGE_ASD_FAULT_INJECT": f"capture-crash:wav:{assets.normal_b}@3"})
    assert daemon.wait(WAIT) == EXIT_FAILURE, daemon.log
    assert "capture thread for device" in daemon.log and "died" in daemon.log
    assert subscriber.wait_for(lambda _: "fault" in payloads(subscriber, "b/state"), 5)
    assert "fault" not in payloads(subscriber, "a/state")
    assert payloads(subscriber, "availability")[-1] == "offline"


def test_capture_hang_of_one_of_two_devices_stops_the_watchdog(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
    notify_socket: tuple[dict[str, str], Callable[[], list[str]]],
) -> None:
    """One capture thread hangs while the other device keeps delivering: the hung device's
    machine goes to fault (reason in the stats), the other stays normal, and the watchdog
    is no longer fed although windows are still being processed for the other machine."""
    env, notifications = notify_socket
    config = write_config(
        tmp_path / "d",
        [machine("a", assets.normal, assets.bundle), machine("b", assets.normal_b, assets.bundle)],
        port=broker.port,
    )
    daemon = daemons(
        config, {**env, "EDGE_ASD_FAULT_INJECT": f"capture-hang:wav:{assets.normal_b}@4"}
    )
    assert wait_until(lambda: "WATCHDOG=1" in notifications()), daemon.log
    assert subscriber.wait_for(lambda _: "fault" in payloads(subscriber, "b/state"), WAIT)
    seen = len(notifications())
    time.sleep(2.0)
    assert "WATCHDOG=1" not in notifications()[seen:], "a hung capture must starve the watchdog"
    assert daemon.alive()
    assert payloads(subscriber, "a/state") == ["normal"]

    def fault_stats(_: object) -> bool:
        return any(
            json.loads(p)["faults"].get("b", "").startswith("capture thread")
            for p in payloads(subscriber, "stats")
        )

    assert subscriber.wait_for(fault_stats, 5)
    for stats in payloads(subscriber, "stats"):
        jsonschema.validate(json.loads(stats), stats_schema())
    last = json.loads(payloads(subscriber, "stats")[-1])
    assert last["machines"] == {"a": "normal", "b": "fault"}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == EXIT_OK


# ---------------------------------------------------------------- the network


def test_garbage_broker_host_detection_goes_on(
    tmp_path: Path, assets: Assets, daemons: Callable[..., DaemonProcess]
) -> None:
    """`broker..plant` makes paho raise UnicodeError (IDNA) inside the connection attempt:
    the network thread keeps retrying, logs the problem once, and detection goes on (the
    event waits in the outbox)."""
    config = write_config(
        tmp_path / "d",
        [machine("m1", assets.faulty, assets.bundle)],
        host="broker..plant",
        log_level="DEBUG",
    )
    daemon = daemons(config)
    assert daemon.wait_log("m1: state normal -> anomalous"), daemon.log
    outbox = tmp_path / "d" / "outbox.sqlite"

    def stored_events() -> list[dict[str, Any]]:
        with sqlite3.connect(outbox) as conn:
            rows = conn.execute("SELECT payload FROM messages ORDER BY id").fetchall()
        return [json.loads(bytes(r[0])) for r in rows]

    assert wait_until(lambda: any(e["type"] == "start" for e in stored_events()))
    assert wait_until(lambda: daemon.log.count("Connection failed, retrying") >= 3, WAIT)
    assert daemon.alive()
    log = daemon.log
    assert log.count("Cannot connect to MQTT broker") == 1, log
    assert "idna" in log.lower()
    assert "mqtt.host: 'broker..plant' is not a valid host name" in log  # the start-up check
    assert "mqtt-network thread died" not in log
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == EXIT_OK


def test_host_paho_cannot_encode_keeps_the_network_thread(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_asd.mqtt.publisher")
    box = Outbox(tmp_path / "o.sqlite")
    publisher = MqttPublisher(
        MqttConfig.from_dict({"host": "broker..plant"}),
        box,
        node_id=NODE,
        reconnect_min_delay_seconds=0.05,
        reconnect_max_delay_seconds=0.1,
    )
    publisher.start()
    try:
        assert wait_until(lambda: caplog.text.count("Connection failed, retrying") >= 5)
        assert publisher.thread_problem() is None
        assert "UnicodeError" in (publisher.stats().last_connect_error or "")
        warnings = [r for r in caplog.records if "Cannot connect to MQTT broker" in r.message]
        assert len(warnings) == 1
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    finally:
        publisher.stop(1)
        box.close()


def test_exceptions_in_our_callbacks_never_kill_the_loop(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Subscriber
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    publisher = MqttPublisher(
        MqttConfig.from_dict({"host": broker.host, "port": broker.port}), box, node_id=NODE
    )

    def broken(*_args: object) -> None:
        raise RuntimeError("bug in a callback")

    publisher._on_paho_log = broken  # type: ignore[method-assign] # called for every packet
    publisher.start()
    try:
        assert wait_until(lambda: publisher.connected)
        box.put(f"{PREFIX}/m1/event", b'{"n":1}', 1)
        publisher._wake.set()
        assert subscriber.wait_for(lambda _: bool(payloads(subscriber, "m1/event")), 10)
        assert wait_until(lambda: box.depth() == 0)
        assert publisher.stats().callback_errors > 0
        assert publisher.thread_problem() is None
    finally:
        publisher.stop(2)
        box.close()


class FlappingBroker:
    """Accepts MQTT connections, answers CONNACK, reads everything, never acknowledges a
    publish, and drops each connection after `hold_seconds`: a broker behind a flapping link."""

    CONNACK_V5 = bytes([0x20, 0x03, 0x00, 0x00, 0x00])

    def __init__(self, hold_seconds: float = 0.3) -> None:
        self.hold = hold_seconds
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.publishes_per_connection: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="flapping-broker", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(0.05)
                conn.sendall(self.CONNACK_V5)
                data = b""
                deadline = time.monotonic() + self.hold
                while time.monotonic() < deadline:
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    data += chunk
                self.publishes_per_connection.append(data.count(f"{PREFIX}/m1/event".encode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


def test_flapping_broker_without_acks_keeps_memory_bounded(tmp_path: Path) -> None:
    """Each reconnect re-submits the oldest unacknowledged rows; paho must not accumulate
    copies from earlier connections (it would re-send them all, growing without bound)."""
    flapping = FlappingBroker()
    box = Outbox(tmp_path / "o.sqlite")
    for index in range(200):
        box.put(f"{PREFIX}/m1/event", json.dumps({"n": index}).encode(), 1)
    publisher = MqttPublisher(
        MqttConfig.from_dict({"host": "127.0.0.1", "port": flapping.port}),
        box,
        node_id=NODE,
        reconnect_min_delay_seconds=0.05,
        reconnect_max_delay_seconds=0.05,
    )
    publisher.start()
    peak_queue = peak_inflight = 0
    try:
        deadline = time.monotonic() + WAIT
        while flapping.connections < 25 and time.monotonic() < deadline:
            stats = publisher.stats()
            peak_queue = max(peak_queue, stats.client_queue)
            peak_inflight = max(peak_inflight, stats.in_flight)
            time.sleep(0.01)
        assert flapping.connections >= 25
        assert publisher.thread_problem() is None
    finally:
        publisher.stop(1)
        flapping.close()
        box.close()
    # One window of events (plus the availability message) per connection, never more.
    assert peak_inflight <= MAX_INFLIGHT_MESSAGES
    assert peak_queue <= MAX_INFLIGHT_MESSAGES + 1
    assert max(flapping.publishes_per_connection) <= MAX_INFLIGHT_MESSAGES
    assert box is not None


def test_refused_message_is_quarantined_not_blocking(tmp_path: Path) -> None:
    """An ACL deny: with MQTT 5 the broker answers PUBACK 0x87 "Not authorized". The row is
    quarantined (logged, counted) and the events behind it are delivered."""
    acl = tmp_path / "acl"
    acl.write_text(
        f"topic readwrite {PREFIX}/availability\ntopic readwrite {PREFIX}/m1/event\ntopic read #\n",
        encoding="utf-8",
    )
    with MosquittoBroker(tmp_path / "broker", extra_config=[f"acl_file {acl}"]) as acl_broker:
        sub = Subscriber(acl_broker.host, acl_broker.port, f"{PREFIX}/#").start()
        assert sub.wait_subscribed()
        box = Outbox(tmp_path / "o.sqlite")
        box.put(f"{PREFIX}/forbidden/event", b'{"n":0}', 1)
        box.put(f"{PREFIX}/m1/event", b'{"n":1}', 1)
        publisher = MqttPublisher(
            MqttConfig.from_dict({"host": acl_broker.host, "port": acl_broker.port}),
            box,
            node_id=NODE,
        )
        publisher.start()
        try:
            assert sub.wait_for(lambda _: bool(payloads(sub, "m1/event")), 10)
            assert wait_until(lambda: box.depth() == 0)
            assert publisher.stats().quarantined == 1
            assert not payloads(sub, "forbidden/event")
            quarantined = getattr(box, "quarantined", None)
            if quarantined is not None and not callable(quarantined):
                assert quarantined == 1  # the outbox keeps it for inspection
        finally:
            publisher.stop(2)
            sub.close()
            box.close()


# ---------------------------------------------------------------- time


def test_wall_clock_jump_back_during_an_event(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """NTP steps the clock back an hour in the middle of an event: logged, re-anchored, the
    event ends normally with a non-negative duration and timestamps on the new clock."""
    config = write_config(
        tmp_path / "d", [machine("m1", assets.faulty, assets.bundle)], port=broker.port
    )
    daemon = daemons(config, {"EDGE_ASD_FAULT_INJECT": "clock-jump:-3600@6.5"})
    assert subscriber.wait_for(
        lambda _: any(e["type"] == "end" for e in events(subscriber)), WAIT
    ), daemon.log
    assert "wall clock jumped by -3600" in daemon.log
    first = [e for e in events(subscriber) if e["event_id"] == events(subscriber)[0]["event_id"]]
    start, end = first[0], first[-1]
    assert end["type"] == "end" and end["reason"] is None
    assert end["duration_seconds"] >= 0
    assert 3 <= end["duration_seconds"] <= 8
    # Timestamps follow the corrected clock: the end is "earlier" than the start was.
    assert end["ts"] < start["ts"]
    assert "fault" not in payloads(subscriber, "m1/state")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == EXIT_OK


@pytest.mark.xfail(
    not hasattr(outbox_module, "OutboxUnavailable"),
    reason="the outbox ages messages by the wall clock until its monotonic ageing is merged",
    strict=False,
)
def test_forward_clock_jump_does_not_drop_queued_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wall clock as the outbox reads it, looked up at each call so the jump applies.
    box = Outbox(tmp_path / "o.sqlite", max_age_seconds=7 * 86_400, clock=lambda: time.time())
    box.put(f"{PREFIX}/m1/event", b"1", 1)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 8 * 86_400)
    box.put(f"{PREFIX}/m1/event", b"2", 1)
    assert box.depth() == 2
    box.close()


# ---------------------------------------------------------------- crash during an event


def test_sigkill_during_an_event_is_closed_with_reason_restart(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    config = write_config(
        tmp_path / "d", [machine("m1", assets.faulty, assets.bundle)], port=broker.port
    )
    first = daemons(config)
    assert subscriber.wait_for(
        lambda _: any(e["type"] == "start" for e in events(subscriber)), WAIT
    ), first.log
    started = next(e for e in events(subscriber) if e["type"] == "start")
    assert wait_until(lambda: path_for(tmp_path / "d" / "outbox.sqlite").exists())
    first.signal(signal.SIGKILL)
    first.wait()
    second = daemons(config)

    def closed(_: object) -> list[dict[str, Any]]:
        return [
            e
            for e in events(subscriber)
            if e["event_id"] == started["event_id"] and e["type"] == "end"
        ]

    assert subscriber.wait_for(lambda m: bool(closed(m)), WAIT), second.log
    (end,) = closed(None)
    assert end["reason"] == "restart"
    assert end["duration_seconds"] >= 0
    assert end["start_ts"] == started["start_ts"]
    before = [e for e in events(subscriber) if e["event_id"] == started["event_id"]]
    assert end["seq"] > max(e["seq"] for e in before if e["type"] != "end"), before
    assert "closing it (reason restart)" in second.log
    second.signal(signal.SIGTERM)
    assert second.wait() == EXIT_OK


# ---------------------------------------------------------------- signals and start-up


def handles_sighup(daemon: DaemonProcess) -> bool:
    """Whether the process ignores or catches SIGHUP yet (/proc/PID/status SigIgn, SigCgt)."""
    assert daemon.process is not None
    try:
        status = Path(f"/proc/{daemon.process.pid}/status").read_text(encoding="ascii")
    except OSError:
        return False
    bit = 1 << (signal.SIGHUP - 1)
    masks = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return any(int(masks.get(key, "0"), 16) & bit for key in ("SigIgn", "SigCgt"))


def test_sighup_never_exits(
    tmp_path: Path, assets: Assets, daemons: Callable[..., DaemonProcess]
) -> None:
    """SIGHUP while the model loads (before the daemon's handler exists) and while running
    (bundle reload, also with a bundle that no longer loads): the daemon keeps running."""
    config = write_config(tmp_path / "d", [machine("m1", assets.normal, assets.bundle)])
    daemon = daemons(config)
    # As early as the process handles SIGHUP at all (ignored, then caught): a fixed sleep
    # raced the interpreter's start on a loaded machine, where SIGHUP still kills by default.
    assert wait_until(lambda: handles_sighup(daemon), WAIT), daemon.log
    daemon.signal(signal.SIGHUP)  # during start-up
    assert daemon.wait_log("running: node"), daemon.log
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_log("reloaded bundle"), daemon.log
    for _ in range(3):
        daemon.signal(signal.SIGHUP)
        time.sleep(0.2)
    assert daemon.alive()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == EXIT_OK


@contextlib.contextmanager
def full_file_system(where: Path, size_kib: int = 256) -> Iterator[Path]:
    """A real full disk: a small tmpfs mounted at `where` and filled to the last block
    (needs root; skipped otherwise). Yields the filler file: delete it to free the space."""
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {mounted.stderr.decode().strip()}")
    try:
        filler = where / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield filler
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def stats_messages(sub: Subscriber) -> list[dict[str, Any]]:
    found = [json.loads(p) for p in payloads(sub, "stats")]
    for stats in found:
        jsonschema.validate(stats, stats_schema())
    return found


def test_full_disk_at_boot_degrades_publishes_and_recovers(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """/var full at boot: the daemon starts anyway (no exit 75 loop), detects, publishes its
    states and events directly, and says so in the retained stats; when space comes back the
    outbox is durable again without a restart, and the events after that are stored first."""
    with full_file_system(tmp_path / "var") as filler:
        outbox_path = tmp_path / "var" / "lib" / "outbox.sqlite"
        config = write_config(
            tmp_path / "d",
            [machine("m1", assets.faulty, assets.bundle)],
            port=broker.port,
            outbox={"path": str(outbox_path), "retry_seconds": 1},
        )
        daemon = daemons(config)
        assert subscriber.wait_for(
            lambda _: any(e["type"] == "start" for e in events(subscriber)), WAIT
        ), daemon.log
        assert "normal" in payloads(subscriber, "m1/state")
        assert "outbox degraded at start" in daemon.log
        assert subscriber.wait_for(
            lambda _: stats_messages(subscriber)[-1]["events_not_stored"] >= 1, WAIT
        )
        degraded = stats_messages(subscriber)[-1]
        assert degraded["outbox"] == "degraded"
        assert "full" in degraded["outbox_degraded_reason"]
        assert degraded["events_not_stored"] >= 1 and degraded["events_lost"] == 0
        assert daemon.alive()
        filler.unlink()  # the disk has room again
        assert subscriber.wait_for(
            lambda _: stats_messages(subscriber)[-1]["outbox"] == "durable", WAIT
        ), daemon.log
        assert "Outbox" in daemon.log and "works again" in daemon.log
        # The events after the recovery went through the (now working) outbox.
        not_stored = stats_messages(subscriber)[-1]["events_not_stored"]
        seen = len(events(subscriber))
        assert subscriber.wait_for(lambda _: len(events(subscriber)) > seen + 2, WAIT)
        last = stats_messages(subscriber)[-1]
        assert last["events_not_stored"] == not_stored and last["events_lost"] == 0
        assert last["outbox_degraded_reason"] is None
        assert outbox_path.is_file()
        # seq never repeats nor goes back across the switch from direct to durable.
        seqs = [e["seq"] for e in events(subscriber)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == EXIT_OK


def test_corrupt_outbox_at_boot_is_recovered_and_counted(
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """A power cut on bad flash left garbage: moved aside, a fresh outbox, counted in stats."""
    config = write_config(
        tmp_path / "d", [machine("m1", assets.faulty, assets.bundle)], port=broker.port
    )
    outbox_path = tmp_path / "d" / "outbox.sqlite"
    garbage = b"SQLite format 3\0" + bytes(range(256)) * 64
    outbox_path.write_bytes(garbage)
    daemon = daemons(config)
    assert subscriber.wait_for(
        lambda _: any(e["type"] == "start" for e in events(subscriber)), WAIT
    ), daemon.log
    assert subscriber.wait_for(
        lambda _: any(s["outbox_recovered_corrupt"] == 1 for s in stats_messages(subscriber)), WAIT
    )
    last = stats_messages(subscriber)[-1]
    assert last["outbox"] == "durable" and last["outbox_recovered_corrupt"] == 1
    [kept] = [p for p in outbox_path.parent.iterdir() if ".corrupt-" in p.name]
    assert kept.read_bytes() == garbage
    assert "is corrupt" in daemon.log
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == EXIT_OK


def test_configuration_that_can_never_work_exits_2(tmp_path: Path, assets: Assets) -> None:
    config = write_config(
        tmp_path / "d",
        [machine("m1", assets.normal, assets.bundle, threshold_scale=0)],
        mqtt={"port": True},
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge_asd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_USAGE
    assert "mqtt.port" in result.stderr and "machines.0.threshold_scale" in result.stderr


def test_outbox_path_that_can_never_work_exits_2(tmp_path: Path, assets: Assets) -> None:
    """Unlike a full disk, a file where the outbox's directory must be is never fixed by a
    retry: exit 2, naming the key."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the outbox directory must be", encoding="utf-8")
    config = write_config(
        tmp_path / "d",
        [machine("m1", assets.normal, assets.bundle)],
        outbox={"path": str(blocker / "outbox.sqlite")},
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge_asd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "outbox.path" in result.stderr and "is not a directory" in result.stderr


def test_io_error_reading_the_model_exits_for_a_retry(
    tmp_path: Path, assets: Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        write_config(tmp_path / "d", [machine("m1", assets.normal, assets.bundle)])
    )
    real = Path.read_bytes

    def flaky(self: Path) -> bytes:
        if self.suffix == ".onnx":
            raise OSError(errno.EIO, "Input/output error")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", flaky)
    with pytest.raises(StartupError) as info:
        Daemon(config)
    assert info.value.exit_code == EXIT_TEMPFAIL
    assert info.value.problems[0].key == "model"


def test_io_error_reading_a_bundle_exits_for_a_retry(
    tmp_path: Path, assets: Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        write_config(tmp_path / "d", [machine("m1", assets.normal, assets.bundle)])
    )
    real = Path.is_file

    def flaky(self: Path) -> bool:
        if self.name == META_FILE:
            raise OSError(errno.EIO, "Input/output error")
        return real(self)

    monkeypatch.setattr(Path, "is_file", flaky)
    with pytest.raises(StartupError) as info:
        Daemon(config)
    assert info.value.exit_code == EXIT_TEMPFAIL
    assert [p.key for p in info.value.problems] == ["machines.0.bundle"]


# ---------------------------------------------------------------- a microphone comes back


class _Flags:
    input_overflow = False


class _ReplugStream:
    def __init__(
        self, owner: _ReplugPortAudio, device: int, channels: int, callback: Any, **_: Any
    ) -> None:
        self.owner, self.device, self.channels, self.callback = owner, device, channels, callback
        self.active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            if self.owner.unplugged:
                self.active = False  # like PortAudio when the USB device goes away
                return
            self.callback(
                rng.normal(0, 0.1, (800, self.channels)).astype(np.float32), 800, None, _Flags()
            )
            self._stop.wait(0.05)

    def start(self) -> None:
        self.active = True
        self._thread.start()

    def abort(self) -> None:
        self._stop.set()
        self._thread.join(2)
        # Like PortAudio's stop on a stream whose device stalls: blocks until it lets go.
        self.owner.abort_released.wait()

    def close(self) -> None:
        pass


class _ReplugPortAudio:
    """A USB microphone that is unplugged and comes back under another device index."""

    class PortAudioError(Exception):
        pass

    def __init__(self) -> None:
        self.unplugged = False
        self.abort_released = threading.Event()
        self.abort_released.set()
        self.index = 3
        self.visible = self._devices()
        self.opened: list[int] = []

    def _devices(self) -> list[dict[str, Any]]:
        devices: list[dict[str, Any]] = [
            {
                "index": 0,
                "name": "HDA Intel",
                "max_input_channels": 2,
                "default_samplerate": 16000.0,
            }
        ]
        if not self.unplugged:
            devices.append(
                {
                    "index": self.index,
                    "name": "USB Mic",
                    "max_input_channels": 1,
                    "default_samplerate": 16000.0,
                }
            )
        return devices

    def query_devices(self) -> list[dict[str, Any]]:
        return self.visible

    def _terminate(self) -> None:
        self.visible = []

    def _initialize(self) -> None:
        self.visible = self._devices()  # PortAudio enumerates at initialisation only

    def check_input_settings(self, **_: Any) -> None:
        return None

    def InputStream(self, **kwargs: Any) -> _ReplugStream:  # noqa: N802 - mirrors sounddevice
        if self.unplugged or kwargs["device"] != self.index:
            raise self.PortAudioError("Invalid device [PaErrorCode -9996]")
        self.opened.append(kwargs["device"])
        return _ReplugStream(self, **kwargs)


def test_microphone_back_under_another_index_is_found_within_5_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    portaudio = _ReplugPortAudio()
    monkeypatch.setattr(sources, "_import_sounddevice", lambda: portaudio)
    monkeypatch.setattr(sources, "_PORTAUDIO", sources._PortAudioState())
    out: Any = __import__("queue").Queue(maxsize=1000)
    stop = threading.Event()
    health: list[tuple[float, bool]] = []
    supervisor = CaptureSupervisor(
        "USB Mic",
        [0],
        out,
        stop,
        no_audio_seconds=1.0,
        on_health=lambda ok, _msg: health.append((time.monotonic(), ok)),
    )
    supervisor.start()
    try:
        assert wait_until(lambda: supervisor.healthy, 10)
        portaudio.unplugged = True
        assert wait_until(lambda: not supervisor.healthy, 10)
        time.sleep(6.0)  # long enough for the back-off to reach its cap
        portaudio.unplugged = False
        portaudio.index = 7  # re-plugged into another port: a new PortAudio index
        back = time.monotonic()
        assert wait_until(lambda: supervisor.healthy, 10)
        assert time.monotonic() - back < 5.0
        assert portaudio.opened[0] == 3 and portaudio.opened[-1] == 7
        assert supervisor.is_alive()
    finally:
        stop.set()
        supervisor.join(5)
    blocks: list[CapturedBlock] = []
    while not out.empty():
        blocks.append(out.get_nowait())
    assert any(b.discontinuity for b in blocks[1:])  # the gap is marked


def test_rescans_come_back_when_an_abandoned_stream_stops_at_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream's stop blocks (abandoned after 2 s): PortAudio cannot be re-enumerated under
    it, so the microphone back under another index cannot be found yet; once the stuck stop
    returns, rescans are possible again and the microphone is found at its new index."""
    portaudio = _ReplugPortAudio()
    portaudio.abort_released.clear()
    monkeypatch.setattr(sources, "_import_sounddevice", lambda: portaudio)
    monkeypatch.setattr(sources, "_PORTAUDIO", sources._PortAudioState())
    out: Any = __import__("queue").Queue(maxsize=1000)
    stop = threading.Event()
    supervisor = CaptureSupervisor(
        "USB Mic", [0], out, stop, no_audio_seconds=1.0, on_health=lambda ok, _msg: None
    )
    supervisor.start()
    try:
        assert wait_until(lambda: supervisor.healthy, 10)
        portaudio.unplugged = True
        assert wait_until(lambda: not supervisor.healthy, 10)
        assert wait_until(lambda: sources._PORTAUDIO.stale, 10)  # a failed reopen
        portaudio.unplugged = False
        portaudio.index = 7
        time.sleep(6.0)  # several reopen attempts at the cached index 3, no rescan possible
        assert not supervisor.healthy and sources._PORTAUDIO.open_streams == 1
        portaudio.abort_released.set()  # the stuck stop returns at last
        back = time.monotonic()
        assert wait_until(lambda: supervisor.healthy, 10)
        assert time.monotonic() - back < 5.0
        assert portaudio.opened[-1] == 7
    finally:
        portaudio.abort_released.set()
        stop.set()
        supervisor.join(5)


def test_an_abandoned_stream_is_counted_until_its_stop_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`rescans_blocked_seconds` grows while a stop hangs and is 0 again once it returns."""
    portaudio = _ReplugPortAudio()
    portaudio.abort_released.clear()
    monkeypatch.setattr(sources, "_import_sounddevice", lambda: portaudio)
    monkeypatch.setattr(sources, "_PORTAUDIO", sources._PortAudioState())
    source = sources.SoundDeviceSource("USB Mic", channels=(0,), block_seconds=0.1)
    source.start()
    assert sources.rescans_blocked_seconds() == 0.0
    source.stop()  # abandoned after STREAM_STOP_TIMEOUT_SECONDS
    time.sleep(0.2)
    assert sources.rescans_blocked_seconds() >= 0.2
    portaudio.abort_released.set()
    assert wait_until(lambda: sources.rescans_blocked_seconds() == 0.0, 5)
    assert sources._PORTAUDIO.open_streams == 0


def test_missing_device_with_rescans_blocked_for_good_exits_non_zero(
    tmp_path: Path, assets: Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that never returns blocks device rescans until restart, so a microphone that comes
    back under another index would never be found: the daemon asks systemd for the restart."""
    portaudio = _ReplugPortAudio()
    portaudio.unplugged = True  # the machine's microphone is gone
    monkeypatch.setattr(sources, "_import_sounddevice", lambda: portaudio)
    monkeypatch.setattr(sources, "_PORTAUDIO", sources._PortAudioState())
    blocked = {"seconds": 0.0}
    monkeypatch.setattr(daemon_module, "rescans_blocked_seconds", lambda: blocked["seconds"])
    config = load_config(
        write_config(
            tmp_path / "d", [machine("m1", assets.normal, assets.bundle, device="USB Mic")]
        )
    )
    daemon = Daemon(config)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(daemon.run()), name="daemon-under-test")
    runner.start()
    try:
        time.sleep(2.0)
        assert runner.is_alive()  # knowingly waiting for its device: no exit
        blocked["seconds"] = daemon_module.HANG_EXIT_SECONDS + 1.0
        runner.join(WAIT)
        assert not runner.is_alive()
        assert result == [EXIT_FAILURE]
        assert daemon.failure is not None and "rescans" in daemon.failure
    finally:
        daemon.stop_event.set()
        runner.join(WAIT)


def test_dead_network_thread_exits_non_zero(
    tmp_path: Path, assets: Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MQTT network thread only dies of what its catch-alls cannot catch (SystemExit, a
    bug around them): the daemon notices within a second and exits 1."""
    config = load_config(
        write_config(tmp_path / "d", [machine("m1", assets.normal, assets.bundle)])
    )
    daemon = Daemon(config)
    publisher = daemon.publisher
    assert isinstance(publisher, MqttPublisher)
    started = threading.Event()

    def die() -> str | None:
        started.set()
        raise SystemExit("simulated death of the network thread")

    monkeypatch.setattr(publisher, "_connection", die)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(daemon.run()), name="daemon-under-test")
    runner.start()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert started.is_set()
    assert result == [EXIT_FAILURE]
    assert daemon.failure is not None and "mqtt-network thread died" in daemon.failure


# ---------------------------------------------------------------- a real microphone comes back

PRESS_SOURCE = "usb_press"
"""The PulseAudio source that plays the part of the USB microphone."""
PRESS_DEVICE = "usb_press_mic"
"""What the config names: a substring of the ALSA device name, as one names a USB card."""


def _alsa_devices(home: Path, *names: tuple[str, str]) -> None:
    """ALSA's device list (what PortAudio enumerates): `pcm.NAME` routed to PulseAudio source
    SOURCE for each (NAME, SOURCE), listed in this order (hint: PortAudio shows only those)."""
    text = "".join(
        f"pcm.{name} {{\n  type pulse\n  device {source}\n"
        f'  hint {{ show on description "{name}" }}\n}}\n'
        for name, source in names
    )
    (home / ".asoundrc").write_text(text, encoding="utf-8")


class PipeFeeder:
    """Writes a recording, looped, in real time into a PulseAudio pipe source's FIFO."""

    def __init__(self, fifo: Path, audio: np.ndarray) -> None:
        self.fifo = fifo
        self.pcm = np.round(np.clip(audio, -1.0, 1.0) * 32_767).astype("<i2").tobytes()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PipeFeeder:
        assert wait_until(self.fifo.exists, 10), f"{self.fifo} never appeared"
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        self._stop.clear()
        self._thread = threading.Thread(target=self._feed, args=(fd,), daemon=True)
        self._thread.start()
        return self

    def _feed(self, fd: int) -> None:
        chunk = round(0.02 * SAMPLE_RATE_HZ) * 2
        t0, sent, pos = time.monotonic(), 0, 0
        try:
            while not self._stop.is_set():
                due = t0 + sent / (2 * SAMPLE_RATE_HZ)
                if due > time.monotonic():
                    self._stop.wait(due - time.monotonic())
                    continue
                data = self.pcm[pos : pos + chunk] or self.pcm[:chunk]
                pos = (pos + chunk) % len(self.pcm)
                try:
                    os.write(fd, data)
                except BlockingIOError:
                    pass
                except OSError:
                    return  # the source was unloaded: the reader is gone
                sent += len(data)
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@pytest.mark.parametrize("writer_first", [False, True], ids=["unplugged", "stalled-then-unplugged"])
def test_real_microphone_back_under_another_index_is_found_within_5_s(
    writer_first: bool,
    tmp_path: Path,
    assets: Assets,
    broker: MosquittoBroker,
    subscriber: Subscriber,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """Real PortAudio (ALSA host API) over a real PulseAudio server: the microphone is an ALSA
    device routed to a PulseAudio pipe source. Unplugging removes the source and the ALSA
    device; re-plugging brings them back under another ALSA name and PortAudio index (another
    device now lists before it, as a USB card re-plugged into another port gets another card
    number). The daemon goes no_audio, finds it again within 5 s, and is back to normal."""
    pulse_fixture = pytest.importorskip("tests.pulse_fixture")
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("pulseaudio is not installed")
    home = tmp_path / "home"
    home.mkdir()
    with pulse_fixture.VirtualMic() as mic:
        env = {**mic.env, "HOME": str(home)}
        fifo = mic.base_dir / "press.fifo"

        def pactl(*args: str) -> str:
            result = subprocess.run(
                ["pactl", *args],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            )
            return result.stdout

        def load_press_source() -> str:
            return pactl(
                "load-module",
                "module-pipe-source",
                f"source_name={PRESS_SOURCE}",
                f"file={fifo}",
                "format=s16le",
                f"rate={SAMPLE_RATE_HZ}",
                "channels=1",
            ).strip()

        # PulseAudio (16.1 here) moves a capture stream whose source goes away to another
        # source: with the fixture's source present, the "unplugged" microphone was swapped
        # for it unnoticed (the daemon read its silence and said idle). A gateway with one
        # microphone has no other source: remove the fixture's.
        for line in pactl("list", "short", "modules").splitlines():
            if f"source_name={pulse_fixture.SOURCE_NAME}" in line:
                pactl("unload-module", line.split()[0])
        audio = np.asarray(read_wav(assets.normal))
        _alsa_devices(home, (f"{PRESS_DEVICE}_card1", PRESS_SOURCE))
        module = load_press_source()
        feeder = PipeFeeder(fifo, audio).start()
        config = write_config(
            tmp_path / "d",
            [{**machine("m1", assets.normal, assets.bundle), "device": PRESS_DEVICE}],
            port=broker.port,
        )
        daemon = daemons(config, env)
        try:
            assert subscriber.wait_for(
                lambda _: "normal" in payloads(subscriber, "m1/state"), WAIT
            ), daemon.log
            assert f"capturing from {PRESS_DEVICE}_card1 (#" in daemon.log
            # Unplug: the source and its ALSA device go away.
            feeder.stop()
            if writer_first:
                # The FIFO's writer goes first: the stream stalls (no error, no data), the
                # daemon gives up on it after no_audio_seconds, and PortAudio's stop() blocks.
                assert subscriber.wait_for(
                    lambda _: payloads(subscriber, "m1/state")[-1] == "no_audio", WAIT
                ), daemon.log
            pactl("unload-module", module)
            _alsa_devices(home, ("line_in", pulse_fixture.SOURCE_NAME))
            assert subscriber.wait_for(
                lambda _: payloads(subscriber, "m1/state")[-1] == "no_audio", WAIT
            ), daemon.log
            time.sleep(6.0)  # the reopen back-off reaches its cap
            # Re-plug under another name and index: another device now lists first.
            _alsa_devices(
                home,
                ("line_in", pulse_fixture.SOURCE_NAME),
                (f"{PRESS_DEVICE}_card2", PRESS_SOURCE),
            )
            module = load_press_source()
            feeder = PipeFeeder(fifo, audio).start()
            back = time.monotonic()
            assert wait_until(
                lambda: f"capturing from {PRESS_DEVICE}_card2 (#" in daemon.log, WAIT
            ), daemon.log
            found_after = time.monotonic() - back
            assert subscriber.wait_for(
                lambda _: payloads(subscriber, "m1/state")[-1] == "normal", WAIT
            ), daemon.log
            assert found_after < 5.0, f"found again after {found_after:.1f} s\n{daemon.log}"
            assert daemon.alive()
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == EXIT_OK
        finally:
            feeder.stop()
