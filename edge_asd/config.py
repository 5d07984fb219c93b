"""The YAML configuration: one typed model per section, unknown keys rejected.

`edge-asd check-config`, `calibrate` and `run` all load the file through `load_config`, so a
bad file fails the same way everywhere: exit code 2 and a message naming the key.

The sections are msgspec Structs, not pydantic models: pydantic and the model classes cost
the daemon about 16 MB of its 100 MB (docs/benchmarks.md). msgspec stops at the first error,
while `check-config` reports every problem at once, so `_build` walks a section field by field:
each value is converted on its own (msgspec, against the field's annotated type and `Meta`
constraints), nested sections and lists of them recursively, and a section's `__post_init__`
(the cross-field checks) runs only once its fields are valid. Constructing a section directly
(`CalibrationConfig(k=16)`) trusts its arguments, as msgspec does; `from_dict` validates.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self

import msgspec
import yaml
from msgspec import Meta

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
    DEFAULT_VIEWS,
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
_TOPIC_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
_MAX_PORT = 65_535
_DEFAULT_MQTT_PORT = 1883
_DEFAULT_STATE_DIR = Path("/var/lib/edge-asd")
_TOP_LEVEL: Final = "(top level)"
"""The key of a problem with the whole document (machine names not unique)."""

# Keys of `Meta(extra=...)` that `_build` reads: checks msgspec has no constraint for.
_ONE_OF: Final = "one_of"
"""(what, names): the value must be one of the names of a registry owned elsewhere."""
_BEFORE: Final = "before"
"""A function applied to the YAML value before it is converted."""


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names the key."""

    def __init__(self, message: str, *, items: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.items = items or []
        """(key, message) of each problem the model found (empty for whole-file problems)."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A config section: immutable, unknown keys rejected (`_build` reports them by name)."""

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """The section from plain data (parsed YAML), validated as the configuration file is;
        ConfigError with every problem, each "key: message" as in the YAML (keys relative to
        this section)."""
        section, problems = _build(cls, data, ())
        if problems:
            raise ConfigError(
                "\n".join(f"{key}: {message}" for key, message in problems), items=problems
            )
        assert section is not None  # for mypy: no problems means it was built
        return section


def _one_of(what: str, names: tuple[str, ...]) -> Meta:
    """A name from a registry owned elsewhere (the config never re-lists them)."""
    return Meta(extra={_ONE_OF: (what, names)})


ScoreMethod = Annotated[str, _one_of("scoring method", SCORE_METHODS)]
"""A name registered in detection.methods."""
RhoScopeName = Annotated[str, _one_of("rho scope", RHO_SCOPES)]
ThresholdMethod = Annotated[str, _one_of("threshold method", THRESHOLD_METHODS)]
DecisionRule = Annotated[str, _one_of("decision rule", DECISION_RULES)]
MachineName = Annotated[str, Meta(pattern=_NAME_PATTERN)]
TopicPath = Annotated[str, Meta(pattern=_TOPIC_PATTERN)]
"""One or more MQTT topic levels joined by '/'."""


class MachineConfig(_Section, frozen=True, kw_only=True):
    """One monitored machine: a microphone channel plus its calibration."""

    name: Annotated[MachineName, Meta(description="Used in MQTT topics.")]
    device: Annotated[
        str | int, Meta(description="PortAudio device name (substring) or index.")
    ] = "default"
    channel: Annotated[int, Meta(ge=0, description="Input channel of the device, from 0.")] = 0
    bundle: Annotated[
        Path, Meta(description="Calibration bundle directory made by `edge-asd calibrate`.")
    ]
    window_seconds: Annotated[float, Meta(gt=0.05, le=10.0)] = DEFAULT_WINDOW_SECONDS
    hop_seconds: Annotated[float, Meta(gt=0.01, le=10.0)] = DEFAULT_HOP_SECONDS
    decision: Annotated[
        DecisionRule,
        Meta(
            description=(
                "evidence: alarms when evidence accumulated over time reaches the level "
                "calibration set for the false-alarm budget (bundles from before it fall back "
                "to hysteresis); hysteresis: trigger_windows consecutive windows over the "
                "threshold."
            )
        ),
    ] = DEFAULT_DECISION_RULE
    threshold_scale: Annotated[
        float,
        Meta(
            gt=0.0,
            description="Multiplies the calibrated threshold (and the evidence reference scores).",
        ),
    ] = 1.0
    threshold: Annotated[
        Annotated[float, Meta(gt=0.0)] | None,
        Meta(description="Absolute window threshold; overrides, implies hysteresis."),
    ] = None
    detect_stops: Annotated[
        bool, Meta(description="Report a stopped machine as idle (and raise no anomaly) instead.")
    ] = True
    detect_environment: Annotated[
        bool,
        Meta(
            description="Report a lasting change of the sound around the machine (a new noise, "
            "a moved microphone) as environment_changed (needs a bundle from this version)."
        ),
    ] = True
    startup_holdoff_seconds: Annotated[
        float,
        Meta(
            ge=0.0,
            le=3600.0,
            description="After a stop, the machine's run-up is not judged for this long.",
        ),
    ] = DEFAULT_HOLDOFF_SECONDS
    trigger_windows: Annotated[
        int, Meta(ge=1, le=100, description="Windows over threshold to start.")
    ] = DEFAULT_TRIGGER_WINDOWS
    release_windows: Annotated[
        int, Meta(ge=1, le=100, description="Windows under threshold to end.")
    ] = DEFAULT_RELEASE_WINDOWS
    max_event_seconds: Annotated[float, Meta(gt=0.0, description="Longer events are split.")] = (
        DEFAULT_MAX_EVENT_SECONDS
    )
    no_audio_seconds: Annotated[
        float, Meta(gt=0.0, description="No data or device errors this long -> no_audio.")
    ] = 10.0
    score_interval_seconds: Annotated[
        float, Meta(ge=0.0, description="Score telemetry period; 0=off.")
    ] = 1.0

    def __post_init__(self) -> None:
        if self.hop_seconds > self.window_seconds:
            raise ValueError(
                f"hop_seconds ({self.hop_seconds}) must not exceed window_seconds "
                f"({self.window_seconds}): audio between windows would never be analysed"
            )


def _protocol_text(value: Any) -> Any:
    """`protocol: 5` in YAML is an integer; the version names are text ("3.1.1")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class TlsConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")


class MqttConfig(_Section, frozen=True, kw_only=True):
    host: Annotated[str, Meta(min_length=1)] = "localhost"
    port: Annotated[int, Meta(ge=1, le=_MAX_PORT)] = _DEFAULT_MQTT_PORT
    topic_prefix: TopicPath = DEFAULT_TOPIC_PREFIX
    client_id: Annotated[
        str | None, Meta(description="Default: edge-asd-<node_id>, sanitised.")
    ] = None
    qos: Literal[0, 1, 2] = 1
    protocol: Annotated[
        Literal["3.1.1", "5"],
        Meta(
            description="MQTT version. 5 lets the broker say why it refused a message (an ACL "
            "deny is then quarantined, not lost silently); 3.1.1 for brokers without MQTT 5.",
            extra={_BEFORE: _protocol_text},
        ),
    ] = "5"
    keepalive_seconds: Annotated[int, Meta(ge=5, le=3600)] = 60
    username: str | None = None
    password_file: Annotated[
        Path | None, Meta(description="File whose first line is the password.")
    ] = None
    password_env: Annotated[
        str | None, Meta(description="Environment variable with the password.")
    ] = None
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)

    def __post_init__(self) -> None:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")

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


class OutboxConfig(_Section, frozen=True, kw_only=True):
    path: Path = _DEFAULT_STATE_DIR / "outbox.sqlite"
    max_messages: Annotated[int, Meta(ge=10)] = 100_000
    max_age_seconds: Annotated[float, Meta(gt=0)] = 7 * 86_400.0
    retry_seconds: Annotated[
        float,
        Meta(
            gt=0,
            le=3600,
            description="How often a degraded outbox (full or read-only disk, I/O error) tries "
            "its file again; events are published directly, without durability, meanwhile.",
        ),
    ] = DEFAULT_REOPEN_INTERVAL_SECONDS


class HomeAssistantConfig(_Section, frozen=True, kw_only=True):
    """Home Assistant MQTT discovery (`mqtt.discovery`): off unless asked for."""

    discovery: Annotated[
        bool,
        Meta(
            description="Publish retained device-based discovery messages for the gateway and "
            "each machine on every connect, and again when Home Assistant comes online."
        ),
    ] = False
    prefix: Annotated[TopicPath, Meta(description="Home Assistant's discovery prefix.")] = (
        "homeassistant"
    )


class ClipsConfig(_Section, frozen=True, kw_only=True):
    """Event clips (`service.clips`): the audio around each event, with a spectrogram."""

    # Off by default: the daemon must not write under /var/lib unless told to (tests, CI and a
    # read-only image); deploy/config.example.yaml turns it on for an installed gateway.
    dir: Annotated[Path | None, Meta(description="Where clips are written; null = no clips.")] = (
        None
    )
    pre_seconds: Annotated[
        float, Meta(ge=0.0, le=60.0, description="Audio kept before an event.")
    ] = 5.0
    post_seconds: Annotated[
        float, Meta(ge=0.0, le=60.0, description="Audio kept after an event.")
    ] = 5.0
    max_total_mb: Annotated[
        float, Meta(gt=0.0, description="Oldest clips go beyond this size.")
    ] = 500.0
    max_age_days: Annotated[
        float, Meta(gt=0.0, description="Clips older than this are deleted.")
    ] = 30.0


class HttpConfig(_Section, frozen=True, kw_only=True):
    """The local status page, status JSON, Prometheus metrics and clips (`service.http`)."""

    port: Annotated[
        Annotated[int, Meta(ge=0, le=_MAX_PORT)] | None,
        Meta(description="TCP port; null = off; 0 = any free port."),
    ] = None
    bind: Annotated[
        str, Meta(min_length=1, description="Address to listen on; 0.0.0.0 = every one.")
    ] = "127.0.0.1"


class CalibrationConfig(_Section, frozen=True, kw_only=True):
    """The `calibration` section; also the one place the calibration defaults live (the CLI,
    `calibrate` and the offline evaluation read them from `CalibrationConfig()`)."""

    scoring: ScoreMethod = DEFAULT_SCORE_METHOD
    k: Annotated[
        int,
        Meta(
            ge=1,
            le=256,
            description=(
                "Neighbours for the local density rho_K (1 as in the paper; 16 measured better "
                "on the development sets, docs/benchmarks.md)."
            ),
        ),
    ] = 1
    threshold_method: ThresholdMethod = "gamma"
    threshold_percentile: Annotated[float, Meta(gt=0.5, lt=1.0)] = 0.995
    folds: Annotated[int, Meta(ge=2, le=50)] = 5
    min_windows: Annotated[int, Meta(ge=10)] = 60
    target_false_alarms_per_week: Annotated[
        float,
        Meta(
            gt=0.0,
            le=1000.0,
            description=(
                "The false-alarm budget per machine: calibration sets the evidence needed for "
                "an alarm so that normal running is expected to raise at most this many a week."
            ),
        ),
    ] = DEFAULT_TARGET_FALSE_ALARMS_PER_WEEK
    reference_quantile: Annotated[
        float,
        Meta(
            gt=0.5,
            lt=1.0,
            description="Held-out normal windows above this quantile of their scores add evidence.",
        ),
    ] = DEFAULT_REFERENCE_QUANTILE
    rho_scope: Annotated[
        RhoScopeName,
        Meta(
            description=(
                "Bank windows kept out of each window's local density rho_K: none (all), the "
                "windows of the same clip that overlap it in time (non_overlapping), or every "
                "window of the same clip or contiguous stretch (other_groups). Overlapping "
                "windows are near-duplicates, so with them rho measures clip smoothness, not "
                "domain density. all stays the default: other_groups measured best only "
                "together with k: 16, and at k = 1 it doubles false alarms "
                "(docs/benchmarks.md)."
            )
        ),
    ] = "all"
    views: Annotated[
        str | list[str],
        Meta(
            description=(
                "What each window is scored on: a list of views, [embedding] by default (the "
                "learned embedding alone), or e.g. [embedding, transient]; or auto "
                "(calibration keeps the embedding and each cheap view, bands, tonal, "
                "modulation, transient, subframes, that is stable on held-out normal audio, "
                "and weights them: better ranking on the development sets, but more false "
                "alarms on normal running calibration did not hear; docs/results.md)."
            )
        ),
    ] = msgspec.field(default_factory=lambda: list(DEFAULT_VIEWS))

    def __post_init__(self) -> None:
        # A union of text and a list: `_convert`'s one-of check sees only plain fields, so the
        # names are checked here (the loader reports the message under calibration.views).
        if isinstance(self.views, str):
            if self.views != AUTO_VIEWS:
                raise ValueError(
                    f"views: {self.views!r}: expected {AUTO_VIEWS} or a list of views "
                    f"({', '.join(VIEWS)})"
                )
            return
        unknown = [name for name in self.views if name not in VIEWS]
        if not self.views or unknown:
            raise ValueError(
                f"views: expected {AUTO_VIEWS} or a non-empty list of views "
                f"({', '.join(VIEWS)})" + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )


class Config(_Section, frozen=True, kw_only=True):
    node_id: MachineName = "edge-asd"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    model: Annotated[
        str | None, Meta(description="ONNX path or bundled model name; null=default.")
    ] = None
    stats_interval_seconds: Annotated[float, Meta(gt=0.0)] = 60.0
    machines: list[MachineConfig] = msgspec.field(default_factory=list)
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    outbox: OutboxConfig = msgspec.field(default_factory=OutboxConfig)
    calibration: CalibrationConfig = msgspec.field(default_factory=CalibrationConfig)
    homeassistant: HomeAssistantConfig = msgspec.field(default_factory=HomeAssistantConfig)
    clips: ClipsConfig = msgspec.field(default_factory=ClipsConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    _source: Path | None = None
    """Set by `load_config` only: `_build` never takes a key starting with '_' from YAML."""

    @property
    def source(self) -> Path | None:
        """The file `load_config` read it from (None when built otherwise): for messages that
        give the command to run."""
        return self._source

    def __post_init__(self) -> None:
        names = [m.name for m in self.machines]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"machine names must be unique; repeated: {', '.join(duplicates)}")
        channels = [(str(m.device), m.channel) for m in self.machines]
        shared = sorted({c for c in channels if channels.count(c) > 1})
        if shared:
            device, channel = shared[0]
            raise ValueError(f"two machines use device {device!r} channel {channel}")

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


# ---------------------------------------------------------------- validation, every problem

Problems = list[tuple[str, str]]


def _key(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or _TOP_LEVEL


@cache
def _fields(section: type[_Section]) -> dict[str, msgspec.structs.FieldInfo]:
    """The YAML keys of a section: its fields, less the private ones (`Config._source`)."""
    return {f.encode_name: f for f in msgspec.structs.fields(section) if not f.name.startswith("_")}


def _unwrap(annotation: Any) -> tuple[Any, dict[str, Any], list[str]]:
    """(type without Annotated, merged `Meta.extra` of its metadata, its `Meta.pattern`s)."""
    extra: dict[str, Any] = {}
    patterns = []
    while typing.get_origin(annotation) is Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Meta):
                extra.update(meta.extra or {})
                if meta.pattern is not None:
                    patterns.append(meta.pattern)
        annotation = annotation.__origin__
    return annotation, extra, patterns


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _section_type(annotation: Any) -> type[_Section] | None:
    """The section class of a field typed `Section` or `list[Section]`, else None."""
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


def _build(section: type[_Section], data: Any, path: tuple[str | int, ...]) -> tuple[Any, Problems]:
    """`section` from `data`, or None and every problem found, each with its dotted key."""
    if isinstance(data, section):
        return data, []  # built already (`tls=TlsConfig(...)` in code)
    if not isinstance(data, Mapping):
        return None, [(_key(path), f"expected a mapping of keys, got {_yaml_type(data)}")]
    fields = _fields(section)
    problems = [(_key((*path, str(key))), "unknown key") for key in data if key not in fields]
    values: dict[str, Any] = {}
    for name, info in fields.items():
        where = (*path, name)
        if name not in data:
            if info.required:
                problems.append((_key(where), "Field required"))
            continue
        value, found = _convert(info.type, data[name], where)
        problems.extend(found)
        values[info.name] = value
    if problems:
        return None, problems
    try:
        return section(**values), []
    except ValueError as exc:
        # A cross-field check (__post_init__); it may name one field ("threshold: ...").
        message = str(exc)
        field, sep, rest = message.partition(": ")
        if sep and field in fields:
            return None, [(_key((*path, field)), rest)]
        return None, [(_key(path), message)]


def _convert(annotation: Any, value: Any, path: tuple[str | int, ...]) -> tuple[Any, Problems]:
    """One field's value, converted to its annotated type, or the problem with it."""
    bare, extra, patterns = _unwrap(annotation)
    section = _section_type(bare)
    if section is not None:
        if typing.get_origin(bare) is not list:
            return _build(section, value, path)
        if not isinstance(value, list):
            return None, [(_key(path), f"expected a list, got {_yaml_type(value)}")]
        items, problems = [], []
        for index, item in enumerate(value):
            built, found = _build(section, item, (*path, index))
            items.append(built)
            problems.extend(found)
        return items, problems
    key = _key(path)
    if _BEFORE in extra:
        value = extra[_BEFORE](value)
    # A NUL byte cannot be in a path (open() raises ValueError deep in a worker) or a topic.
    if isinstance(value, str) and "\x00" in value:
        return None, [(key, "contains a NUL byte")]
    # YAML's `port: true`: msgspec would say "got bool"; say what is wrong with it instead.
    if isinstance(value, bool) and bool not in _union_args(bare):
        return None, [(key, "must not be true/false here")]
    # `.inf` and `.nan` are valid YAML floats; they pass `ge`/`gt` bounds and would make a
    # timeout never fire or a rate limit never send.
    if isinstance(value, float) and not math.isfinite(value):
        return None, [(key, "Input should be a finite number")]
    try:
        converted = msgspec.convert(value, annotation, dec_hook=_from_yaml)
    except msgspec.ValidationError as exc:
        return None, [(key, _message(str(exc), bare))]
    # msgspec searches with Python's `re`, whose `$` also matches before a final newline:
    # "pump-1\n" would pass `^...$`. The whole value must match, as in JSON Schema.
    for pattern in patterns:
        if isinstance(converted, str) and not re.fullmatch(pattern, converted):
            return None, [(key, f"String should match pattern {pattern!r}")]
    if _ONE_OF in extra:
        what, names = extra[_ONE_OF]
        if converted not in names:
            expected = ", ".join(names)
            return None, [(key, f"unknown {what} {converted!r}; expected one of: {expected}")]
    return converted, []


def _from_yaml(kind: type, value: Any) -> Any:
    """msgspec's hook for the types it does not know: paths are YAML text."""
    if kind is Path and isinstance(value, str):
        return Path(value)
    got = "null" if value is None else type(value).__name__
    raise TypeError(f"Expected `str`, got `{got}`")


_YAML_TYPES: Final = {
    bool: "true/false",
    int: "an integer",
    float: "a number",
    str: "text",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _yaml_type(value: Any) -> str:
    return _YAML_TYPES.get(type(value), type(value).__name__)


_EXPECTED: Final = {
    "int": "a valid integer",
    "float": "a valid number",
    "str": "a valid string",
    "bool": "a valid boolean",
}

_JSON_NAMES: Final = {"str": "text", "array": "a list", "object": "a mapping", "null": "null"}
"""msgspec's type names in a union's message, as the YAML user knows them."""

# msgspec's messages, in the wording check-config used before (and that its tests expect).
_MSGSPEC_WORDING: Final[tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...]] = (
    (
        re.compile(r"Expected `\w+` >= (\S+)"),
        lambda m: f"Input should be greater than or equal to {m[1]}",
    ),
    (re.compile(r"Expected `\w+` > (\S+)"), lambda m: f"Input should be greater than {m[1]}"),
    (
        re.compile(r"Expected `\w+` <= (\S+)"),
        lambda m: f"Input should be less than or equal to {m[1]}",
    ),
    (re.compile(r"Expected `\w+` < (\S+)"), lambda m: f"Input should be less than {m[1]}"),
    (
        re.compile(r"Expected `str` matching regex (.+)"),
        lambda m: f"String should match pattern {m[1]}",
    ),
    (
        re.compile(r"Expected `str` of length >= (\d+)"),
        lambda m: f"String should have at least {m[1]} character(s)",
    ),
    (
        re.compile(r"Expected `(int|float|str|bool)`, got `(\w+)`"),
        lambda m: f"Input should be {_EXPECTED[m[1]]}, got {m[2]}",
    ),
    (
        # A union (`views: auto` or a list): msgspec names JSON's types ("str | array").
        re.compile(r"Expected `([\w |]+)`, got `(\w+)`"),
        lambda m: (
            "Input should be "
            + " or ".join(_JSON_NAMES.get(t, t) for t in m[1].split(" | "))
            + f", got {_JSON_NAMES.get(m[2], m[2])}"
        ),
    ),
)


def _message(text: str, bare: Any) -> str:
    text = text.split(" - at `$", 1)[0]
    if text.startswith("Invalid enum value") and typing.get_origin(bare) is Literal:
        *others, last = [repr(choice) for choice in typing.get_args(bare)]
        return (
            f"Input should be {', '.join(others)} or {last}"
            if others
            else f"Input should be {last}"
        )
    for pattern, wording in _MSGSPEC_WORDING:
        match = pattern.fullmatch(text)
        if match:
            return wording(match)
    return text


def parse_config(data: Any, *, source: Path) -> Config:
    """Validate an already-parsed YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: the top level must be a mapping")
    try:
        config, problems = _build(Config, data, ())
    except RecursionError:
        # A document nested thousands of levels deep: no config is, say so instead of crashing.
        raise ConfigError(f"invalid configuration {source}: nested too deeply") from None
    if problems:
        lines = [f"invalid configuration {source}:", *(f"  {k}: {m}" for k, m in problems)]
        raise ConfigError("\n".join(lines), items=problems)
    assert isinstance(config, Config)
    return config


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
    # Frozen: the one field set after validation, never from the YAML.
    msgspec.structs.force_setattr(config, "_source", path)
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
