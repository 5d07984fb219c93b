"""deploy/install.sh into a temporary root (offline), and the example config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SH = REPO_ROOT / "deploy" / "install.sh"
EXAMPLE_CONFIG = REPO_ROOT / "deploy" / "config.example.yaml"
UNIT_SOURCE = REPO_ROOT / "systemd" / "edge-asd.service"

INSTALL_TIMEOUT_SECONDS = 180
"""One install builds a wheel of the package; on a loaded 2-core CI box that takes seconds."""

CLI_TIMEOUT_SECONDS = 60

# Offline: the venv sees the packages of the interpreter running the tests, pip builds with
# them and may not download anything.
OFFLINE_ARGS = [
    "--no-apt",
    "--no-systemctl",
    "--system-site-packages",
    "--python",
    sys.executable,
    "--pip-args",
    "--no-deps --no-build-isolation --no-index --no-compile",
]

EXPECTED_EXAMPLE = """
node_id: gateway-01
log_level: INFO
model: null
stats_interval_seconds: 60
machines:
  - name: pump-1
    device: default
    channel: 0
    bundle: /var/lib/edge-asd/bundles/pump-1
    window_seconds: 1.0
    hop_seconds: 0.5
    decision: evidence
    threshold_scale: 1.0
    threshold: null
    trigger_windows: 2
    release_windows: 4
    detect_stops: true
    detect_environment: true
    startup_holdoff_seconds: 10
    max_event_seconds: 300
    no_audio_seconds: 10
    score_interval_seconds: 1.0
mqtt:
  host: localhost
  port: 1883
  topic_prefix: edge-asd
  client_id: null
  qos: 1
  keepalive_seconds: 60
  protocol: "5"
  username: null
  password_file: null
  password_env: null
  tls:
    enabled: false
    ca_file: null
    cert_file: null
    key_file: null
outbox:
  path: /var/lib/edge-asd/outbox.sqlite
  max_messages: 100000
  max_age_seconds: 604800
  retry_seconds: 30
homeassistant:
  discovery: false
  prefix: homeassistant
clips:
  dir: /var/lib/edge-asd/clips
  pre_seconds: 5
  post_seconds: 5
  max_total_mb: 500
  max_age_days: 30
http:
  port: null
  bind: 127.0.0.1
calibration:
  scoring: density
  k: 1
  threshold_method: gamma
  threshold_percentile: 0.995
  folds: 5
  min_windows: 60
  target_false_alarms_per_week: 1
  reference_quantile: 0.99
  rho_scope: all
  views: [embedding]
"""


def test_example_config_has_the_documented_keys_and_defaults() -> None:
    assert yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8")) == yaml.safe_load(
        EXPECTED_EXAMPLE
    )


def test_example_config_is_commented() -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    commented = [line for line in text.splitlines() if "#" in line]
    settings = [line for line in text.splitlines() if ":" in line.split("#")[0]]
    # Most settings carry an explanation, on their line or just above.
    assert len(commented) >= len(settings) // 2


@pytest.fixture(scope="module")
def package_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package source: pip builds in-tree and must not litter the repo."""
    pytest.importorskip("setuptools", reason="an offline build needs setuptools installed")
    try:  # setuptools >= 70.1 builds wheels itself; older ones need the wheel package
        import setuptools.command.bdist_wheel  # noqa: F401
    except ImportError:
        pytest.importorskip("wheel", reason="an offline build with old setuptools needs wheel")
    source = tmp_path_factory.mktemp("source")
    shutil.copy2(REPO_ROOT / "pyproject.toml", source / "pyproject.toml")
    shutil.copytree(
        REPO_ROOT / "edge_asd",
        source / "edge_asd",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    readme = REPO_ROOT / "README.md"
    if readme.exists():
        shutil.copy2(readme, source / "README.md")
    else:  # pyproject names a readme; it may not be written yet
        (source / "README.md").write_text("# edge-asd\n", encoding="utf-8")
    return source


def run_install(
    root: Path, *args: str, source: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(INSTALL_SH), "--root", str(root), *args]
    if source is not None:
        command += ["--source", str(source)]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
        env=env,
        cwd=root,
    )
    if check:
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


class Layout:
    """Where the installer puts things under a root (default prefix unless given)."""

    def __init__(self, root: Path, prefix: str = "/opt/edge-asd") -> None:
        self.prefix = root / prefix.lstrip("/")
        self.venv = self.prefix / "venv"
        self.config = root / "etc/edge-asd/config.yaml"
        self.state = root / "var/lib/edge-asd"
        self.unit = root / "etc/systemd/system/edge-asd.service"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, package_source: Path) -> Layout:
    root = tmp_path_factory.mktemp("root")
    run_install(root, *OFFLINE_ARGS, source=package_source)
    return Layout(root)


def test_config_written_from_example(installed: Layout) -> None:
    assert installed.config.read_bytes() == EXAMPLE_CONFIG.read_bytes()
    # Group-readable only: the file may name broker credentials.
    assert installed.config.stat().st_mode & 0o777 == 0o640


def test_unit_installed_unchanged_for_default_prefix(installed: Layout) -> None:
    assert installed.unit.read_text(encoding="utf-8") == UNIT_SOURCE.read_text(encoding="utf-8")
    # The unit's Documentation= points at the installed copy of docs/deploy.md.
    assert (installed.prefix / "docs" / "deploy.md").is_file()
    assert "Documentation=file:///opt/edge-asd/docs/deploy.md" in installed.unit.read_text(
        encoding="utf-8"
    )


def test_state_directory_created(installed: Layout) -> None:
    assert installed.state.is_dir()
    assert (installed.state / "bundles").is_dir()
    assert installed.state.stat().st_mode & 0o777 == 0o750


def test_venv_has_entry_point_for_installed_package(installed: Layout) -> None:
    entry_point = installed.venv / "bin" / "edge-asd"
    assert entry_point.is_file()
    assert os.access(entry_point, os.X_OK)
    assert "edge_asd.cli" in entry_point.read_text(encoding="utf-8")
    # The venv imports the installed copy, not the source tree (cwd is elsewhere).
    result = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import edge_asd; print(edge_asd.__file__)"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=True,
        cwd=installed.venv,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert Path(result.stdout.strip()).is_relative_to(installed.venv)
    version = subprocess.run(
        [str(entry_point), "--version"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=True,
        cwd=installed.venv,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert version.stdout.startswith("edge-asd ")


def test_no_torch_in_venv(installed: Layout) -> None:
    assert not list(installed.venv.glob("lib/python*/site-packages/torch"))


def test_custom_prefix_rerun_keeps_config_then_uninstall_then_purge(
    tmp_path: Path, package_source: Path
) -> None:
    # One lifecycle, with a non-default prefix so that the ExecStart rewrite is covered too.
    layout = Layout(tmp_path, prefix="/srv/asd")
    prefix_args = ["--prefix", "/srv/asd"]
    run_install(tmp_path, *OFFLINE_ARGS, *prefix_args, source=package_source)
    unit = layout.unit.read_text(encoding="utf-8")
    assert "ExecStart=/srv/asd/venv/bin/edge-asd run --config /etc/edge-asd/config.yaml" in unit
    assert "/opt/edge-asd" not in unit
    assert (layout.venv / "bin" / "edge-asd").is_file()

    edited = "node_id: my-gateway  # edited by the operator\n"
    layout.config.write_text(edited, encoding="utf-8")
    marker = layout.state / "outbox.sqlite"
    marker.write_bytes(b"state")

    second = run_install(tmp_path, *OFFLINE_ARGS, *prefix_args, source=package_source)
    assert layout.config.read_text(encoding="utf-8") == edited
    assert "keeping existing" in second.stdout
    assert f"unchanged: {layout.unit}" in second.stdout
    assert "+ install -D" not in second.stdout  # nothing of ours was rewritten
    assert marker.read_bytes() == b"state"
    assert (layout.venv / "bin" / "edge-asd").is_file()

    run_install(tmp_path, "--uninstall", "--no-systemctl", *prefix_args)
    assert not layout.unit.exists()
    assert not layout.venv.exists()
    assert not layout.prefix.exists()  # emptied, so removed
    assert layout.config.read_text(encoding="utf-8") == edited
    assert marker.read_bytes() == b"state"

    run_install(tmp_path, "--uninstall", "--purge", "--no-systemctl", *prefix_args)
    assert not layout.config.parent.exists()
    assert not layout.state.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option: --bogus"),
        (["--prefix"], "--prefix needs a value"),
        (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
        (["--purge"], "--purge only makes sense with --uninstall"),
        (["--prefix", "/opt/edge asd"], "may only contain"),
    ],
)
def test_bad_arguments_fail_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_install(tmp_path, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_root_directory_is_an_error(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL_SH), "--root", str(tmp_path / "nope"), "--no-apt"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr


def test_help_lists_every_option() -> None:
    result = subprocess.run(
        ["bash", str(INSTALL_SH), "--help"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=True,
    )
    for option in (
        "--prefix",
        "--root",
        "--no-apt",
        "--no-systemctl",
        "--source",
        "--system-site-packages",
        "--pip-args",
        "--start",
        "--uninstall",
        "--purge",
    ):
        assert option in result.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        ["shellcheck", str(INSTALL_SH)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout
