"""Config validation: errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_asd.config import (
    CalibrationConfig,
    ConfigError,
    MachineConfig,
    default_client_id,
    detector_settings,
    load_config,
    parse_config,
)
from edge_asd.detection.detector import DetectorSettings
from edge_asd.detection.methods import SCORE_METHODS
from edge_asd.detection.vocabulary import RHO_SCOPES, THRESHOLD_METHODS

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _machine(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "pump-1", "device": "pulse", "bundle": "/tmp/b"}
    base.update(overrides)
    return base


def test_example_config_is_valid() -> None:
    config = load_config(REPO / "deploy" / "config.example.yaml")
    assert config.machines, "the example should show at least one machine"
    assert config.mqtt.topic_prefix == "edge-asd"


def test_calibration_example_is_valid() -> None:
    config = load_config(REPO / "calibration" / "calibration.example.yaml")
    assert config.calibration.min_windows >= 10


def test_examples_show_the_default_rho_scope_and_k() -> None:
    default = CalibrationConfig()
    for path in ("deploy/config.example.yaml", "calibration/calibration.example.yaml"):
        raw = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
        assert raw["calibration"]["rho_scope"] == default.rho_scope, path
        assert raw["calibration"]["k"] == default.k, path
    defaults = parse_config({}, source=Path("x.yaml")).calibration
    assert (defaults.rho_scope, defaults.k) == (default.rho_scope, default.k) == ("all", 1)


def test_defaults() -> None:
    config = parse_config({"machines": [_machine()]}, source=Path("x.yaml"))
    machine = config.machines[0]
    assert machine.window_seconds == 1.0 and machine.hop_seconds == 0.5
    assert config.mqtt.qos == 1 and config.calibration.scoring == "density"
    assert config.calibration.views == ["embedding"]
    listed = parse_config({"calibration": {"views": ["embedding", "transient"]}}, source=Path("x"))
    assert listed.calibration.views == ["embedding", "transient"]


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"machines": [_machine()], "bogus": 1}, "bogus", "unknown key"),
        ({"machines": [_machine(window_seconds=-1)]}, "machines.0.window_seconds", "greater"),
        ({"machines": [_machine(name="a/b")]}, "machines.0.name", "pattern"),
        ({"mqtt": {"port": 70000}}, "mqtt.port", "less than"),
        ({"mqtt": {"qos": 3}}, "mqtt.qos", "Input should be"),
        ({"calibration": {"scoring": "cosine"}}, "calibration.scoring", "density"),
        ({"calibration": {"rho_scope": "nearest"}}, "calibration.rho_scope", "other_groups"),
        ({"calibration": {"views": "all"}}, "calibration.views", "transient"),
        ({"calibration": {"views": ["embedding", "pitch"]}}, "calibration.views", "pitch"),
        ({"calibration": {"views": []}}, "calibration.views", "non-empty"),
        ({"calibration": {"views": 3}}, "calibration.views", "Input should be"),
        ({"machines": [_machine(hop_seconds=2.0)]}, "machines.0", "hop_seconds"),
        ({"machines": [_machine(), _machine(channel=1)]}, "(top level)", "unique"),
        ({"mqtt": {"password_file": "/a", "password_env": "B"}}, "mqtt", "not both"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, data: object, key: str, reason: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"  {key}:" in message
    assert reason in message


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("machines: [\n  - name: x\n  oops", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_password_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n", encoding="utf-8")
    config = parse_config({"mqtt": {"password_file": str(secret)}}, source=Path("c"))
    assert config.mqtt.resolve_password() == "s3cret"
    monkeypatch.setenv("EDGE_PW", "fromenv")
    config = parse_config({"mqtt": {"password_env": "EDGE_PW"}}, source=Path("c"))
    assert config.mqtt.resolve_password() == "fromenv"
    config = parse_config({"mqtt": {"password_env": "EDGE_PW_MISSING"}}, source=Path("c"))
    with pytest.raises(ConfigError, match="EDGE_PW_MISSING"):
        config.mqtt.resolve_password()


def test_machine_lookup() -> None:
    config = parse_config(
        {"machines": [_machine(), _machine(name="fan", channel=1)]}, source=Path("c")
    )
    assert config.machine("fan").channel == 1
    with pytest.raises(ConfigError, match="--machine"):
        config.machine(None)
    with pytest.raises(ConfigError, match="no machine named 'x'"):
        config.machine("x")


@pytest.mark.parametrize(
    ("key", "value", "registered"),
    [
        ("scoring", "cosine", SCORE_METHODS),
        ("rho_scope", "nearest", RHO_SCOPES),
        ("threshold_method", "median", THRESHOLD_METHODS),
    ],
)
def test_unregistered_names_list_the_registered_ones(
    tmp_path: Path, key: str, value: str, registered: tuple[str, ...]
) -> None:
    """The config does not re-list the vocabularies: its errors come from the registries."""
    path = _write(tmp_path, {"calibration": {key: value}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = next(x for x in str(info.value).splitlines() if x.startswith(f"  calibration.{key}:"))
    assert repr(value) in line
    assert line.endswith("expected one of: " + ", ".join(registered))
    for name in registered:  # every registered name is accepted
        assert getattr(CalibrationConfig.from_dict({key: name}), key) == name


def test_detector_settings_from_the_machine() -> None:
    machine = MachineConfig.from_dict(
        {"name": "m", "bundle": "/b", "trigger_windows": 3, "max_event_seconds": 60}
    )
    assert detector_settings(machine, 0.7) == DetectorSettings(
        threshold=0.7, trigger_windows=3, release_windows=4, max_event_seconds=60.0
    )
    # The machine section's defaults are the detector's own.
    default = MachineConfig.from_dict({"name": "m", "bundle": "/b"})
    assert detector_settings(default, 1.0) == DetectorSettings(threshold=1.0)


def test_client_id() -> None:
    config = parse_config({"node_id": "gw.hall-2"}, source=Path("c"))
    assert default_client_id("gw.hall-2") == "edge-asd-gw-hall-2"
    assert config.mqtt.client_id_for(config.node_id) == "edge-asd-gw-hall-2"
    config = parse_config({"node_id": "gw.hall-2", "mqtt": {"client_id": "mine"}}, source=Path("c"))
    assert config.mqtt.client_id_for(config.node_id) == "mine"


def test_shift_sections_default_off_and_are_validated(tmp_path: Path) -> None:
    from edge_asd.config import ConfigError, parse_config

    config = parse_config({}, source=tmp_path / "c.yaml")
    assert config.clips.dir is None  # no files written unless asked (tests, CI, read-only)
    assert config.http.port is None and config.http.bind == "127.0.0.1"
    assert config.homeassistant.discovery is False
    assert config.homeassistant.prefix == "homeassistant"
    for bad, key in (
        ({"http": {"port": 70000}}, "http.port"),
        ({"clips": {"max_total_mb": 0}}, "clips.max_total_mb"),
        ({"clips": {"pre_seconds": -1}}, "clips.pre_seconds"),
        ({"homeassistant": {"prefix": "a/#"}}, "homeassistant.prefix"),
        ({"homeassistant": {"discover": True}}, "homeassistant.discover"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config(bad, source=tmp_path / "c.yaml")
