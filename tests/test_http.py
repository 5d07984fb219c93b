"""The local HTTP endpoint: metrics, status JSON, clips (and nothing outside them)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_asd.service.http import StatusServer
from edge_asd.service.status import StatusBoard

pytest.importorskip("prometheus_client", reason="metrics need prometheus-client")

from edge_asd.service.metrics import DaemonTotals, Metrics

EVENT_ID = "0123456789abcdef0123456789abcdef"


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def served(tmp_path: Path, clock: _Clock) -> Iterator[tuple[StatusServer, StatusBoard, Metrics]]:
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / f"{EVENT_ID}.flac").write_bytes(b"fLaC-not-really")
    (clips / f"{EVENT_ID}.png").write_bytes(b"\x89PNG-not-really")
    (tmp_path / "secret.wav").write_bytes(b"outside the clips dir")
    metrics = Metrics(node_id="gw1", version="9.9", machines=["press"], clock=clock)
    board = StatusBoard("gw1", "9.9", metrics=metrics, clock=clock)
    server = StatusServer(board, bind="127.0.0.1", port=0, clips_dir=clips, metrics=metrics)
    server.start()
    try:
        yield server, board, metrics
    finally:
        server.stop()


def _open(url: str) -> http.client.HTTPResponse:
    assert url.startswith("http://127.0.0.1:")
    return urllib.request.urlopen(url, timeout=10)  # noqa: S310 - loopback http only


def _get(server: StatusServer, path: str) -> tuple[int, bytes, str]:
    """Raw GET (no client-side path normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        conn.close()


def test_metrics_text_has_the_metric_names(served) -> None:  # type: ignore[no-untyped-def]
    server, board, metrics = served
    board.machine_state("press", "normal")
    board.window("press", 1_700_000_000.0, 0.4, 0.5, -30.0)
    board.window("press", 1_700_000_000.5, 0.7, 0.5, -28.0)
    board.event("press", "start", EVENT_ID, 1_700_000_000.0, 0.7)
    metrics.inference(0.012, windows=2)
    metrics.totals(
        DaemonTotals(
            capture_overruns=3,
            dropped_windows=5,
            reconnects=1,
            outbox_depth=7,
            outbox_degraded=True,
            outbox_write_errors=4,
            outbox_recovered_corrupt=1,
            outbox_quarantined=2,
            events_lost=6,
        )
    )
    with _open(f"{server.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    for name in (
        "edge_asd_windows_processed_total",
        "edge_asd_score_ratio_bucket",
        "edge_asd_events_total",
        "edge_asd_machine_state",
        "edge_asd_capture_overruns_total",
        "edge_asd_dropped_windows_total",
        "edge_asd_inference_seconds_bucket",
        "edge_asd_outbox_depth",
        "edge_asd_mqtt_reconnects_total",
        "edge_asd_seconds_without_audio",
        "edge_asd_build_info",
    ):
        assert name in text, name
    assert 'edge_asd_windows_processed_total{machine="press"} 2.0' in text
    assert 'edge_asd_machine_state{machine="press",state="normal"} 1.0' in text
    assert 'edge_asd_machine_state{machine="press",state="anomalous"} 0.0' in text
    assert 'edge_asd_events_total{kind="start",machine="press"} 1.0' in text
    assert "edge_asd_outbox_depth 7.0" in text
    assert "edge_asd_outbox_degraded 1.0" in text
    assert "edge_asd_outbox_write_errors_total 4.0" in text
    assert "edge_asd_outbox_recovered_corrupt_total 1.0" in text
    assert "edge_asd_outbox_quarantined_total 2.0" in text
    assert "edge_asd_events_lost_total 6.0" in text
    assert "edge_asd_dropped_windows_total 5.0" in text
    assert "edge_asd_inference_seconds_count 2.0" in text
    assert 'edge_asd_score_ratio_bucket{le="1.5",machine="press"} 2.0' in text
    assert 'edge_asd_score_ratio_bucket{le="1.0",machine="press"} 1.0' in text


def test_seconds_without_audio_grows_without_windows(served, clock: _Clock) -> None:  # type: ignore[no-untyped-def]
    server, board, _ = served
    board.window("press", clock.now, 0.1, 0.5, -30.0)
    clock.now += 42.0
    _, body, _ = _get(server, "/metrics")
    assert 'edge_asd_seconds_without_audio{machine="press"} 42.0' in body.decode()


def test_status_json_reflects_updates(served, clock: _Clock) -> None:  # type: ignore[no-untyped-def]
    server, board, _ = served
    board.add_machine("fan", threshold=0.3)
    board.machine_state("press", "anomalous")
    board.environment("press", "+9.5 dB overall, most at 450-560 Hz (+12.1 dB)")
    board.window("press", clock.now - 700.0, 0.2, 0.5, -31.0)  # older than the history
    board.window("press", clock.now - 1.0, 0.9, 0.5, -25.0)
    board.window("press", clock.now, float("nan"), 0.5, float("-inf"))
    board.event("press", "start", EVENT_ID, clock.now - 3.0, 0.9)
    board.event("press", "update", EVENT_ID, clock.now - 2.0, 1.1)
    board.event(
        "press",
        "end",
        EVENT_ID,
        clock.now,
        1.2,
        "+9 dB at 2.8-3.6 kHz, steady",
        f"/var/lib/edge-asd/clips/{EVENT_ID}.flac",
    )
    with _open(f"{server.url}/api/status") as response:
        assert response.headers["Content-Type"] == "application/json"
        status = json.loads(response.read())
    assert status["node"] == "gw1"
    assert status["version"] == "9.9"
    fan, press = status["machines"]  # in the order first seen
    assert press["name"] == "press"
    assert press["state"] == "anomalous"
    assert press["environment"] == "+9.5 dB overall, most at 450-560 Hz (+12.1 dB)"
    assert press["score"] is None  # NaN is not JSON
    assert press["dbfs"] is None
    assert press["threshold"] == 0.5
    assert [p[1] for p in press["history"]] == [0.9]
    assert fan == {
        "name": "fan",
        "state": None,
        "score": None,
        "threshold": 0.3,
        "dbfs": None,
        "last_window": None,
        "environment": None,
        "history": [],
    }
    (event,) = status["events"]
    assert event["event_id"] == EVENT_ID
    assert event["machine"] == "press"
    assert event["start"] == clock.now - 3.0
    assert event["end"] == clock.now
    assert not event["ongoing"]
    assert event["peak"] == 1.2
    assert event["explanation"] == "+9 dB at 2.8-3.6 kHz, steady"
    assert event["clip"] == f"/clips/{EVENT_ID}.flac"
    assert event["spectrogram"] == f"/clips/{EVENT_ID}.png"
    assert event["clip_ready"] is True
    assert status["warnings"] == []


def test_node_warnings_are_shown_until_cleared(clock: _Clock) -> None:
    board = StatusBoard(clock=clock)
    board.set_warnings(("Outbox degraded: disk full",))
    assert board.snapshot()["warnings"] == ["Outbox degraded: disk full"]
    board.set_warnings(())
    assert board.snapshot()["warnings"] == []


def test_events_are_bounded_and_newest_first(clock: _Clock) -> None:
    board = StatusBoard(max_events=3, clock=clock)
    for n in range(5):
        board.event("press", "start", f"e{n}", clock.now + n, 1.0)
    assert [e["event_id"] for e in board.snapshot()["events"]] == ["e4", "e3", "e2"]
    assert all(e["ongoing"] for e in board.snapshot()["events"])


def test_clip_is_served(served) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served
    status, body, content_type = _get(server, f"/clips/{EVENT_ID}.flac")
    assert (status, body, content_type) == (200, b"fLaC-not-really", "audio/flac")
    status, _, content_type = _get(server, f"/clips/{EVENT_ID}.png")
    assert (status, content_type) == (200, "image/png")


@pytest.mark.parametrize(
    "path",
    [
        "/clips/../secret.wav",
        "/clips/..%2fsecret.wav",
        "/clips/%2e%2e/secret.wav",
        "/clips/..%2F..%2Fetc%2Fpasswd",
        "/clips//etc/passwd",
        "/clips/a/b.wav",
        "/clips/.hidden.wav",
        "/clips/x.txt",
        "/clips/",
    ],
)
def test_clip_path_traversal_is_refused(served, path: str) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served
    status, body, _ = _get(server, path)
    assert status in (400, 404)
    assert b"outside" not in body


def test_symlink_out_of_the_clips_dir_is_not_followed(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served
    os.symlink(tmp_path / "secret.wav", tmp_path / "clips" / "evil.wav")
    status, body, _ = _get(server, "/clips/evil.wav")
    assert status == 404
    assert b"outside" not in body


def test_missing_clip_and_unknown_paths_are_404(served) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served
    assert _get(server, "/clips/ffff.flac")[0] == 404
    assert _get(server, "/nope")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        _open(f"{server.url}/admin")
    assert info.value.code == 404


def test_page_is_served(served) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served
    status, body, content_type = _get(server, "/")
    assert status == 200
    assert content_type.startswith("text/html")
    assert b"/api/status" in body


def test_without_metrics_or_clips_dir(tmp_path: Path) -> None:
    server = StatusServer(StatusBoard(), port=0)
    server.start()
    try:
        assert _get(server, "/metrics")[0] == 404
        assert _get(server, f"/clips/{EVENT_ID}.flac")[0] == 404
        assert _get(server, "/api/status")[0] == 200
    finally:
        server.stop()


def test_port_in_use_raises_for_the_caller_to_report() -> None:
    first = StatusServer(StatusBoard(), port=0)
    first.start()
    try:
        with pytest.raises(OSError):
            StatusServer(StatusBoard(), port=first.port).start()
    finally:
        first.stop()


def test_new_daemon_modules_load_neither_scipy_torch_nor_prometheus_unasked() -> None:
    code = (
        "import sys\n"
        "import edge_asd.service.http, edge_asd.service.clips, edge_asd.service.status\n"
        "import edge_asd.detection.explain, edge_asd.mqtt.discovery\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'scipy', 'torch', 'matplotlib', 'prometheus_client'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.stdout.strip() == "[]"
