"""The YAML configuration: one typed model per section, unknown keys rejected.

`edge-asd check-config`, `calibrate` and `run` all load the file through `load_config`, so a
bad file fails the same way everywhere: exit code 2 and a message naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edge_asd.constants import DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS
from edge_asd.detection.detector import (
    DEFAULT_HOLDOFF_SECONDS,
    DEFAULT_MAX_EVENT_SECONDS,
    DEFAULT_REFERENCE_QUANTILE,
    DEFAULT_RELEASE_WINDOWS,
    DEFAULT_TARGET_FALSE_ALARMS_PER_WEEK,
    DEFAULT_TRIGGER_WINDOWS,
    DetectorSettings,
)
from edge_asd.detection.methods import DEFAULT_SCORE_METHOD, SCORE_METHODS
from edge_asd.detection.vocabulary import (
    AUTO_VIEWS,
    DECISION_RULES,
    DEFAULT_DECISION_RULE,
    RHO_SCOPES,
    THRESHOLD_METHODS,
    VIEWS,
)
from edge_asd.mqtt.messages import DEFAULT_TOPIC_PREFIX
from edge_asd.mqtt.outbox import DEFAULT_REOPEN_INTERVAL_SECONDS

if TYPE_CHECKING:
    from edge_asd.detection.evidence import EvidenceSettings

# Names end up in MQTT topics: no wildcards, no separators, nothing a shell would mangle.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_MAX_PORT = 65_535
_DEFAULT_MQTT_PORT = 1883
_DEFAULT_STATE_DIR = Path("/var/lib/edge-asd")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names the key."""

    def __init__(self, message: str, *, items: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.items = items or []
        """(key, message) of each problem the model found (empty for whole-file problems)."""


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` (valid YAML floats) pass `ge`/`gt` bounds and
    # would make a timeout never fire or a rate limit never send.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul_no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # A NUL byte cannot be in a path (open() raises ValueError deep in a worker) or a
        # topic; say so here, naming the key. `port: true` is YAML for 1 in lax pydantic.
        if isinstance(value, str) and "\x00" in value:
            raise PydanticCustomError("nul_byte", "contains a NUL byte")
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and "bool" not in str(field.annotation):
                raise PydanticCustomError("not_bool", "must not be true/false here")
        return value


def _one_of(what: str, names: tuple[str, ...]) -> AfterValidator:
    """Validator for a name from a registry owned elsewhere (the config never re-lists them)."""

    def check(value: str) -> str:
        if value not in names:
            raise PydanticCustomError(
                "unknown_name",
                "unknown {what} {value}; expected one of: {expected}",
                {"what": what, "value": repr(value), "expected": ", ".join(names)},
            )
        return value

    return AfterValidator(check)


ScoreMethod = Annotated[str, _one_of("scoring method", SCORE_METHODS)]
"""A name registered in detection.methods."""
RhoScopeName = Annotated[str, _one_of("rho scope", RHO_SCOPES)]
ThresholdMethod = Annotated[str, _one_of("threshold method", THRESHOLD_METHODS)]
DecisionRule = Annotated[str, _one_of("decision rule", DECISION_RULES)]
ViewName = Annotated[str, _one_of("view", VIEWS)]
ViewsSetting = (
    Annotated[str, _one_of("views setting", (AUTO_VIEWS,))]
    | Annotated[list[ViewName], Field(min_length=1)]
)


class MachineConfig(_Section):
    """One monitored machine: a microphone channel plus its calibration."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN, description="Used in MQTT topics.")]
    device: str | StrictInt = Field(
        "default", description="PortAudio device name (substring) or index."
    )
    channel: StrictInt = Field(0, ge=0, description="Input channel of the device, from 0.")
    bundle: Path = Field(description="Calibration bundle directory made by `edge-asd calibrate`.")
    window_seconds: float = Field(DEFAULT_WINDOW_SECONDS, gt=0.05, le=10.0)
    hop_seconds: float = Field(DEFAULT_HOP_SECONDS, gt=0.01, le=10.0)
    decision: DecisionRule = Field(
        DEFAULT_DECISION_RULE,
        description=(
            "evidence: alarms when evidence accumulated over time reaches the level calibration "
            "set for the false-alarm budget (bundles from before it fall back to hysteresis); "
            "hysteresis: trigger_windows consecutive windows over the threshold."
        ),
    )
    threshold_scale: float = Field(
        1.0,
        gt=0.0,
        description="Multiplies the calibrated threshold (and the evidence reference scores).",
    )
    threshold: float | None = Field(
        None, gt=0.0, description="Absolute window threshold; overrides, implies hysteresis."
    )
    detect_stops: StrictBool = Field(
        True, description="Report a stopped machine as idle (and raise no anomaly) instead."
    )
    detect_environment: StrictBool = Field(
        True,
        description="Report a lasting change of the sound around the machine (a new noise, a "
        "moved microphone) as environment_changed (needs a bundle from this version).",
    )
    startup_holdoff_seconds: float = Field(
        DEFAULT_HOLDOFF_SECONDS,
        ge=0.0,
        le=3600.0,
        description="After a stop, the machine's run-up is not judged for this long.",
    )
    trigger_windows: StrictInt = Field(
        DEFAULT_TRIGGER_WINDOWS, ge=1, le=100, description="Windows over threshold to start."
    )
    release_windows: StrictInt = Field(
        DEFAULT_RELEASE_WINDOWS, ge=1, le=100, description="Windows under threshold to end."
    )
    max_event_seconds: float = Field(
        DEFAULT_MAX_EVENT_SECONDS, gt=0.0, description="Longer events are split."
    )
    no_audio_seconds: float = Field(
        10.0, gt=0.0, description="No data or device errors this long -> no_audio."
    )
    score_interval_seconds: float = Field(1.0, ge=0.0, description="Score telemetry period; 0=off.")

    @model_validator(mode="after")
    def _hop_fits_window(self) -> MachineConfig:
        if self.hop_seconds > self.window_seconds:
            raise ValueError(
                f"hop_seconds ({self.hop_seconds}) must not exceed window_seconds "
                f"({self.window_seconds}): audio between windows would never be analysed"
            )
        return self


def _protocol_text(value: Any) -> Any:
    """`protocol: 5` in YAML is an integer; the version names are text ("3.1.1")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class TlsConfig(_Section):
    enabled: StrictBool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(_Section):
    host: str = Field("localhost", min_length=1)
    port: StrictInt = Field(_DEFAULT_MQTT_PORT, ge=1, le=_MAX_PORT)
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")] = (
        DEFAULT_TOPIC_PREFIX
    )
    client_id: str | None = Field(None, description="Default: edge-asd-<node_id>, sanitised.")
    qos: Annotated[Literal[0, 1, 2], StrictInt] = 1
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(_protocol_text)] = Field(
        "5",
        description="MQTT version. 5 lets the broker say why it refused a message (an ACL "
        "deny is then quarantined, not lost silently); 3.1.1 for brokers without MQTT 5.",
    )
    keepalive_seconds: StrictInt = Field(60, ge=5, le=3600)
    username: str | None = None
    password_file: Path | None = Field(None, description="File whose first line is the password.")
    password_env: str | None = Field(None, description="Environment variable with the password.")
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self

    def client_id_for(self, node_id: str) -> str:
        """The client id this node connects with: the configured one, else
        `default_client_id`. The publisher and `check-config` both ask here, so what
        check-config reports is what the broker sees."""
        return self.client_id or default_client_id(node_id)

    def resolve_password(self) -> str | None:
        """The password from its file or environment variable; never logged."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ConfigError(
                    f"mqtt.password_file: cannot read a password from {self.password_file}: {exc}"
                ) from exc
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"mqtt.password_env: environment variable {self.password_env} is not set"
                )
            return value
        return None


class OutboxConfig(_Section):
    path: Path = _DEFAULT_STATE_DIR / "outbox.sqlite"
    max_messages: StrictInt = Field(100_000, ge=10)
    max_age_seconds: float = Field(7 * 86_400, gt=0)
    retry_seconds: float = Field(
        DEFAULT_REOPEN_INTERVAL_SECONDS,
        gt=0,
        le=3600,
        description="How often a degraded outbox (full or read-only disk, I/O error) tries "
        "its file again; events are published directly, without durability, meanwhile.",
    )


class HomeAssistantConfig(_Section):
    """Home Assistant MQTT discovery (`mqtt.discovery`): off unless asked for."""

    discovery: bool = Field(
        False,
        description="Publish retained device-based discovery messages for the gateway and "
        "each machine on every connect, and again when Home Assistant comes online.",
    )
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")] = Field(
        "homeassistant", description="Home Assistant's discovery prefix."
    )


class ClipsConfig(_Section):
    """Event clips (`service.clips`): the audio around each event, with a spectrogram."""

    # Off by default: the daemon must not write under /var/lib unless told to (tests, CI and a
    # read-only image); deploy/config.example.yaml turns it on for an installed gateway.
    dir: Path | None = Field(None, description="Where clips are written; null = no clips.")
    pre_seconds: float = Field(5.0, ge=0.0, le=60.0, description="Audio kept before an event.")
    post_seconds: float = Field(5.0, ge=0.0, le=60.0, description="Audio kept after an event.")
    max_total_mb: float = Field(500.0, gt=0.0, description="Oldest clips go beyond this size.")
    max_age_days: float = Field(30.0, gt=0.0, description="Clips older than this are deleted.")


class HttpConfig(_Section):
    """The local status page, status JSON, Prometheus metrics and clips (`service.http`)."""

    port: int | None = Field(
        None, ge=0, le=_MAX_PORT, description="TCP port; null = off; 0 = any free port."
    )
    bind: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on; 0.0.0.0 = every one."
    )


class CalibrationConfig(_Section):
    """The `calibration` section; also the one place the calibration defaults live (the CLI,
    `calibrate` and the offline evaluation read them from `CalibrationConfig()`)."""

    scoring: ScoreMethod = DEFAULT_SCORE_METHOD
    k: StrictInt = Field(
        1,
        ge=1,
        le=256,
        description=(
            "Neighbours for the local density rho_K (1 as in the paper; 16 measured better on "
            "the development sets, docs/benchmarks.md)."
        ),
    )
    threshold_method: ThresholdMethod = "gamma"
    threshold_percentile: float = Field(0.995, gt=0.5, lt=1.0)
    folds: StrictInt = Field(5, ge=2, le=50)
    min_windows: StrictInt = Field(60, ge=10)
    target_false_alarms_per_week: float = Field(
        DEFAULT_TARGET_FALSE_ALARMS_PER_WEEK,
        gt=0.0,
        le=1000.0,
        description=(
            "The false-alarm budget per machine: calibration sets the evidence needed for an "
            "alarm so that normal running is expected to raise at most this many a week."
        ),
    )
    reference_quantile: float = Field(
        DEFAULT_REFERENCE_QUANTILE,
        gt=0.5,
        lt=1.0,
        description="Held-out normal windows above this quantile of their scores add evidence.",
    )
    rho_scope: RhoScopeName = Field(
        "all",
        description=(
            "Bank windows kept out of each window's local density rho_K: none (all), the "
            "windows of the same clip that overlap it in time (non_overlapping), or every "
            "window of the same clip or contiguous stretch (other_groups). Overlapping windows "
            "are near-duplicates, so with them rho measures clip smoothness, not domain density. "
            "all stays the default: other_groups measured best only together with k: 16, and at "
            "k = 1 it doubles false alarms (docs/benchmarks.md)."
        ),
    )
    views: ViewsSetting = Field(
        AUTO_VIEWS,
        description=(
            "What each window is scored on: auto (calibration keeps the learned embedding and "
            "each cheap view, bands, tonal, modulation, transient, subframes, that is stable on "
            "held-out normal audio, and weights them), or a list of views, e.g. [embedding] "
            "(the embedding alone, as before views existed) or [embedding, transient]."
        ),
    )


class Config(_Section):
    node_id: Annotated[str, Field(pattern=_NAME_PATTERN)] = "edge-asd"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    model: str | None = Field(None, description="ONNX path or bundled model name; null=default.")
    stats_interval_seconds: float = Field(60.0, gt=0.0)
    machines: list[MachineConfig] = Field(default_factory=list)
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    clips: ClipsConfig = ClipsConfig()
    http: HttpConfig = HttpConfig()
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file `load_config` read it from (None when built otherwise): for messages that
        give the command to run."""
        return self._source

    @model_validator(mode="after")
    def _unique_machines(self) -> Config:
        names = [m.name for m in self.machines]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"machine names must be unique; repeated: {', '.join(duplicates)}")
        channels = [(str(m.device), m.channel) for m in self.machines]
        shared = sorted({c for c in channels if channels.count(c) > 1})
        if shared:
            device, channel = shared[0]
            raise ValueError(f"two machines use device {device!r} channel {channel}")
        return self

    def machine(self, name: str | None) -> MachineConfig:
        """The machine called `name`, or the only one when `name` is None."""
        if name is None:
            if len(self.machines) != 1:
                known = ", ".join(m.name for m in self.machines) or "none"
                raise ConfigError(f"choose a machine with --machine (configured: {known})")
            return self.machines[0]
        for machine in self.machines:
            if machine.name == name:
                return machine
        known = ", ".join(m.name for m in self.machines) or "none"
        raise ConfigError(f"machines: no machine named {name!r} (configured: {known})")


def error_lines(error: ValidationError) -> list[str]:
    """One "key: message" line per problem, the key dotted as in the YAML."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return lines


def _format_error(path: Path, error: ValidationError) -> str:
    return "\n".join(
        [f"invalid configuration {path}:", *(f"  {line}" for line in error_lines(error))]
    )


def parse_config(data: Any, *, source: Path) -> Config:
    """Validate an already-parsed YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: the top level must be a mapping")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        items = [tuple(line.split(": ", 1)) for line in error_lines(exc)]
        raise ConfigError(
            _format_error(source, exc), items=[(key, message) for key, message in items]
        ) from None
    except RecursionError:
        # A document nested thousands of levels deep: no config is, say so instead of crashing.
        raise ConfigError(f"invalid configuration {source}: nested too deeply") from None


def load_config(path: Path) -> Config:
    """Read and validate the YAML file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration {path} is not UTF-8 text: {exc.reason}") from None
    except ValueError as exc:  # a NUL byte in the path itself
        raise ConfigError(f"cannot read configuration {path!r}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"configuration {path} is not valid YAML{where}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors raise plain Python errors for well-formed but impossible
        # values, e.g. `2001-13-01` (a date with month 13) -> ValueError.
        raise ConfigError(f"configuration {path} has a value YAML cannot build: {exc}") from None
    config = parse_config(data, source=path)
    config._source = path
    return config


def default_client_id(node_id: str) -> str:
    """MQTT client ids must be unique per broker; duplicates make availability flap. Other
    characters than letters, digits, '-' and '_' (a node id may hold '.') become '-': MQTT 3.1.1
    only obliges brokers to accept letters and digits."""
    return "edge-asd-" + re.sub(r"[^A-Za-z0-9_-]", "-", node_id)


def detector_settings(
    machine: MachineConfig, threshold: float, evidence: EvidenceSettings | None = None
) -> DetectorSettings:
    """The event detector of `machine` at `threshold` (already resolved: the absolute one, or
    the calibrated one times threshold_scale), with the bundle's calibrated `evidence` decision
    when the machine uses it (scaled like the threshold)."""
    use_evidence = (
        evidence is not None and machine.decision == "evidence" and machine.threshold is None
    )
    scaled = None
    if use_evidence:
        assert evidence is not None  # for mypy: implied by use_evidence
        scale = machine.threshold_scale
        scaled = dataclasses.replace(
            evidence,
            reference=evidence.reference * scale,
            gross_score=evidence.gross_score * scale,
            release_score=evidence.release_score * scale,
        )
    return DetectorSettings(
        threshold=scaled.reference if scaled is not None else threshold,
        trigger_windows=machine.trigger_windows,
        release_windows=machine.release_windows,
        max_event_seconds=machine.max_event_seconds,
        evidence=scaled,
    )
