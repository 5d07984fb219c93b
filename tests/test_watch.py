"""`edge-asd status` and `edge-asd tail` against a real broker holding retained messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
import yaml
from paho.mqtt import publish as paho_publish

from edge_asd.mqtt.messages import (
    EnvironmentMessage,
    EventMessage,
    ModelRef,
    StatsMessage,
    Topics,
    format_ts,
)
from edge_asd.mqtt.watch import NodeSnapshot, format_event, format_message, format_status
from tests.mqtt_fixture import (
    MosquittoBroker,
    mosquitto_broker,  # noqa: F401 - fixture
    mosquitto_path,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

NODE = "gw-watch"
BASE = f"edge-asd/{NODE}"
TS = 1_795_316_645.123  # 2026-11-22T03:04:05.123Z
TIMEOUT = 60


def _stats() -> str:
    return StatsMessage(
        node=NODE,
        ts=format_ts(TS),
        uptime_seconds=7500.0,
        windows_processed=15000,
        capture_overruns=0,
        overwritten_frames=0,
        dropped_windows=2,
        inference_ms_p50=4.21,
        inference_ms_p95=9.8,
        outbox_depth=0,
        outbox_discarded=0,
        outbox_write_errors=0,
        reconnects=1,
        version="0.1.0",
        machines={"press-1": "muted", "fan-2": "normal"},
    ).to_json()


def _end_event() -> EventMessage:
    return EventMessage(
        type="end",
        event_id="5b0c6c1e6f0e4a519b8e0d7d2f4b7a10",
        node=NODE,
        machine="press-1",
        seq=3,
        ts=format_ts(TS + 14),
        start_ts=format_ts(TS - 0.123 + 16),  # 03:04:21
        end_ts=format_ts(TS + 28),
        score=0.5,
        peak_score=9.1,
        threshold=1.2,
        windows_over=20,
        dbfs=-20.0,
        duration_seconds=12.0,
        model=ModelRef(name="m", version="1", sha256="0" * 64),
        bundle_id="b",
        clip="/var/lib/edge-asd/clips/5b0c6c1e6f0e4a519b8e0d7d2f4b7a10.flac",
        explanation="+9 dB at 2.8-3.6 kHz, steady",
    )


def _seed(broker: MosquittoBroker, availability: str = "online") -> None:
    mute_ack = {
        "ok": True,
        "reason": None,
        "value": "ON",
        "until": format_ts(TS + 3600),
        "ts": format_ts(TS),
    }
    messages = [
        (f"{BASE}/availability", availability),
        (f"{BASE}/press-1/state", "muted"),
        (f"{BASE}/fan-2/state", "normal"),
        (f"{BASE}/press-1/cmd/mute/state", json.dumps(mute_ack)),
        (f"{BASE}/stats", _stats()),
    ]
    for topic, payload in messages:
        paho_publish.single(
            topic, payload, qos=1, retain=True, hostname=broker.host, port=broker.port
        )


def _config(tmp_path: Path, broker: MosquittoBroker) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"node_id": NODE, "mqtt": {"host": broker.host, "port": broker.port}})
    )
    return path


def _cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_asd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


EXPECTED_STATUS = """\
node gw-watch: online (edge-asd 0.1.0, up 2 h 05 min, stats from 03:04:05)
  fan-2        normal
  press-1      muted         muted until 04:04:05
  windows 15000, inference 4.21/9.8 ms (p50/p95), outbox 0, reconnects 1, dropped windows 2, \
capture overruns 0
"""


def test_status_prints_the_retained_view_and_exits(
    mosquitto_broker: MosquittoBroker,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, mosquitto_broker)
    _seed(mosquitto_broker)
    result = _cli("status", "--config", str(config), "--utc")
    assert result.returncode == 0, result.stderr
    assert result.stdout == EXPECTED_STATUS
    # A stopped node: the last states, said to be the last, and exit status 1.
    paho_publish.single(
        f"{BASE}/availability",
        "stopped",
        qos=1,
        retain=True,
        hostname=mosquitto_broker.host,
        port=mosquitto_broker.port,
    )
    result = _cli("status", "--config", str(config), "--utc")
    assert result.returncode == 1
    assert result.stdout.startswith("node gw-watch: stopped (edge-asd 0.1.0, stats from")
    assert "the daemon is not running" in result.stdout
    # A node the broker never saw.
    result = _cli("status", "--config", str(config), "--node", "nobody")
    assert result.returncode == 1 and "nothing retained" in result.stdout


def test_status_without_a_broker_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1", "port": 1}}))
    result = _cli("status", "--config", str(path))
    assert result.returncode == 1
    assert "cannot connect to MQTT broker 127.0.0.1:1" in result.stderr


def test_tail_shows_current_states_then_live_events(
    mosquitto_broker: MosquittoBroker,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, mosquitto_broker)
    _seed(mosquitto_broker)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_asd", "tail", "--config", str(config), "--utc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first = [process.stdout.readline().rstrip("\n") for _ in range(3)]
        # The retained availability and states are the current view (order: the broker's).
        clock = r"\d\d:\d\d:\d\d"
        assert sorted(re.sub(clock, "T", line) for line in first) == [
            "fan-2 STATE T normal",
            "node gw-watch ONLINE T",
            "press-1 STATE T muted",
        ]
        # Live: a command answer and an event's end (with why and the clip).
        paho_publish.single(
            f"{BASE}/press-1/cmd/mute/state",
            json.dumps({"ok": False, "reason": "seconds 0 out of range", "value": "ON"}),
            hostname=mosquitto_broker.host,
            port=mosquitto_broker.port,
        )
        assert re.fullmatch(
            rf"press-1 COMMAND {clock} mute refused: seconds 0 out of range",
            process.stdout.readline().rstrip("\n"),
        )
        paho_publish.single(
            f"{BASE}/press-1/event",
            _end_event().to_json(),
            qos=1,
            hostname=mosquitto_broker.host,
            port=mosquitto_broker.port,
        )
        assert process.stdout.readline().rstrip("\n") == (
            "press-1 ALARM 03:04:21 peak 9.1 (+9 dB at 2.8-3.6 kHz, steady), ended after 12.0 s; "
            "clip /var/lib/edge-asd/clips/5b0c6c1e6f0e4a519b8e0d7d2f4b7a10.flac"
        )
        process.terminate()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_tail_count_and_line_formats() -> None:
    event = _end_event().to_dict()
    start = {**event, "type": "start", "score": 2.31, "clip": None, "explanation": None}
    assert format_event(start, tz=None) is not None
    assert format_event(start, tz=UTC) == "press-1 ALARM 03:04:21 score 2.31 (threshold 1.2)"
    assert format_event({**event, "type": "update"}, tz=UTC) is None
    assert format_status(NodeSnapshot("x")) == [
        "node x: nothing retained on the broker (never connected here, or another node_id, "
        "topic_prefix or broker?)"
    ]


def test_environment_in_status_and_tail() -> None:
    topics = Topics("edge-asd", NODE)
    changed = EnvironmentMessage(
        node=NODE,
        machine="press-1",
        ts=format_ts(TS),
        changed=True,
        level_change_db=9.5,
        change_db=8.2,
        margin_db=6.1,
        bands=[{"hz": [447, 562], "change_db": 12.1}],
    ).to_json()
    snapshot = NodeSnapshot(NODE)
    snapshot.add(topics, f"{BASE}/press-1/state", b"environment_changed")
    snapshot.add(topics, f"{BASE}/press-1/environment", changed.encode())
    lines = format_status(snapshot)
    assert "environment_changed" in lines[1]
    assert "surroundings changed: +9.5 dB overall, most at 447-562 Hz (+12.1 dB)" in lines[1]
    line = format_message(topics, f"{BASE}/press-1/environment", changed.encode(), now=TS, tz=UTC)
    assert line == (
        "press-1 ENVIRONMENT 03:04:05 changed: +9.5 dB overall, most at 447-562 Hz (+12.1 dB)"
    )
    cleared = json.dumps({"changed": False}).encode()
    assert format_message(topics, f"{BASE}/press-1/environment", cleared, now=TS, tz=UTC) == (
        "press-1 ENVIRONMENT 03:04:05 as calibrated"
    )
