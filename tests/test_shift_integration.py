"""The daemon with its features for the people on shift, real parts: a `wav:` recording with a
fault, a real Mosquitto broker, the HTTP endpoint on a free port.

One run checks the end event's clip (FLAC + PNG beside it) and explanation, /metrics and
/api/status while it runs, the controls over MQTT (mute, bad commands, learn of the event's
clip, persisted state) and the clean stop.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from paho.mqtt import publish as paho_publish

from edge_asd.audio.files import write_wav
from edge_asd.config import Config, parse_config
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.bundle import load_bundle, save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.mqtt.messages import EventMessage
from edge_asd.service.daemon import Daemon
from edge_asd_dev.synth import apply_fault, machine_sound
from tests.mqtt_fixture import (
    MosquittoBroker,
    Subscriber,
    mosquitto_broker,  # noqa: F401 - fixture
    mosquitto_path,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

NODE = "it"
MACHINE = "press"
BASE = f"edge-asd/{NODE}"
WAIT = 60.0
FAULT_START = 4.0
FAULT_SECONDS = 4.0


def _wait(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    clips = [Clip(f"n{i}", machine_sound(8.0, rng=rng)) for i in range(5)]
    bundle = calibrate(clips, Encoder(resolve_model(None)), Framing.from_seconds(), progress=False)
    assert bundle.band_profile is not None  # calibration measures the normal spectrum
    out = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(bundle, out)
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 s of the machine, with a whine from 4 s to 8 s."""
    rng = np.random.default_rng(9)
    audio = machine_sound(14.0, rng=rng)
    start, stop = (round(s * SAMPLE_RATE_HZ) for s in (FAULT_START, FAULT_START + FAULT_SECONDS))
    audio[start:stop] = apply_fault(audio[start:stop], "whine", rng=rng, level_db=6.0)
    path = tmp_path_factory.mktemp("rec") / "rec.wav"
    write_wav(path, audio, SAMPLE_RATE_HZ)
    return path


def _config(tmp_path: Path, broker: MosquittoBroker, bundle: Path, recording: Path) -> Config:
    return parse_config(
        {
            "node_id": NODE,
            "stats_interval_seconds": 1,
            "machines": [
                {
                    "name": MACHINE,
                    "device": f"wav:{recording}",
                    "bundle": str(bundle),
                    "decision": "hysteresis",
                    "trigger_windows": 2,
                    "release_windows": 2,
                    "no_audio_seconds": 2,
                    "detect_stops": False,
                }
            ],
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive_seconds": 5},
            "outbox": {"path": str(tmp_path / "state" / "outbox.sqlite")},
            "clips": {"dir": str(tmp_path / "clips"), "pre_seconds": 2, "post_seconds": 1},
            "http": {"port": 0, "bind": "127.0.0.1"},
            "homeassistant": {"discovery": True},
        },
        source=tmp_path / "config.yaml",
    )


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return response.status, response.headers["Content-Type"], response.read()


def _acks(sub: Subscriber, control: str, machine: str = MACHINE) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.messages(f"{BASE}/{machine}/cmd/{control}/state")]


def _command(broker: MosquittoBroker, control: str, payload: str, machine: str = MACHINE) -> None:
    paho_publish.single(
        f"{BASE}/{machine}/cmd/{control}",
        payload,
        qos=1,
        hostname=broker.host,
        port=broker.port,
    )


def test_clip_explanation_status_metrics_and_controls(
    mosquitto_broker: MosquittoBroker,  # noqa: F811 - the fixture
    tmp_path: Path,
    bundle_dir: Path,
    recording: Path,
) -> None:
    broker = mosquitto_broker
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    original_id = load_bundle(bundle).bundle_id
    config = _config(tmp_path, broker, bundle, recording)
    with Subscriber(broker.host, broker.port, f"{BASE}/#") as sub:
        daemon = Daemon(config)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(daemon.run()), name="daemon")
        thread.start()
        try:
            # ------------------------------------------------ the event, its clip and why
            def end_events() -> list[EventMessage]:
                return [
                    e
                    for e in (
                        EventMessage.from_json(m.payload)
                        for m in sub.messages(f"{BASE}/{MACHINE}/event")
                    )
                    if e.type == "end"
                ]

            assert _wait(lambda: bool(end_events())), sub.messages()
            end = end_events()[0]
            assert end.clip is not None and end.explanation
            clip = Path(end.clip)
            assert clip.is_absolute() and clip.parent == tmp_path / "clips"
            assert clip.name == f"{end.event_id}.flac"
            assert end.clip_url is not None and end.clip_url.endswith(f"/clips/{clip.name}")
            assert _wait(lambda: clip.is_file() and clip.with_suffix(".png").is_file(), 15)
            assert clip.stat().st_size > 1000
            assert clip.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            starts = [
                json.loads(m.payload)
                for m in sub.messages(f"{BASE}/{MACHINE}/event")
                if json.loads(m.payload)["type"] == "start"
            ]
            assert starts[0]["clip"] is None and starts[0]["explanation"] is None

            # ------------------------------------------------ the HTTP endpoint
            assert daemon.shift.server is not None
            url = daemon.shift.server.url
            status, content_type, body = _get(f"{url}/metrics")
            assert status == 200 and content_type.startswith("text/plain")
            metrics = body.decode()
            assert f'edge_asd_windows_processed_total{{machine="{MACHINE}"}}' in metrics
            assert "edge_asd_inference_seconds_count" in metrics
            assert f'edge_asd_events_total{{kind="end",machine="{MACHINE}"}}' in metrics
            assert "edge_asd_outbox_depth" in metrics
            assert "edge_asd_seconds_without_audio" in metrics
            status, _, body = _get(f"{url}/api/status")
            snapshot = json.loads(body)
            assert [m["name"] for m in snapshot["machines"]] == [MACHINE]
            event = next(e for e in snapshot["events"] if e["event_id"] == end.event_id)
            assert event["explanation"] == end.explanation
            assert event["clip"] == f"/clips/{end.event_id}.flac"
            status, content_type, body = _get(end.clip_url)
            assert (status, content_type) == (200, "audio/flac") and body[:4] == b"fLaC"

            # ------------------------------------------------ HA discovery is on the broker
            with Subscriber(broker.host, broker.port, "homeassistant/device/+/config") as ha:
                assert ha.wait_for(lambda msgs: len(msgs) >= 2, 10)

            # ------------------------------------------------ controls
            # The switches' current values are announced at start.
            assert _wait(lambda: any(a["value"] == "OFF" for a in _acks(sub, "mute")))
            assert _wait(lambda: any(a["value"] == "ON" for a in _acks(sub, "detection")))
            n = len(_acks(sub, "mute"))
            _command(broker, "mute", '{"seconds": 600}')
            assert _wait(lambda: len(_acks(sub, "mute")) > n)
            ack = _acks(sub, "mute")[-1]
            assert ack["ok"] is True and ack["value"] == "ON" and ack["until"] is not None
            assert sub.wait_for_payload(f"{BASE}/{MACHINE}/state", "muted", 10)
            # Out of range and malformed: refused with a reason, nothing changes.
            for payload, reason in (('{"seconds": 1e9}', "out of range"), ("{nope", "malformed")):
                n = len(_acks(sub, "mute"))
                _command(broker, "mute", payload)
                assert _wait(lambda n=n: len(_acks(sub, "mute")) > n)  # type: ignore[misc]
                ack = _acks(sub, "mute")[-1]
                assert ack["ok"] is False and reason in ack["reason"]
                assert ack["value"] == "ON"  # still muted
            assert daemon.shift.controls.muted(MACHINE)
            # An unknown machine: answered (not retained), nothing changes.
            _command(broker, "mute", "ON", machine="nope")
            assert _wait(lambda: bool(_acks(sub, "mute", machine="nope")))
            ack = _acks(sub, "mute", machine="nope")[-1]
            assert ack["ok"] is False and "unknown machine" in ack["reason"]
            unknown = sub.messages(f"{BASE}/nope/cmd/mute/state")[-1]
            assert not unknown.retain

            # Detection off: the state says so; on again: the detector's state comes back.
            _command(broker, "detection", "OFF")
            assert sub.wait_for_payload(f"{BASE}/{MACHINE}/state", "disabled", 10)
            assert _wait(lambda: _acks(sub, "detection")[-1]["value"] == "OFF")
            n = len(sub.messages(f"{BASE}/{MACHINE}/state"))
            _command(broker, "detection", "ON")
            assert _wait(lambda: _acks(sub, "detection")[-1]["value"] == "ON")
            # Still muted, so the state reads muted again (not the detector's normal).
            assert sub.wait_for(
                lambda msgs: (
                    [m.payload for m in msgs if m.topic == f"{BASE}/{MACHINE}/state"][n:]
                    == [b"muted"]
                ),
                10,
            )

            # Learn the event's clip as normal running: the bundle on disk changes and the
            # daemon reloads it.
            _command(broker, "learn", json.dumps({"event_id": end.event_id}))
            assert _wait(lambda: bool(_acks(sub, "learn")), 120)
            ack = _acks(sub, "learn")[-1]
            assert ack["ok"] is True, ack
            assert ack["value"] == end.event_id and ack["bundle_id"] != original_id
            assert load_bundle(bundle).bundle_id == ack["bundle_id"]
            assert _wait(lambda: daemon.machines[0].bundle.bundle_id == ack["bundle_id"], 10)
            assert load_bundle(bundle).band_profile is not None  # kept by learn
            # Learning an event without a clip is refused.
            _command(broker, "learn", '{"event_id": "0123abcd"}')
            assert _wait(lambda: len(_acks(sub, "learn")) > 1)
            assert _acks(sub, "learn")[-1]["ok"] is False
        finally:
            daemon.request_stop()
            thread.join(WAIT)
        assert result == [0]
        assert sub.wait_for_payload(f"{BASE}/availability", "stopped", 10)
    # Mute and detection survive a restart.
    saved = json.loads((tmp_path / "state" / "controls.json").read_text())
    assert saved["machines"][MACHINE]["muted_until"] > time.time()
    assert saved["machines"][MACHINE]["detection"] is True


def test_recalibrate_records_calibrates_and_swaps_the_bundle(
    mosquitto_broker: MosquittoBroker,  # noqa: F811 - the fixture
    tmp_path: Path,
    bundle_dir: Path,
    recording: Path,
) -> None:
    """`recalibrate {"seconds": N}`: N s of the live audio become the new bundle, on disk and in
    use; a second command while it records, and an out-of-range one, are refused."""
    broker = mosquitto_broker
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    original_id = load_bundle(bundle).bundle_id
    config = _config(tmp_path, broker, bundle, recording)
    with Subscriber(broker.host, broker.port, f"{BASE}/#") as sub:
        daemon = Daemon(config)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(daemon.run()), name="daemon")
        thread.start()
        try:
            assert _wait(lambda: daemon.counters.windows_processed > 0, 30)
            _command(broker, "recalibrate", '{"seconds": 5}')
            assert _wait(lambda: bool(_acks(sub, "recalibrate")), 20)
            assert _acks(sub, "recalibrate")[-1]["ok"] is False  # under the minimum
            _command(broker, "recalibrate", '{"seconds": 32}')
            assert _wait(lambda: len(_acks(sub, "recalibrate")) > 1, 20)
            accepted = _acks(sub, "recalibrate")[-1]
            assert accepted["ok"] is True and accepted["value"] == 32.0
            _command(broker, "recalibrate", "40")
            assert _wait(lambda: len(_acks(sub, "recalibrate")) > 2, 20)
            assert _acks(sub, "recalibrate")[-1]["ok"] is False  # one at a time
            assert _wait(lambda: len(_acks(sub, "recalibrate")) > 3, 120), _acks(sub, "recalibrate")
            done = _acks(sub, "recalibrate")[-1]
            assert done["ok"] is True, done
            assert done["bundle_id"] != original_id
            assert load_bundle(bundle).bundle_id == done["bundle_id"]
            assert _wait(lambda: daemon.machines[0].bundle.bundle_id == done["bundle_id"], 10)
        finally:
            daemon.request_stop()
            thread.join(WAIT)
        assert result == [0]


def test_a_port_in_use_leaves_the_daemon_without_the_page(
    tmp_path: Path, bundle_dir: Path, recording: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    from tests.test_daemon import FakePublisher

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse_config(
            {
                "node_id": NODE,
                "machines": [
                    {"name": MACHINE, "device": f"wav:{recording}", "bundle": str(bundle_dir)}
                ],
                "outbox": {"path": str(tmp_path / "outbox.sqlite")},
                "http": {"port": port},
            },
            source=tmp_path / "config.yaml",
        )
        daemon = Daemon(config, publisher=FakePublisher())
        try:
            daemon.shift.start()
            assert daemon.shift.server is None
            assert "running without the status page" in caplog.text
        finally:
            daemon.shift.stop()
            daemon.outbox.close()
