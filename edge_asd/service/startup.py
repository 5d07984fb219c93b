"""Everything `run` resolves and checks before it starts, in one place: the model, each machine's
bundle and detection settings, the MQTT credentials and (optionally) the audio devices.

`edge-asd run`, `edge-asd check-config` and `edge-asd replay` all build their machines here, so a
config that checks out is the one that runs, and a replay runs the daemon's exact pipeline.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import re
import shlex
import sqlite3
import ssl
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

from edge_asd.config import Config, ConfigError, MachineConfig, detector_settings
from edge_asd.constants import EXIT_TEMPFAIL, EXIT_USAGE, seconds_to_samples
from edge_asd.detection.bundle import Bundle, BundleError, load_bundle
from edge_asd.detection.detector import DetectorSettings
from edge_asd.detection.pipeline import MachinePipeline
from edge_asd.detection.running import RunningSettings
from edge_asd.model.contract import ModelError
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model

_LOGGER = logging.getLogger(__name__)

_MAX_HOSTNAME: Final = 253
_MAX_LABEL: Final = 63
_LABEL_RE: Final = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?$")
_WAV_CHECK_READ_SECONDS: Final = 0.5


Severity = Literal["error", "warning"]

TRANSIENT_ERRNOS: Final = frozenset(
    {
        errno.EIO,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ENOMEM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ENOLCK,
    }
)
"""I/O failures that may go away by themselves (a full or still read-only /var at boot, a
flaky SD card, an NFS hiccup): `run` exits with EXIT_TEMPFAIL so that systemd retries."""
_TRANSIENT_SQLITE: Final = (
    "disk i/o error",
    "disk is full",
    "unable to open",
    "readonly",
    "locked",
)
MIN_FREE_BYTES: Final = 1024 * 1024
"""Less free space than this where the outbox lives is reported as a (transient) problem."""
BROKER_CHECK_TIMEOUT_SECONDS: Final = 10.0
_PERMANENT_PATH_ERRNOS: Final = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})
"""A path that can never hold the outbox; any other failure to open it (read-only or full
/var at boot, permissions being fixed by a deployment) is worth a retry by systemd."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, named by its key (``machines.0.bundle``)."""

    key: str
    message: str
    severity: Severity = "error"
    transient: bool = False
    """It may go away by itself (I/O error, full disk): `run` exits EXIT_TEMPFAIL, not 2."""
    blocks_run: bool = True
    """`run` refuses to start with it. False for what `run` retries by itself (a missing
    audio device, a broker host that does not resolve): detection goes on meanwhile."""

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "message": self.message,
            "severity": self.severity,
            "transient": self.transient,
            "blocks_run": self.blocks_run,
        }

    @classmethod
    def from_text(cls, text: str, *, transient: bool = False) -> Problem:
        """From a "key: message" text (the form every StartupError message had)."""
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_.]*): (.*)$", text, flags=re.DOTALL)
        if match is None:
            return cls("(setup)", text, transient=transient)
        return cls(match.group(1), match.group(2), transient=transient)


class StartupError(Exception):
    """The daemon cannot start: bad model, bundle, outbox or settings. Carries every problem
    found (`problems`), each naming its key; the message lists them one per line."""

    def __init__(
        self, problems: str | Problem | Sequence[Problem], *, transient: bool = False
    ) -> None:
        if isinstance(problems, str):
            items = [Problem.from_text(problems, transient=transient)]
        elif isinstance(problems, Problem):
            items = [problems]
        else:
            items = list(problems)
        super().__init__("\n".join(str(p) for p in items))
        self.problems = items

    @property
    def transient(self) -> bool:
        """Every problem may go away by itself: worth a restart by systemd."""
        return all(p.transient for p in self.problems)

    @property
    def exit_code(self) -> int:
        return EXIT_TEMPFAIL if self.transient else EXIT_USAGE


def is_transient(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from (cause or context, also when raised
    `from None`), is an I/O failure that may go away by itself."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and any(
            marker in str(current).lower() for marker in _TRANSIENT_SQLITE
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def open_encoder(config: Config) -> Encoder:
    try:
        return Encoder(resolve_model(config.model))
    except (ModelError, OSError) as exc:
        raise StartupError(f"model: {exc}", transient=is_transient(exc)) from None


def calibrate_hint(machine: MachineConfig, config_path: Path | None) -> str:
    """Where the machine's bundle directory does not exist, "; make it with: edge-asd
    calibrate ..." (the command that writes it, from recordings in a DIR to choose); else ""."""
    if Path(machine.bundle).is_dir():
        return ""
    command = ["edge-asd", "calibrate"]
    if config_path is not None:
        command += ["--config", shlex.quote(str(config_path))]
        command += ["--machine", shlex.quote(machine.name)]
    command += ["--from-dir", "DIR", "--out", shlex.quote(str(machine.bundle))]
    return "; make it with: " + " ".join(command)


def _load_machine_bundle(
    index: int, machine: MachineConfig, encoder: Encoder, source: Path | None = None
) -> Bundle:
    key = f"machines.{index}"
    window = seconds_to_samples(machine.window_seconds)
    if window != encoder.info.window_samples:
        raise StartupError(
            f"{key}.window_seconds: {machine.window_seconds} s = {window} samples, but model "
            f"{encoder.info.name} takes {encoder.info.window_samples}-sample windows"
        )
    try:
        bundle = load_bundle(machine.bundle, model=encoder.info)
    except (BundleError, OSError) as exc:
        # An OSError escapes load_bundle where a stat fails with EIO (is_file() only hides
        # ENOENT and the like): a flaky disk, worth a retry.
        raise StartupError(
            f"{key}.bundle: {exc}{calibrate_hint(machine, source)}", transient=is_transient(exc)
        ) from None
    if bundle.window_samples != window:
        raise StartupError(
            f"{key}.bundle: {machine.bundle} was calibrated with {bundle.window_samples}-sample "
            f"windows but window_seconds is {machine.window_seconds}; recalibrate"
        )
    return bundle


@dataclass(frozen=True)
class MachineSetup:
    """One machine, resolved: its config, bundle and the detection it runs."""

    index: int
    config: MachineConfig
    bundle: Bundle
    detector: DetectorSettings

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    @property
    def decision(self) -> str:
        return "evidence" if self.detector.evidence is not None else "hysteresis"

    def describe(self) -> str:
        machine, bundle = self.config, self.bundle
        if self.detector.evidence is not None:
            ev = self.detector.evidence
            rule = (
                f"evidence (reference {ev.reference:.4f}, alarm level {ev.alarm_level:.2f}, "
                f"gross {ev.gross_score:.4f}"
            )
            if bundle.target_false_alarms_per_week is not None:
                rule += f", budget {bundle.target_false_alarms_per_week:g} false alarms/week"
            rule += ")"
        else:
            rule = f"hysteresis (threshold {self.threshold:.4f}, {machine.trigger_windows} windows)"
        stops = "on" if machine.detect_stops else "off"
        if not machine.detect_environment:
            environment = "off"
        elif bundle.environment is None:
            environment = "off (bundle without an environment profile: recalibrate)"
        else:
            environment = f"on (margin {bundle.environment.enter_db:.1f} dB)"
        return (
            f"machine {machine.name}: device {machine.device!r} channel {machine.channel}, "
            f"bundle {bundle.bundle_id} ({len(bundle.embeddings)} windows, {bundle.method}), "
            f"{rule}, stop detection {stops}, environment monitor {environment}"
        )

    def pipeline(self, encoder: Encoder) -> MachinePipeline:
        """A fresh pipeline for this machine (the daemon's, replay's)."""
        running = (
            RunningSettings(holdoff_seconds=self.config.startup_holdoff_seconds)
            if self.config.detect_stops
            else None
        )
        return MachinePipeline.from_bundle(
            self.bundle,
            encoder,
            hop_samples=seconds_to_samples(self.config.hop_seconds),
            detector=self.detector,
            running=running,
            detect_environment=self.config.detect_environment,
        )


def machine_setup(
    index: int, machine: MachineConfig, encoder: Encoder, source: Path | None = None
) -> MachineSetup:
    bundle = _load_machine_bundle(index, machine, encoder, source)
    if machine.threshold is not None:
        threshold = machine.threshold
    else:
        threshold = bundle.threshold * machine.threshold_scale
    try:
        detector = detector_settings(machine, threshold, bundle.evidence)
    except ValueError as exc:
        raise StartupError(
            f"machines.{index}.bundle: {machine.bundle}: {exc}; recalibrate"
        ) from None
    for what, value in (("threshold", threshold), ("decision threshold", detector.threshold)):
        if not (math.isfinite(value) and value > 0):
            # A window score is a distance (>= 0): a threshold <= 0 alarms on every window.
            raise StartupError(
                f"machines.{index}.bundle: {machine.bundle} with threshold_scale "
                f"{machine.threshold_scale} gives {what} {value!r}; it must be a finite "
                "number > 0: recalibrate"
            )
    if machine.decision == "evidence" and bundle.evidence is None and machine.threshold is None:
        _LOGGER.warning(
            "%s: bundle %s predates the evidence decision; using hysteresis until it is "
            "recalibrated",
            machine.name,
            machine.bundle,
        )
    return MachineSetup(index, machine, bundle, detector)


def machine_setups(config: Config, encoder: Encoder) -> list[MachineSetup]:
    if not config.machines:
        raise StartupError("machines: at least one machine is needed to run")
    return [machine_setup(i, m, encoder, config.source) for i, m in enumerate(config.machines)]


@dataclass
class SetupReport:
    """What `inspect_setup` found: summary lines, problems, and what it built on the way (the
    encoder and machine setups, which `run` uses instead of loading them twice)."""

    lines: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    encoder: Encoder | None = None
    setups: list[MachineSetup] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def add_error(self, error: StartupError, *, blocks_run: bool = True) -> None:
        for problem in error.problems:
            self.problems.append(replace(problem, blocks_run=blocks_run and problem.blocks_run))


def inspect_setup(
    config: Config,
    *,
    check_devices: bool = False,
    connect: bool = False,
    for_run: bool = False,
) -> SetupReport:
    """Every check, every problem (collected, not stopping at the first), each naming its key.

    `check-config` runs all of them (PortAudio devices with `check_devices`, a connection to the
    broker with `connect`); `run` (`for_run`) runs the same checks except those it does itself
    right after (opening the outbox) or that only make sense ahead of it (decoding `wav:`
    recordings, devices, the broker). So a config that checks out is one that starts.
    """
    report = SetupReport()
    if not config.machines:
        report.add(Problem("machines", "at least one machine is needed to run"))
    try:
        report.encoder = open_encoder(config)
    except StartupError as exc:
        report.add_error(exc)
    encoder = report.encoder
    if encoder is not None:
        report.lines.append(
            f"model {encoder.info.name} {encoder.info.version} ({encoder.info.path}, "
            f"{encoder.info.embedding_dim}-d, {encoder.info.window_samples}-sample windows)"
        )
        for index, machine in enumerate(config.machines):
            try:
                setup = machine_setup(index, machine, encoder, config.source)
            except StartupError as exc:
                report.add_error(exc)
                continue
            report.setups.append(setup)
            report.lines.append(setup.describe())
    else:
        # No model: the bundles can still be checked for being readable bundles at all.
        for index, machine in enumerate(config.machines):
            try:
                load_bundle(machine.bundle)
            except (BundleError, OSError) as exc:
                report.add(
                    Problem(
                        f"machines.{index}.bundle",
                        f"{exc}{calibrate_hint(machine, config.source)}",
                        transient=is_transient(exc),
                    )
                )
    _check_mqtt(config, report, connect=connect)
    if not for_run:
        _check_outbox(config, report)
        _check_wav_devices(config, report)
    if check_devices:
        _check_devices(config, report)
    return report


def check_setup(config: Config, *, check_devices: bool = False) -> list[str]:
    """Everything `run` checks before starting; returns a summary, raises StartupError with
    every error that would stop `run` (`inspect_setup` has the others too)."""
    report = inspect_setup(config, check_devices=check_devices)
    blocking = [p for p in report.errors if p.blocks_run]
    if blocking:
        raise StartupError(blocking)
    return report.lines


# ---------------------------------------------------------------- mqtt


def host_problem(host: str) -> str | None:
    """Why `host` cannot be a broker address (None if it can): an IP address, or a DNS name of
    non-empty labels of letters, digits, '-' and '_' (IDNA allowed), at most 253 characters."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(candidate)
        return None
    except ValueError:
        pass
    if any(ch.isspace() or ch in "/:@?#[]" for ch in host):
        return f"{host!r} is not a host name or IP address (no scheme, port or path here)"
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > _MAX_HOSTNAME:
        return f"{host!r} is not a valid host name (1 to {_MAX_HOSTNAME} characters)"
    for label in name.split("."):
        if not label:
            return f"{host!r} is not a valid host name: empty label (two dots in a row?)"
        try:
            ascii_label = label.encode("idna").decode("ascii")
        except UnicodeError:
            return f"{host!r} is not a valid host name: label {label!r} cannot be encoded"
        if len(ascii_label) > _MAX_LABEL or not _LABEL_RE.fullmatch(ascii_label):
            return f"{host!r} is not a valid host name: bad label {label!r}"
    return None


def tls_problems(config: Config) -> list[Problem]:
    """The TLS material loads into an SSL context as the client will load it."""
    tls = config.mqtt.tls
    if not tls.enabled:
        return []
    problems = []
    for key, path in (
        ("ca_file", tls.ca_file),
        ("cert_file", tls.cert_file),
        ("key_file", tls.key_file),
    ):
        if path is not None and not path.is_file():
            problems.append(Problem(f"mqtt.tls.{key}", f"{path} does not exist or is not a file"))
    if problems:
        return problems
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(
                Problem(
                    "mqtt.tls.ca_file",
                    f"{tls.ca_file} is not a readable PEM CA certificate: {exc}",
                    transient=is_transient(exc),
                )
            )
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(
                Problem(
                    "mqtt.tls.cert_file",
                    f"{tls.cert_file} with key_file {tls.key_file} is not a loadable PEM "
                    f"certificate and matching key: {exc}",
                    transient=is_transient(exc),
                )
            )
    return problems


def _check_mqtt(config: Config, report: SetupReport, *, connect: bool) -> None:
    mqtt = config.mqtt
    password: str | None = None
    try:
        password = mqtt.resolve_password()
    except ConfigError as exc:
        report.add(Problem.from_text(str(exc), transient=is_transient(exc)))
    has_password = mqtt.password_file is not None or mqtt.password_env is not None
    if has_password and not mqtt.tls.enabled:
        report.add(
            Problem(
                "mqtt.tls.enabled",
                "a password is configured but TLS is off: it crosses the network in clear text",
                severity="warning",
                blocks_run=False,
            )
        )
    report.problems.extend(tls_problems(config))
    bad_host = host_problem(mqtt.host)
    if bad_host is not None:
        # Not fatal for `run`: detection goes on, events wait in the outbox, and the client
        # keeps retrying (the operator may fix /etc/hosts or DNS meanwhile).
        report.add(Problem("mqtt.host", bad_host, blocks_run=False))
    client_id = mqtt.client_id_for(config.node_id)
    report.lines.append(
        f"mqtt {mqtt.host}:{mqtt.port} as {client_id}, "
        f"topics {mqtt.topic_prefix}/{config.node_id}/..."
    )
    if connect and bad_host is None and not any(p.key.startswith("mqtt.") for p in report.errors):
        from edge_asd.mqtt.publisher import probe_broker

        failure = probe_broker(
            mqtt, config.node_id, password=password, timeout_seconds=BROKER_CHECK_TIMEOUT_SECONDS
        )
        if failure is None:
            report.lines.append(f"mqtt broker {mqtt.host}:{mqtt.port} accepted the connection")
        else:
            report.add(Problem(failure[0], failure[1], transient=True, blocks_run=False))


# ---------------------------------------------------------------- outbox


def outbox_problem(path: Path, exc: BaseException) -> Problem:
    """A failure to open the outbox at `path`, classified: a directory in the way can never
    work; anything else (full or read-only /var at boot, I/O errors) may go away."""
    permanent = path.is_dir() or any(
        isinstance(e, OSError) and e.errno in _PERMANENT_PATH_ERRNOS for e in _chain(exc)
    )
    return Problem("outbox.path", f"cannot open {path}: {exc}", transient=not permanent)


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def outbox_path_problem(path: Path) -> Problem | None:
    """What makes `path` one that can never hold the outbox (a directory there, a file where a
    directory must be): `run` exits 2 for it. Anything else (a full or read-only disk) only
    degrades the outbox."""
    key = "outbox.path"
    if path.is_dir():
        return Problem(key, f"{path} is a directory; give the path of the SQLite file")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return Problem(key, f"{ancestor} is not a directory; {path} cannot be created")
    return None


def _degraded_outbox(message: str) -> Problem:
    """A problem `run` starts with, the outbox degraded (events published without durability,
    the file retried every `outbox.retry_seconds`): a warning, not an error."""
    return Problem(
        "outbox.path",
        f"{message}; run starts with the outbox degraded (events published directly, without "
        "durability) and retries it",
        severity="warning",
        transient=True,
        blocks_run=False,
    )


def _check_outbox(config: Config, report: SetupReport) -> None:
    """The outbox can be created or opened, is a sound SQLite file, and is writable."""
    path = config.outbox.path
    key = "outbox.path"
    never = outbox_path_problem(path)
    if never is not None:
        report.add(never)
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        # What run does first: create a file there (it creates the directories too).
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        why = f"cannot create files in {ancestor}: {exc.strerror or exc}"
        permanent = exc.errno in _PERMANENT_PATH_ERRNOS
        report.add(Problem(key, why) if permanent else _degraded_outbox(why))
        return
    try:
        stat = os.statvfs(ancestor)
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = MIN_FREE_BYTES
    if free < MIN_FREE_BYTES:
        report.add(_degraded_outbox(f"the file system of {ancestor} is full ({free} bytes free)"))
    if path.exists():
        _check_outbox_file(path, report)
        return
    report.lines.append(f"outbox {path} (created at start)")


_RECOVERS: Final = (
    "run moves it aside (kept for inspection, counted in stats) and starts a fresh outbox; "
    "the messages it held are not sent"
)


def _check_outbox_file(path: Path, report: SetupReport) -> None:
    key = "outbox.path"
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=2.0, isolation_level=None)
    except sqlite3.Error as exc:
        if is_transient(exc):
            report.add(_degraded_outbox(f"cannot open {path}: {exc}"))
        else:
            report.add(Problem(key, f"cannot open {path}: {exc}"))
        return
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            report.add(
                Problem(
                    key,
                    f"{path} fails its integrity check: {result}; {_RECOVERS}",
                    blocks_run=False,
                )
            )
            return
        # A write lock without writing: proves the file (and its WAL) can be written.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        depth = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        report.lines.append(f"outbox {path}: ok, {depth} undelivered message(s)")
    except sqlite3.DatabaseError as exc:
        if is_transient(exc):
            report.add(_degraded_outbox(f"{path} cannot be written: {exc}"))
        else:
            report.add(
                Problem(
                    key,
                    f"{path} is not a sound SQLite outbox: {exc}; {_RECOVERS}",
                    blocks_run=False,
                )
            )
    finally:
        conn.close()


# ---------------------------------------------------------------- audio


def _check_wav_devices(config: Config, report: SetupReport) -> None:
    """A `wav:` device's recordings decode (run would only find out when capture starts)."""
    from edge_asd.audio.capture import WAV_DEVICE_PREFIX, open_source
    from edge_asd.audio.files import AudioFileError
    from edge_asd.audio.sources import AudioDeviceError, EndOfStream

    for index, machine in enumerate(config.machines):
        device = machine.device
        if not (isinstance(device, str) and device.startswith(WAV_DEVICE_PREFIX)):
            continue
        key = f"machines.{index}.device"
        try:
            source = open_source(device, (machine.channel,))
            source.start()
            try:
                block = source.read(_WAV_CHECK_READ_SECONDS)
            finally:
                source.stop()
        except (AudioDeviceError, AudioFileError, EndOfStream, OSError, ValueError) as exc:
            report.add(Problem(key, f"{device}: cannot be decoded: {exc}", blocks_run=False))
            continue
        if block is None:
            report.add(Problem(key, f"{device}: delivered no audio", blocks_run=False))
            continue
        report.lines.append(f"device {device!r}: {source.description}")


def _check_devices(config: Config, report: SetupReport) -> None:
    """Each PortAudio device exists and has the configured channel (no stream is opened)."""
    from edge_asd.audio.capture import WAV_DEVICE_PREFIX
    from edge_asd.audio.sources import (
        AudioDeviceError,
        _import_sounddevice,
        _query_devices,
        find_input_device,
    )

    try:
        devices = _query_devices(_import_sounddevice())
    except AudioDeviceError as exc:
        report.add(Problem("machines", str(exc), blocks_run=False))
        return
    for index, machine in enumerate(config.machines):
        device = machine.device
        if isinstance(device, str) and device.startswith(WAV_DEVICE_PREFIX):
            continue
        try:
            info = find_input_device(device, devices)
        except AudioDeviceError as exc:
            report.add(Problem(f"machines.{index}.device", str(exc), blocks_run=False))
            continue
        channels = int(info["max_input_channels"])
        if machine.channel >= channels:
            report.add(
                Problem(
                    f"machines.{index}.channel",
                    f"device {info['name']!r} (#{info['index']}) has {channels} input "
                    f"channel(s); channel {machine.channel} does not exist",
                    blocks_run=False,
                )
            )
            continue
        report.lines.append(
            f"device {device!r}: {info['name']} (#{info['index']}), {channels} input channel(s)"
        )
