"""End to end, real parts only: the daemon as a subprocess, capturing from a PulseAudio virtual
microphone through PortAudio, publishing to a Mosquitto broker started by the test.

The microphone is fed in real time with a synthetic machine that runs normally, develops a
fault, and runs normally again; the broker is stopped and restarted during an anomaly, and the
daemon is SIGKILLed while the broker is down.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from edge_asd.audio.files import write_wav
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.mqtt.messages import event_schema, score_schema, stats_schema
from edge_asd_dev.synth import apply_fault, machine_sound
from tests.mqtt_fixture import MosquittoBroker, ReceivedMessage, Subscriber
from tests.pulse_fixture import VirtualMic

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("pulseaudio") is None
        or (shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists()),
        reason="needs pulseaudio and mosquitto (installed by the README's test command)",
    ),
]

NODE = "e2e"
MACHINE = "press"
PREFIX = f"edge-asd/{NODE}"
WINDOW_SECONDS = 1.0
HOP_SECONDS = 0.5
TRIGGER_WINDOWS = 2
RELEASE_WINDOWS = 2
LATENCY_TARGET_SECONDS = WINDOW_SECONDS + TRIGGER_WINDOWS * HOP_SECONDS + 0.3
SIGNAL_SECONDS = 240
"""Length of the pre-generated machine signal the microphone loops over."""
START_TIMEOUT = 60.0
EVENT_TIMEOUT = 20.0
EXIT_TIMEOUT = 5.0


class Machine:
    """Feeds the microphone with one continuous machine signal, normal or with a fault."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.normal = machine_sound(SIGNAL_SECONDS, rng=rng)
        self.faulty = apply_fault(self.normal.copy(), "bearing_impacts", rng=rng, level_db=6.0)
        self.faulty = apply_fault(self.faulty, "whine", rng=rng, level_db=0.0)
        self.position = 0
        self.anomalous = False
        self.onset: float | None = None
        self._lock = threading.Lock()

    def set_anomalous(self, anomalous: bool) -> float:
        with self._lock:
            self.anomalous = anomalous
            now = time.monotonic()
            if anomalous:
                self.onset = now
            return now

    def __call__(self, frames: int) -> np.ndarray:
        with self._lock:
            source = self.faulty if self.anomalous else self.normal
            start = self.position % (len(self.normal) - frames)
            self.position += frames
            return source[start : start + frames]


def _messages(sub: Subscriber, suffix: str) -> list[ReceivedMessage]:
    return sub.messages(f"{PREFIX}/{suffix}")


def _events(sub: Subscriber) -> list[dict]:
    return [json.loads(m.payload) for m in _messages(sub, f"{MACHINE}/event")]


def _validate_all(sub: Subscriber) -> int:
    checked = 0
    for suffix, schema in (
        (f"{MACHINE}/event", event_schema()),
        (f"{MACHINE}/score", score_schema()),
        ("stats", stats_schema()),
    ):
        for message in _messages(sub, suffix):
            jsonschema.validate(json.loads(message.payload), schema)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibrate on 60 s of the same machine running normally (another stretch of it)."""
    work = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(11)
    normal_dir = work / "normal"
    normal_dir.mkdir()
    for index in range(6):
        write_wav(normal_dir / f"n{index}.wav", machine_sound(10.0, rng=rng), SAMPLE_RATE_HZ)
    out = work / "bundle"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_asd",
            "calibrate",
            "--from-dir",
            str(normal_dir),
            "--out",
            str(out),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    return out


class Daemon:
    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path) -> None:
        self.config_path = config_path
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_asd", "run", "--config", str(self.config_path)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _pending_in_outbox(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        table = next(t for t in tables if "message" in t or "outbox" in t)
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


def test_daemon_end_to_end(bundle: Path, tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    mic = VirtualMic()
    mic.start()
    machine = Machine(seed=5)
    mic.set_source(machine)
    outbox = tmp_path / "outbox.sqlite"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "node_id": NODE,
                "log_level": "INFO",
                "stats_interval_seconds": 3,
                "machines": [
                    {
                        "name": MACHINE,
                        "device": mic.device,
                        "channel": 0,
                        "bundle": str(bundle),
                        "window_seconds": WINDOW_SECONDS,
                        "hop_seconds": HOP_SECONDS,
                        "trigger_windows": TRIGGER_WINDOWS,
                        "release_windows": RELEASE_WINDOWS,
                        "no_audio_seconds": 5,
                        "score_interval_seconds": 1.0,
                    }
                ],
                "mqtt": {"host": broker.host, "port": broker.port, "keepalive_seconds": 5},
                "outbox": {"path": str(outbox)},
            }
        )
    )
    env = {**os.environ, **mic.env, "PYTHONUNBUFFERED": "1"}
    daemon = Daemon(config_path, env, tmp_path / "daemon.log")
    sub = Subscriber(
        broker.host, broker.port, f"{PREFIX}/#", qos=1, client_id="e2e-watcher", clean_session=False
    )
    try:
        sub.start()
        daemon.start()

        # Retained online, then state normal while the machine runs normally.
        assert sub.wait_for_payload(f"{PREFIX}/availability", "online", START_TIMEOUT), daemon.log()
        assert sub.wait_for_payload(f"{PREFIX}/{MACHINE}/state", "normal", START_TIMEOUT), (
            daemon.log()
        )
        assert sub.wait_for(lambda m: len(_messages(sub, f"{MACHINE}/score")) >= 6, 30), (
            daemon.log()
        )
        assert _events(sub) == [], f"false alarm on normal audio: {_events(sub)}\n{daemon.log()}"

        # 1. An anomaly: start within the latency target, state follows, end after it stops.
        onset = machine.set_anomalous(True)
        assert sub.wait_for(
            lambda m: any(e["type"] == "start" for e in _events(sub)), EVENT_TIMEOUT
        ), daemon.log()
        start_msg = next(
            m
            for m in _messages(sub, f"{MACHINE}/event")
            if json.loads(m.payload)["type"] == "start"
        )
        latency = start_msg.received_monotonic - onset
        assert latency <= LATENCY_TARGET_SECONDS + 0.5, f"start after {latency:.2f} s"
        assert sub.wait_for_payload(f"{PREFIX}/{MACHINE}/state", "anomalous", 5)

        # 2. The broker goes away during the anomaly; the end happens while it is down.
        broker.stop()
        time.sleep(3)
        machine.set_anomalous(False)
        time.sleep(RELEASE_WINDOWS * HOP_SECONDS + WINDOW_SECONDS + 3)
        broker.start()
        assert sub.wait_for(
            lambda m: any(e["type"] == "end" for e in _events(sub)), EVENT_TIMEOUT + 30
        ), daemon.log()
        first = _events(sub)
        assert first[0]["type"] == "start" and first[-1]["type"] == "end"
        assert len({e["event_id"] for e in first}) == 1
        seqs = [e["seq"] for e in first]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
        assert sub.wait_for_payload(f"{PREFIX}/{MACHINE}/state", "normal", 10)

        # 3. Broker down, anomaly stored in the outbox, daemon SIGKILLed; restart both.
        time.sleep(3)
        broker.stop()
        machine.set_anomalous(True)
        deadline = time.monotonic() + EVENT_TIMEOUT
        while time.monotonic() < deadline and _pending_in_outbox(outbox) == 0:
            time.sleep(0.2)
        assert _pending_in_outbox(outbox) > 0, daemon.log()
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        stored = _pending_in_outbox(outbox)
        machine.set_anomalous(False)
        broker.start()
        daemon.start()
        assert sub.wait_for(
            lambda m: len({e["event_id"] for e in _events(sub)}) >= 2, EVENT_TIMEOUT + 30
        ), daemon.log()
        second_id = next(e for e in _events(sub) if e["event_id"] != first[0]["event_id"])
        assert second_id["type"] == "start"
        assert sub.wait_for(lambda m: _pending_in_outbox(outbox) == 0, 15)
        assert stored >= 1

        # 4. SIGTERM: retained stopped, exit code 0, promptly.
        assert sub.wait_for_payload(f"{PREFIX}/availability", "online", START_TIMEOUT)
        time.sleep(2)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(EXIT_TIMEOUT + 2) == 0, daemon.log()
        assert sub.wait_for(
            lambda m: (
                bool(_messages(sub, "availability"))
                and _messages(sub, "availability")[-1].payload == b"stopped"
            ),
            5,
        ), [m.payload for m in _messages(sub, "availability")]
        assert _validate_all(sub) > 10
        assert _messages(sub, "stats"), "no stats published"
    finally:
        daemon.kill()  # keep the microphone fed until the daemon has exited
        sub.close()
        mic.stop()
        broker.stop()
