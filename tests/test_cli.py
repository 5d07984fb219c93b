"""The `edge-asd` command line, through subprocesses as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_asd.audio.files import write_wav
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd_dev.synth import apply_fault, machine_sound

TIMEOUT = 240
SUBCOMMANDS = ["calibrate", "score", "evaluate", "check-config", "demo", "run"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_asd", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def normal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("normal")
    rng = np.random.default_rng(1)
    for i in range(6):
        write_wav(directory / f"normal_{i}.wav", machine_sound(8.0, rng=rng), SAMPLE_RATE_HZ)
    return directory


@pytest.fixture(scope="module")
def bundle_dir(normal_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "machine"
    result = _cli("calibrate", "--from-dir", str(normal_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "threshold" in result.stdout
    return out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command: str) -> None:
    result = _cli(command, "--help")
    assert result.returncode == 0
    assert "usage: edge-asd " + command in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = _cli()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr


def test_calibrate_writes_bundle(bundle_dir: Path) -> None:
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert meta["threshold"] > 0
    assert (bundle_dir / "bank.npz").is_file()


def test_score_json_lines_and_bad_file(bundle_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    normal = machine_sound(6.0, rng=rng)
    faulty = apply_fault(machine_sound(6.0, rng=rng), "whine", rng=rng, level_db=0.0)
    write_wav(tmp_path / "normal.wav", normal, SAMPLE_RATE_HZ)
    write_wav(tmp_path / "faulty.wav", faulty, SAMPLE_RATE_HZ)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    result = _cli(
        "score",
        "--bundle",
        str(bundle_dir),
        str(tmp_path / "normal.wav"),
        str(tmp_path / "corrupt.wav"),
        str(tmp_path / "faulty.wav"),
    )
    assert result.returncode == 1  # one file failed; the others were still scored
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["file"]).name for line in lines] == [
        "normal.wav",
        "corrupt.wav",
        "faulty.wav",
    ]
    assert "error" in lines[1] and "corrupt.wav" in lines[1]["error"]
    assert lines[2]["score"] > lines[0]["score"]
    assert lines[2]["anomalous"] and not lines[0]["anomalous"]
    assert len(lines[0]["window_scores"]) == 11  # 6 s, 1 s windows, 0.5 s hop
    result = _cli(
        "score", "--aggregate", "max", "--bundle", str(bundle_dir), str(tmp_path / "normal.wav")
    )
    line = json.loads(result.stdout)
    assert line["score"] == pytest.approx(max(line["window_scores"]), abs=1e-5)


def test_calibrate_refuses_too_little_audio(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_wav(tmp_path / "short.wav", machine_sound(5.0, rng=rng), SAMPLE_RATE_HZ)
    result = _cli("calibrate", "--from-dir", str(tmp_path), "--out", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "too little audio" in result.stderr
    assert not (tmp_path / "b").exists()


def test_calibrate_refuses_silence(tmp_path: Path) -> None:
    write_wav(tmp_path / "silent.wav", np.zeros(40 * SAMPLE_RATE_HZ, np.float32), SAMPLE_RATE_HZ)
    result = _cli("calibrate", "--from-dir", str(tmp_path), "--out", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "silen" in result.stderr.lower()


def test_calibrate_bad_dir_and_bad_model(tmp_path: Path, normal_dir: Path) -> None:
    result = _cli("calibrate", "--from-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "nope" in result.stderr
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    result = _cli(
        "calibrate",
        "--from-dir",
        str(normal_dir),
        "--out",
        str(tmp_path / "b"),
        "--model",
        str(bogus),
    )
    assert result.returncode == 2 and "bogus.onnx" in result.stderr


def test_check_config_errors_name_the_key(tmp_path: Path, bundle_dir: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"machines": [{"name": "m", "bundle": str(bundle_dir), "trigger_windows": 0}]}
        )
    )
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "machines.0.trigger_windows" in result.stderr
    config.write_text(yaml.safe_dump({"machines": [{"name": "m", "bundle": str(tmp_path / "x")}]}))
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "machines.0.bundle" in result.stderr
    config.write_text(yaml.safe_dump({"machines": [{"name": "m", "bundle": str(bundle_dir)}]}))
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_demo_finds_the_fault() -> None:
    result = _cli("demo")
    assert result.returncode == 0, result.stderr
    assert "ANOMALY detected from" in result.stdout


def test_runtime_never_imports_torch(tmp_path: Path, normal_dir: Path) -> None:
    code = (
        "import sys\n"
        "from edge_asd.cli import main\n"
        f"assert main(['calibrate', '--from-dir', {str(normal_dir)!r}, '--out', "
        f"{str(tmp_path / 'b')!r}]) == 0\n"
        "assert main(['demo']) == 0\n"
        "import edge_asd.service.daemon, edge_asd.offline.evaluation\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
        "print('no torch')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout


def test_evaluate_rho_scope_option() -> None:
    from edge_asd.detection.vocabulary import RHO_SCOPES

    result = _cli("evaluate", "--help")
    assert "--rho-scope {" + ",".join(RHO_SCOPES) + "}" in result.stdout
    bad = _cli("evaluate", "root", "--out", "o", "--rho-scope", "nearest")
    assert bad.returncode == 2
    assert "--rho-scope: invalid choice: 'nearest'" in bad.stderr


def test_choices_come_from_the_registries_and_the_parser_leaves_numpy_unloaded() -> None:
    from edge_asd.detection.methods import SCORE_METHODS
    from edge_asd.detection.vocabulary import AGGREGATES

    evaluate_help = _cli("evaluate", "--help").stdout
    assert "--scoring {" + ",".join(SCORE_METHODS) + "}" in evaluate_help
    assert "--aggregate {" + ",".join(AGGREGATES) + "}" in evaluate_help
    assert "--aggregate {" + ",".join(AGGREGATES) + "}" in _cli("score", "--help").stdout
    # `run` limits the BLAS threads after parsing: that only works if numpy is not loaded yet.
    code = (
        "import sys\n"
        "from edge_asd.cli import build_parser\n"
        "build_parser().parse_args(['run', '--config', 'c.yaml'])\n"
        "print(sorted(m for m in ('numpy', 'scipy', 'onnxruntime') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_from_dir_takes_wav_and_flac(tmp_path: Path) -> None:
    from edge_asd.cli import UsageError, _wav_files

    (tmp_path / "sub").mkdir()
    for name in ("b.WAV", "sub/a.flac", "c.txt", "d.ogg"):
        (tmp_path / name).write_bytes(b"")
    assert _wav_files(tmp_path) == [tmp_path / "b.WAV", tmp_path / "sub" / "a.flac"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no \.wav or \.flac files"):
        _wav_files(tmp_path / "empty")
