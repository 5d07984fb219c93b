"""What each entry point may import: the runtime CLI never loads torch, pydantic or the
pretrain package, and the daemon (`edge-asd run`) stays light: no scipy, onnx, tqdm, torch,
pydantic, pretraining or calibration code. Each check runs in a fresh interpreter, so that
nothing imported by the test process itself can hide an import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_asd.audio.files import write_wav
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd_dev.synth import machine_sound

TIMEOUT = 240
MODEL = "logmel-stats"
"""The smallest bundled encoder: these tests are about imports, not detection quality."""
CALIBRATION_SECONDS = 32.0
"""Just over the 60 windows (30.5 s at the 0.5 s hop) that calibration needs."""

HEAVY_FOR_THE_DAEMON = (
    "scipy",
    "onnx",
    "tqdm",
    "torch",
    # 12 MB with what it pulls in (docs/benchmarks.md); the config and payload models are
    # msgspec Structs. Only the pretraining recipes (train extra) use it.
    "pydantic",
    "pydantic_core",
    "edge_asd.pretrain",
    "edge_asd.detection.calibration",
    "edge_asd.offline",
)

# Prepended to every subprocess: `loaded(names)` lists the modules (or their submodules) that
# are in sys.modules.
_PRELUDE = """
import sys

def loaded(names):
    return sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names))
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch")
    rng = np.random.default_rng(4)
    normal = root / "normal"
    normal.mkdir()
    # FLAC, so that `calibrate --from-dir` is also checked to pick it up.
    write_wav(normal / "normal.flac", machine_sound(CALIBRATION_SECONDS, rng=rng), SAMPLE_RATE_HZ)
    test = root / "test.wav"
    write_wav(test, machine_sound(6.0, rng=rng), SAMPLE_RATE_HZ)
    return {"root": root, "normal": normal, "test": test}


@pytest.fixture(scope="module")
def bundle(audio: dict[str, Path]) -> Path:
    out = audio["root"] / "bundle"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "edge_asd", "calibrate"),
            *("--from-dir", str(audio["normal"]), "--out", str(out), "--model", MODEL),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_runtime_cli_never_imports_torch_pydantic_or_pretrain(
    audio: dict[str, Path], tmp_path: Path
) -> None:
    result = _run(
        f"""
        import contextlib, io, json
        from edge_asd.cli import main

        for command in ("run", "calibrate", "score"):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main([command, "--help"])
                except SystemExit as exc:
                    assert exc.code == 0, (command, exc.code)
            assert "usage: " in out.getvalue(), command
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(["--help"])
            except SystemExit:
                pass
        assert "pretrain" in out.getvalue(), "edge-asd --help must still list pretrain"
        bundle = {str(tmp_path / "bundle")!r}
        assert main(["calibrate", "--from-dir", {str(audio["normal"])!r}, "--out", bundle,
                     "--model", {MODEL!r}]) == 0
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["score", "--bundle", bundle, {str(audio["test"])!r}]) == 0
        line = json.loads(out.getvalue().splitlines()[-1])
        assert line["score"] > 0 and line["window_scores"], line
        heavy = ["torch", "pydantic", "pydantic_core", "edge_asd.pretrain"]
        print("LOADED", json.dumps(loaded(heavy)))
        """
    )
    assert "LOADED []" in result.stdout, result.stdout


def test_pretrain_is_reached_through_its_own_entry_point() -> None:
    result = _run(
        """
        import contextlib, io, json
        from edge_asd.cli import main

        assert not loaded(["edge_asd.pretrain"])
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(["pretrain", "--help"])
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        text = out.getvalue()
        assert text.startswith("usage: edge-asd pretrain"), text
        for action in ("train", "export", "cache-teacher", "verify-teacher"):
            assert action in text, action
        assert "edge_asd.pretrain.cli" in sys.modules
        print("LOADED", json.dumps(loaded(["torch"])))
        """
    )
    assert "LOADED []" in result.stdout, result.stdout


def test_daemon_stays_light(audio: dict[str, Path], bundle: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node_id": "arch",
                "model": MODEL,
                "stats_interval_seconds": 1,
                "machines": [
                    {"name": "m1", "device": f"wav:{audio['test']}", "bundle": str(bundle)}
                ],
                "mqtt": {"host": "127.0.0.1", "port": 1},
                "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            }
        )
    )
    # As `edge-asd run` does (cli.main -> run_daemon), with a publisher that records instead
    # of connecting, and the daemon stopped once it has scored audio.
    result = _run(
        f"""
        import json, threading, time
        from pathlib import Path

        from edge_asd.cli import _load_config, build_parser
        from edge_asd.mqtt.publisher import PublisherStats
        from edge_asd.service.daemon import Daemon

        class RecordingPublisher:
            connected = True

            def __init__(self):
                self.states, self.telemetry = [], []

            def start(self):
                pass

            def stop(self, timeout_seconds=2.0):
                pass

            def publish_event(self, machine, message):
                pass

            def publish_state(self, machine, state):
                self.states.append(str(state))

            def publish_telemetry(self, topic, payload, qos=0):
                self.telemetry.append(topic)
                return True

            def stats(self):
                return PublisherStats(
                    connected=True,
                    reconnects=0,
                    published=0,
                    acked=0,
                    telemetry_published=len(self.telemetry),
                    telemetry_dropped=0,
                    events_not_stored=0,
                    events_lost=0,
                    last_connect_error=None,
                )

        args = build_parser().parse_args(["run", "--config", {str(config)!r}])
        publisher = RecordingPublisher()
        daemon = Daemon(_load_config(args.config), publisher=publisher)
        thread = threading.Thread(target=daemon.run)
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            publisher.states and any(t.endswith("/score") for t in publisher.telemetry)
        ):
            time.sleep(0.05)
        daemon.request_stop()
        thread.join(30)
        assert not thread.is_alive()
        assert publisher.states, "the daemon published no state"
        print("LOADED", json.dumps(loaded({list(HEAVY_FOR_THE_DAEMON)!r})))
        """
    )
    assert "LOADED []" in result.stdout, result.stdout
