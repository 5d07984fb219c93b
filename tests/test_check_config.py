"""`edge-asd check-config`: every check `run` does, all problems at once, each naming its key;
`--json`, `--connect`, `--devices`; the config loader under a fuzzer."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_asd.audio import sources
from edge_asd.audio.files import write_wav
from edge_asd.config import ConfigError, load_config, parse_config
from edge_asd.constants import EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE, SAMPLE_RATE_HZ
from edge_asd.detection.bundle import save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.service.startup import host_problem, inspect_setup
from edge_asd_dev.synth import machine_sound
from tests.mqtt_fixture import MosquittoBroker, free_port, mosquitto_path

MODEL = "logmel-stats"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    clips = [Clip(f"n{i}", machine_sound(8.0, rng=rng)) for i in range(5)]
    out = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(calibrate(clips, Encoder(resolve_model(MODEL)), Framing.from_seconds()), out)
    return out


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wav") / "m.wav"
    write_wav(path, machine_sound(3.0, rng=np.random.default_rng(1)), SAMPLE_RATE_HZ)
    return path


def config_data(tmp_path: Path, bundle: Path, wav: Path, **top: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "node_id": "chk",
        "model": MODEL,
        "machines": [{"name": "m1", "device": f"wav:{wav}", "bundle": str(bundle)}],
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
        "outbox": {"path": str(tmp_path / "state" / "outbox.sqlite")},
    }
    data.update(top)
    return data


def check(tmp_path: Path, data: Any, *args: str) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "edge_asd", "check-config", "--config", str(path), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def keys(report: dict[str, Any], severity: str = "error") -> set[str]:
    return {p["key"] for p in report["problems"] if p["severity"] == severity}


def test_a_good_config_checks_out(tmp_path: Path, bundle: Path, wav: Path) -> None:
    code, report = check(tmp_path, config_data(tmp_path, bundle, wav))
    assert code == EXIT_OK and report["ok"], report
    assert report["problems"] == []
    summary = "\n".join(report["summary"])
    assert "machine m1" in summary and "outbox" in summary and f"wav:{wav}" in summary


def test_model_errors_all_at_once_each_naming_its_key(tmp_path: Path, bundle: Path) -> None:
    """`mqtt.port: true` (YAML's 1 to lax pydantic), `.inf`, a NUL byte in a path: all of them
    in one run, each with its key."""
    text = f"""
node_id: chk
machines:
  - name: m1
    device: "wav:/x\\0y.wav"
    bundle: {bundle}
    score_interval_seconds: .inf
    no_audio_seconds: .nan
    threshold: -1
mqtt:
  port: true
  qos: true
outbox:
  path: "/var/lib/edge-asd/out\\0box.sqlite"
"""
    code, report = check(tmp_path, text)
    assert code == EXIT_USAGE and not report["ok"]
    assert keys(report) == {
        "machines.0.device",
        "machines.0.score_interval_seconds",
        "machines.0.no_audio_seconds",
        "machines.0.threshold",
        "mqtt.port",
        "mqtt.qos",
        "outbox.path",
    }
    messages = {p["key"]: p["message"] for p in report["problems"]}
    assert "NUL" in messages["outbox.path"] and "NUL" in messages["machines.0.device"]
    assert "finite" in messages["machines.0.score_interval_seconds"]


def test_setup_problems_all_at_once(tmp_path: Path, bundle: Path, wav: Path) -> None:
    """Everything `run` would trip over, and what it would keep retrying, in one report."""
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n", encoding="utf-8")
    undecodable = tmp_path / "noise.wav"
    undecodable.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    corrupt = tmp_path / "state" / "outbox.sqlite"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a database" * 100)
    broken_bundle = tmp_path / "broken-bundle"
    broken_bundle.mkdir()
    data = config_data(tmp_path, bundle, wav)
    data["machines"] = [
        {"name": "m1", "device": f"wav:{undecodable}", "bundle": str(bundle)},
        {"name": "m2", "device": f"wav:{wav}", "bundle": str(broken_bundle)},
        {"name": "m3", "device": f"wav:{wav}", "channel": 1, "bundle": str(bundle)},
    ]
    data["machines"][2]["window_seconds"] = 2.0
    data["mqtt"] = {
        "host": "broker..plant",
        "username": "sensor",
        "password_env": "EDGE_ASD_NO_SUCH_VARIABLE",
        "tls": {"enabled": True, "ca_file": str(not_pem)},
    }
    code, report = check(tmp_path, data)
    assert code == EXIT_USAGE
    assert keys(report) == {
        "machines.0.device",
        "machines.1.bundle",
        "machines.2.window_seconds",
        "machines.2.device",  # the recording has no channel 1
        "mqtt.host",
        "mqtt.password_env",
        "mqtt.tls.ca_file",
        "outbox.path",
    }
    messages = {p["key"]: p["message"] for p in report["problems"]}
    assert "PEM" in messages["mqtt.tls.ca_file"]
    assert "empty label" in messages["mqtt.host"]
    assert "integrity" in messages["outbox.path"] or "not a sound" in messages["outbox.path"]
    # run recovers a corrupt outbox (moved aside, a fresh one): reported, but not blocking.
    assert "moves it aside" in messages["outbox.path"]
    blocking = {p["key"] for p in report["problems"] if p["blocks_run"]}
    assert "outbox.path" not in blocking
    assert "cannot be decoded" in messages["machines.0.device"]


def test_missing_bundle_says_which_calibrate_command_makes_it(
    tmp_path: Path, bundle: Path, wav: Path
) -> None:
    """A new user's first error: the key first, then the command that writes the bundle."""
    missing = tmp_path / "bundles" / "m1"
    data = config_data(tmp_path, bundle, wav)
    data["machines"][0]["bundle"] = str(missing)
    code, report = check(tmp_path, data)
    assert code == EXIT_USAGE and not report["ok"]
    assert keys(report) == {"machines.0.bundle"}
    message = report["problems"][0]["message"]
    assert "directory does not exist" in message
    config = tmp_path / "config.yaml"
    assert message.endswith(
        f"; make it with: edge-asd calibrate --config {config} --machine m1 --from-dir DIR "
        f"--out {missing}"
    ), message
    # Without a model to load, the bundle is still checked and the hint still given.
    data["model"] = str(tmp_path / "no-such-model.onnx")
    _, report = check(tmp_path, data)
    messages = {p["key"]: p["message"] for p in report["problems"]}
    assert "; make it with: edge-asd calibrate --config" in messages["machines.0.bundle"]
    # The plain text output names the key first.
    result = subprocess.run(
        [sys.executable, "-m", "edge_asd", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_USAGE
    assert f"error: machines.0.bundle: bundle {missing}: directory does not exist; make it" in (
        result.stdout + result.stderr
    )


def test_text_output_lists_every_problem(tmp_path: Path, bundle: Path, wav: Path) -> None:
    data = config_data(tmp_path, bundle, wav)
    data["mqtt"]["host"] = "broker..plant"
    data["machines"][0]["bundle"] = str(tmp_path / "nope")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "edge_asd", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_USAGE
    assert "error: mqtt.host:" in result.stderr
    assert "error: machines.0.bundle:" in result.stderr


def test_password_without_tls_is_a_warning(
    tmp_path: Path, bundle: Path, wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_ASD_CHECK_PASSWORD", "s3cret")
    data = config_data(tmp_path, bundle, wav)
    data["mqtt"].update({"username": "sensor", "password_env": "EDGE_ASD_CHECK_PASSWORD"})
    code, report = check(tmp_path, data)
    assert code == EXIT_OK and report["ok"]
    assert keys(report, "warning") == {"mqtt.tls.enabled"}
    assert "s3cret" not in json.dumps(report)


def test_bundle_threshold_must_be_positive(tmp_path: Path, bundle: Path, wav: Path) -> None:
    bad = tmp_path / "bad-bundle"
    bad.mkdir()
    for item in bundle.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    meta = json.loads((bad / "bundle.json").read_text())
    meta["threshold"] = 0.0
    (bad / "bundle.json").write_text(json.dumps(meta))
    data = config_data(tmp_path, bad, wav)
    code, report = check(tmp_path, data)
    assert code == EXIT_USAGE
    assert keys(report) == {"machines.0.bundle"}


def test_outbox_on_a_read_only_file_system_is_a_warning(
    tmp_path: Path, bundle: Path, wav: Path
) -> None:
    """`run` starts with the outbox degraded (a full or read-only /var at boot): a warning that
    says so, not an error."""
    data = config_data(tmp_path, bundle, wav, outbox={"path": "/sys/edge-asd-check/o.sqlite"})
    code, report = check(tmp_path, data)
    assert code == EXIT_OK
    assert report["ok"] is True
    [problem] = report["problems"]
    assert problem["key"] == "outbox.path" and problem["severity"] == "warning"
    assert problem["transient"] is True and problem["blocks_run"] is False
    assert "degraded" in problem["message"]


def test_outbox_path_that_can_never_work_is_an_error(
    tmp_path: Path, bundle: Path, wav: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    data = config_data(tmp_path, bundle, wav, outbox={"path": str(blocker / "o.sqlite")})
    code, report = check(tmp_path, data)
    assert code == EXIT_USAGE
    [problem] = report["problems"]
    assert problem["key"] == "outbox.path" and problem["severity"] == "error"
    assert "is not a directory" in problem["message"]


def test_existing_outbox_is_checked_and_writable(tmp_path: Path, bundle: Path, wav: Path) -> None:
    from edge_asd.mqtt.outbox import Outbox

    data = config_data(tmp_path, bundle, wav)
    with Outbox(data["outbox"]["path"]) as box:
        box.put("t", b"x", 1)
    code, report = check(tmp_path, data)
    assert code == EXIT_OK, report
    assert any("1 undelivered message" in line for line in report["summary"])
    with sqlite3.connect(data["outbox"]["path"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")
def test_connect_reaches_the_broker_or_says_why(tmp_path: Path, bundle: Path, wav: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        data = config_data(tmp_path, bundle, wav)
        data["mqtt"]["port"] = broker.port
        code, report = check(tmp_path, data, "--connect")
        assert code == EXIT_OK, report
        assert any("accepted the connection" in line for line in report["summary"])
    code, report = check(tmp_path, data, "--connect")  # the broker is gone now
    assert code == EXIT_TEMPFAIL
    assert keys(report) == {"mqtt.host"}


class _FakePortAudio:
    class PortAudioError(Exception):
        pass

    @staticmethod
    def query_devices() -> list[dict[str, Any]]:
        return [
            {"index": 0, "name": "USB Mic", "max_input_channels": 1, "default_samplerate": 48e3},
            {"index": 1, "name": "Speakers", "max_input_channels": 0, "default_samplerate": 48e3},
        ]


def test_devices_exist_with_their_channel(
    tmp_path: Path, bundle: Path, wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_import_sounddevice", lambda: _FakePortAudio)
    data = config_data(tmp_path, bundle, wav)
    data["machines"] = [
        {"name": "ok", "device": "usb mic", "bundle": str(bundle)},
        {"name": "ch", "device": "USB Mic", "channel": 1, "bundle": str(bundle)},
        {"name": "gone", "device": "Focusrite", "bundle": str(bundle)},
    ]
    report = inspect_setup(parse_config(data, source=tmp_path / "c.yaml"), check_devices=True)
    assert {p.key for p in report.errors} == {"machines.1.channel", "machines.2.device"}
    assert not any(p.blocks_run for p in report.errors)  # run waits for devices instead
    assert any("USB Mic (#0)" in line for line in report.lines)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("broker.plant", True),
        ("broker", True),
        ("10.0.0.7", True),
        ("::1", True),
        ("[fe80::1]", True),
        ("mqtt_broker.local.", True),
        ("bröker.plant", True),
        ("broker..plant", False),
        (".broker", False),
        ("broker-.plant", False),
        ("mqtt://broker", False),
        ("broker:1883", False),
        ("a" * 64 + ".plant", False),
        ("broker plant", False),
    ],
)
def test_host_syntax(host: str, ok: bool) -> None:
    assert (host_problem(host) is None) is ok


# ---------------------------------------------------------------- the loader under a fuzzer

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["wav:/nope.wav", "default", "/tmp/x\x00y", "3.1.1", "5", ".inf"]),
)
_KEYS = st.sampled_from(
    [
        "node_id",
        "log_level",
        "model",
        "stats_interval_seconds",
        "machines",
        "mqtt",
        "outbox",
        "calibration",
        "name",
        "device",
        "channel",
        "bundle",
        "port",
        "host",
        "qos",
        "protocol",
        "tls",
        "enabled",
        "ca_file",
        "path",
        "max_messages",
        "threshold",
        "threshold_scale",
        "hop_seconds",
        "window_seconds",
        "score_interval_seconds",
        "k",
        "unknown",
    ]
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_KEYS | st.text(max_size=5), children, max_size=6),
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_DOCUMENTS)
def test_fuzzed_documents_raise_only_config_error(document: Any) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(document, source=Path("fuzz.yaml"))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_fuzzed_files_raise_only_config_error(raw: bytes, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(raw)
    with contextlib.suppress(ConfigError):
        load_config(path)


@pytest.mark.parametrize(
    "text",
    [
        "a: 2001-13-01",  # PyYAML builds a date: ValueError
        "machines: " + "[" * 2000 + "]" * 2000,  # deeper than the recursion limit
        "mqtt: {port: !!binary 'xx'}",
        "\udcff",
    ],
)
def test_yaml_surprises_are_config_errors(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    with pytest.raises(ConfigError):
        load_config(path)
