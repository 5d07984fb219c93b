"""Typed, versioned MQTT payloads and topic names.

Every payload is a flat JSON object whose ``schema`` field names its type and major version
(``edge-asd.event/1``). The payloads are msgspec Structs, and they are the single source of the
wire format: `to_dict()`/`to_json()` serialise them and `edge_asd.mqtt.schemas` generates the
JSON Schemas in ``edge_asd/schemas/`` from the same models (only on demand, never at import).

Unlike a plain msgspec Struct, a payload checks its fields when it is constructed (the daemon
builds them from computed values): each is converted to its annotated type with its `Meta`
constraints, so numpy scalars become plain numbers, enum names their members and a mapping a
`ModelRef`, and a payload that breaks its schema raises ValueError naming the field.

Timestamps, in the models as on the wire, are ISO 8601 UTC strings with milliseconds
(``2026-11-22T03:04:05.123Z``); build them with `format_ts(epoch_seconds)` (checked on
construction, so a payload never carries another format). Non-finite floats (a NaN score, an
infinite level) become JSON ``null``, and ``null`` reads back as NaN, so a payload is always
valid JSON.
"""

from __future__ import annotations

import json
import logging
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, Self

import msgspec
from msgspec import Meta

from edge_asd.detection.states import EndReason, EventType, MachineState

if TYPE_CHECKING:
    from edge_asd.detection.environment import EnvironmentSummary

_LOGGER = logging.getLogger(__name__)

SCHEMA_EVENT: Final = "edge-asd.event/1"
SCHEMA_SCORE: Final = "edge-asd.score/1"
SCHEMA_STATS: Final = "edge-asd.stats/1"
SCHEMA_ENVIRONMENT: Final = "edge-asd.environment/1"

DEFAULT_TOPIC_PREFIX: Final = "edge-asd"

TS_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
"""What `format_ts` writes. ``[0-9]``, not ``\\d``: \\d also matches non-ASCII digits."""
TOPIC_LEVEL_PATTERN: Final = r"^[^/+#\u0000]+$"
"""One MQTT topic level: no separator, no wildcard, no NUL (the ``\\u0000`` escape is read
alike by Python's `re` and ECMA 262, the dialect of JSON Schema)."""

_MS_PER_SECOND: Final = 1000
_TS_RE: Final = re.compile(TS_PATTERN)
_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# MQTT reserves these in topic names (wildcards) or forbids them (NUL).
_FORBIDDEN_TOPIC_CHARS: Final = ("+", "#", "\x00")


class Availability(StrEnum):
    """Retained node availability published on ``availability``."""

    ONLINE = "online"
    OFFLINE = "offline"
    """Only ever sent by the broker, as the last will."""
    STOPPED = "stopped"


def format_ts(epoch_seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, rounded to the nearest millisecond."""
    if not math.isfinite(epoch_seconds):
        raise ValueError(f"timestamp {epoch_seconds!r} is not a finite number of seconds")
    millis = round(epoch_seconds * _MS_PER_SECOND)
    # Integer arithmetic: float seconds would round 0.9995 s up into the wrong second.
    whole, frac_ms = divmod(millis, _MS_PER_SECOND)
    moment = _EPOCH + timedelta(seconds=whole)
    return f"{moment.strftime(_TS_FORMAT)}.{frac_ms:03d}Z"


def parse_ts(text: str) -> float:
    """Epoch seconds from a timestamp written by `format_ts`."""
    # fullmatch: with match(), '$' would also accept a trailing newline.
    if not isinstance(text, str) or not _TS_RE.fullmatch(text):
        raise ValueError(f"timestamp {text!r} is not ISO 8601 UTC with milliseconds")
    moment = datetime.strptime(text[:-1], f"{_TS_FORMAT}.%f").replace(tzinfo=UTC)
    return round((moment - _EPOCH) / timedelta(milliseconds=1)) / _MS_PER_SECOND


def _null_for_non_finite(value: Any) -> Any:
    """JSON has no NaN/inf: map them to null, anywhere in `to_builtins` output."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _null_for_non_finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_null_for_non_finite(item) for item in value]
    return value


# ------------------------------------------------------------------ field types
# Each constraint is written once, here; it checks the Python value on construction and
# becomes the matching JSON Schema keyword (`edge_asd.mqtt.schemas` post-processes what
# msgspec generates so that it describes what `to_dict()` writes).

NULL_WHEN_NOT_FINITE: Final = "null_when_not_finite"
"""`Meta.extra` key of `WireFloat`: written as null when not finite, null read back as NaN
(the schema generator reads it too: the field's type is number or null)."""
_FINITE: Final = "finite"
"""`Meta.extra` key: the float must be finite (msgspec's bounds let inf through)."""

Timestamp = Annotated[
    str,
    Meta(
        pattern=TS_PATTERN,
        extra_json_schema={"format": "date-time", "examples": ["2026-11-22T03:04:05.123Z"]},
    ),
]
"""`format_ts` output; anything else is rejected on construction."""

TopicLevel = Annotated[str, Meta(min_length=1, pattern=TOPIC_LEVEL_PATTERN)]
"""A node id or machine name: both are one level of the topic the payload is published on."""

WireFloat = Annotated[float, Meta(extra={NULL_WHEN_NOT_FINITE: True})]
"""A float that may legitimately be NaN/inf in Python; null on the wire, NaN when read back."""

OptionalWireFloat = float | None
"""A float that is None while unknown (and null when not finite); read back as None."""

Count = Annotated[int, Meta(ge=0)]

Seconds = Annotated[float, Meta(ge=0, extra={_FINITE: True})]
"""A non-negative, finite number of seconds (differences of finite timestamps or clocks)."""

_SCHEMA_FIELD_DESCRIPTION: Final = "Payload type and major version."


def _described(text: str) -> Meta:
    return Meta(description=text)


class _FieldRules(typing.NamedTuple):
    name: str
    annotation: Any
    null_is_nan: bool
    finite: bool
    patterns: tuple[re.Pattern[str], ...]


@cache
def _rules(model: type[msgspec.Struct]) -> tuple[_FieldRules, ...]:
    """What `__post_init__` checks beyond msgspec's conversion, per field of `model`."""
    rules = []
    for info in msgspec.structs.fields(model):
        extra: dict[str, Any] = {}
        patterns = []
        annotation = info.type
        while typing.get_origin(annotation) is Annotated:
            for meta in annotation.__metadata__:
                if isinstance(meta, Meta):
                    extra.update(meta.extra or {})
                    if meta.pattern is not None:
                        patterns.append(re.compile(meta.pattern))
            annotation = annotation.__origin__
        if typing.get_origin(annotation) in (typing.Union, type(int | None)):
            # `Timestamp | None`: the pattern of the str branch.
            for branch in typing.get_args(annotation):
                for meta in getattr(branch, "__metadata__", ()):
                    if isinstance(meta, Meta) and meta.pattern is not None:
                        patterns.append(re.compile(meta.pattern))
        rules.append(
            _FieldRules(
                info.name,
                info.type,
                bool(extra.get(NULL_WHEN_NOT_FINITE)),
                bool(extra.get(_FINITE)),
                tuple(patterns),
            )
        )
    return tuple(rules)


def null_when_not_finite_fields(model: type[msgspec.Struct]) -> frozenset[str]:
    """Wire names of the `WireFloat` fields of `model` (for the schema generator)."""
    names = {f.name: f.encode_name for f in msgspec.structs.fields(model)}
    return frozenset(names[rule.name] for rule in _rules(model) if rule.null_is_nan)


_PLAIN_TYPES: Final = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers: msgspec takes exact types only (np.float64, a float
    subclass, is refused like np.float32)."""
    if type(value) in _PLAIN_TYPES or isinstance(value, msgspec.Struct | Enum):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    item = getattr(value, "item", None)
    return item() if callable(item) else value


class _WireModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Immutable, strict about unknown fields (the schemas say additionalProperties false),
    checked on construction."""

    def __post_init__(self) -> None:
        for rule in _rules(type(self)):
            value = getattr(self, rule.name)
            if value is None and rule.null_is_nan:
                value = math.nan
            try:
                converted = msgspec.convert(_plain(value), rule.annotation)
            except msgspec.ValidationError as exc:
                # "Expected `str` matching regex ... - at `$.sha256`" of a nested mapping:
                # the dotted field name first.
                text, _, where = str(exc).partition(" - at `$")
                key = rule.name + where.rstrip("`").replace("[", ".").replace("]", "")
                raise ValueError(f"{key}: {text}") from None
            if rule.finite and not math.isfinite(converted):
                raise ValueError(f"{rule.name}: must be a finite number, got {converted!r}")
            for pattern in rule.patterns:
                # msgspec searches with Python's `re`, whose `$` also matches before a final
                # newline; JSON Schema (and the consumers) match the whole value.
                if isinstance(converted, str) and not pattern.fullmatch(converted):
                    raise ValueError(
                        f"{rule.name}: {converted!r} does not match {pattern.pattern!r}"
                    )
            if converted is not getattr(self, rule.name):
                msgspec.structs.force_setattr(self, rule.name, converted)

    def to_dict(self) -> dict[str, Any]:
        """The payload as plain JSON types, fields in wire order."""
        data: dict[str, Any] = _null_for_non_finite(msgspec.to_builtins(self))
        return data


def _dumps(payload: Mapping[str, Any]) -> str:
    # json.dumps, not msgspec.json.encode: the bytes stay exactly those of earlier releases
    # (ASCII escapes, Python's float repr: msgspec writes 1e-05 as 0.00001). allow_nan=False
    # turns a forgotten NaN into an error here instead of invalid JSON on the wire.
    return json.dumps(payload, allow_nan=False, separators=(",", ":"), sort_keys=False)


class ModelRef(_WireModel, frozen=True, kw_only=True):
    """Encoder identity in an event (`EventMessage.model`), from `ModelInfo`."""

    name: Annotated[str, _described("Encoder name from the ONNX metadata.")]
    version: Annotated[str, _described("Encoder version from the ONNX metadata.")]
    sha256: Annotated[
        str,
        Meta(
            pattern=r"^[0-9a-f]{64}$",
            description="SHA-256 of the ONNX encoder file, lowercase hex.",
        ),
    ]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRef:
        return msgspec.convert(data, cls)


class BandChangeRef(_WireModel, frozen=True, kw_only=True):
    """One 1/3-octave band's level change against the nearest calibrated condition."""

    hz: Annotated[
        list[float],
        Meta(min_length=2, max_length=2, description="Lower and upper edge of the band, Hz."),
    ]
    change_db: Annotated[float, _described("Level change of the band, dB (negative: quieter).")]


def _band_refs(summary: EnvironmentSummary) -> list[BandChangeRef]:
    return [msgspec.convert(band.to_dict(), BandChangeRef) for band in summary.bands]


class EnvironmentInfo(_WireModel, frozen=True, kw_only=True):
    """How the sound around the machine differs from calibration (an event's context)."""

    level_change_db: Annotated[
        float,
        _described(
            "Broadband level change (bands from 88 Hz up) against the nearest calibrated "
            "condition, dB."
        ),
    ]
    change_db: Annotated[
        float,
        _described(
            "Median over the 1/3-octave bands of the absolute level change, dB: what is "
            "compared with margin_db."
        ),
    ]
    margin_db: Annotated[
        float,
        _described(
            "The change beyond which this machine's surroundings count as changed: the "
            "calibration's own spread plus 3 dB."
        ),
    ]
    bands: Annotated[list[BandChangeRef], _described("The bands that changed most, largest first.")]

    @classmethod
    def from_summary(cls, summary: EnvironmentSummary) -> EnvironmentInfo:
        data = summary.to_dict()
        return cls(
            level_change_db=data["level_change_db"],
            change_db=data["change_db"],
            margin_db=data["margin_db"],
            bands=_band_refs(summary),
        )


class Payload(_WireModel, frozen=True, kw_only=True):
    """A top-level payload: carries its ``schema`` id and reads back from JSON."""

    SCHEMA_ID: ClassVar[str]
    """The ``schema`` value, e.g. `SCHEMA_EVENT`; the field's default, repeated for lookups."""
    TITLE: ClassVar[str]
    """The ``title`` of its JSON Schema."""

    def to_json(self) -> str:
        """Compact JSON, as published."""
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Parse a received payload; unknown fields are ignored, a wrong ``schema`` is not."""
        found = data.get("schema")
        if found != cls.SCHEMA_ID:
            raise ValueError(f"payload field 'schema' is {found!r}, expected {cls.SCHEMA_ID!r}")
        # Consumers must ignore fields they do not know (docs/mqtt.md): a minor addition within
        # a major version must not break this reader, even though the model forbids extras.
        known = _wire_names(cls)
        nan_for_null = null_when_not_finite_fields(cls)
        return msgspec.convert(
            {
                key: math.nan if value is None and key in nan_for_null else value
                for key, value in data.items()
                if key in known
            },
            cls,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"payload is not a JSON object: {type(loaded).__name__}")
        return cls.from_dict(loaded)


@cache
def _wire_names(model: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f.encode_name for f in msgspec.structs.fields(model))


def wire_names(model: type[msgspec.Struct]) -> list[str]:
    """The JSON field names of `model`, in wire order."""
    return [f.encode_name for f in msgspec.structs.fields(model)]


# `schema` is the wire name; the attribute is schema_id, as it was with pydantic (where
# `schema` shadowed a method).
def _schema_field(schema_id: str) -> Any:
    return msgspec.field(default=schema_id, name="schema")


_NODE_DESCRIPTION: Final = "Node id (one MQTT topic level)."
_MACHINE_DESCRIPTION: Final = "Machine name (one MQTT topic level)."


class EventMessage(Payload, frozen=True, kw_only=True):
    """One lifecycle step (start, update, end) of an anomaly event, published on
    <prefix>/<node>/<machine>/event with QoS 1, not retained. Delivery is at-least-once:
    (event_id, type, seq) identifies duplicates.
    """

    SCHEMA_ID: ClassVar[str] = SCHEMA_EVENT
    TITLE: ClassVar[str] = "edge-asd event"

    schema_id: Annotated[Literal["edge-asd.event/1"], _described(_SCHEMA_FIELD_DESCRIPTION)] = (
        _schema_field(SCHEMA_EVENT)
    )
    # Enum fields also accept their plain strings ("start"), as the daemon passes them.
    type: Annotated[EventType, _described("Lifecycle step of the event.")]
    event_id: Annotated[
        str,
        Meta(
            min_length=1,
            description="Same id for the start, updates and end of one event (the daemon uses "
            "a uuid4 as 32 lowercase hex digits; treat it as opaque).",
        ),
    ]
    node: Annotated[TopicLevel, _described(_NODE_DESCRIPTION)]
    machine: Annotated[TopicLevel, _described(_MACHINE_DESCRIPTION)]
    seq: Annotated[
        int,
        Meta(ge=1, description="Per-node sequence number, strictly increasing across restarts."),
    ]
    ts: Annotated[
        Timestamp,
        _described("When this message was produced; ISO 8601 UTC with milliseconds."),
    ]
    start_ts: Annotated[
        Timestamp,
        _described("Start of the first window over the threshold; ISO 8601 UTC with milliseconds."),
    ]
    end_ts: Annotated[
        Timestamp | None,
        _described("End of the last window over the threshold; null until type is end."),
    ]
    score: Annotated[
        WireFloat,
        _described("Latest window score, same scale as threshold; null when not finite."),
    ]
    peak_score: Annotated[
        WireFloat,
        _described("Highest window score so far in this event; null when not finite."),
    ]
    threshold: Annotated[
        WireFloat,
        _described("Decision threshold from the calibration bundle; null when not finite."),
    ]
    windows_over: Annotated[Count, _described("Windows over the threshold so far in this event.")]
    dbfs: Annotated[
        WireFloat,
        _described(
            "Level of the latest window, dB relative to full scale (RMS 1.0); null when not finite."
        ),
    ]
    duration_seconds: Annotated[
        Seconds, _described("Seconds from start_ts to ts (to end_ts for end).")
    ]
    # Also accepts a mapping with name/version/sha256 (the daemon passes one).
    model: Annotated[ModelRef, _described("The encoder that produced the scores.")]
    bundle_id: Annotated[str, _described("Calibration bundle that set the threshold.")]
    # Added within major version 1 (consumers ignore fields they do not know); written on
    # every type so the schema stays closed with every field required.
    clip: Annotated[
        str | None,
        _described(
            "Absolute path of the event's audio clip on the gateway (FLAC, or WAV without "
            "libsndfile; a spectrogram PNG of the same name lies beside it), written "
            "clips.post_seconds after the end; null before the end, or without clips."
        ),
    ] = None
    explanation: Annotated[
        str | None,
        _described(
            "Why it fired, in words: the frequency band that changed most against normal, by "
            "how much and how (steady, intermittent, impulses and their rate); null before the "
            "end, or when it could not be computed."
        ),
    ] = None
    clip_url: Annotated[
        str | None,
        _described(
            "The clip on the gateway's HTTP endpoint (http://<bind>:<port>/clips/"
            "<event_id>.<ext>) when `http` is configured; null otherwise, and before the end."
        ),
    ] = None
    reason: Annotated[
        EndReason | None,
        _described(
            "Set on an end the sound did not cause: restart (the daemon died with the event "
            "open and closed it at its next start), shutdown, fault (a worker thread failed) "
            "or reload (bundles reloaded); null otherwise."
        ),
    ] = None
    environment: Annotated[
        EnvironmentInfo | None,
        _described(
            "Set while the sound around the machine differs from calibration (state "
            "environment_changed): the event was raised or went on in surroundings the "
            "calibration never heard, so it may be the surroundings rather than the machine; "
            "null otherwise."
        ),
    ] = None

    @property
    def model_ref(self) -> ModelRef:
        """Kept from the dataclass API, where `model` could still be a mapping."""
        return self.model


class ScoreMessage(Payload, frozen=True, kw_only=True):
    """Per-window score telemetry on <prefix>/<node>/<machine>/score, QoS 0, not retained,
    rate-limited by score_interval_seconds; dropped while the broker is away.
    """

    SCHEMA_ID: ClassVar[str] = SCHEMA_SCORE
    TITLE: ClassVar[str] = "edge-asd score"

    schema_id: Annotated[Literal["edge-asd.score/1"], _described(_SCHEMA_FIELD_DESCRIPTION)] = (
        _schema_field(SCHEMA_SCORE)
    )
    node: Annotated[TopicLevel, _described(_NODE_DESCRIPTION)]
    machine: Annotated[TopicLevel, _described(_MACHINE_DESCRIPTION)]
    ts: Annotated[Timestamp, _described("End of the window; ISO 8601 UTC with milliseconds.")]
    score: Annotated[WireFloat, _described("Window score; null when not finite.")]
    threshold: Annotated[WireFloat, _described("Decision threshold; null when not finite.")]
    dbfs: Annotated[
        WireFloat,
        _described("Window level, dB relative to full scale (RMS 1.0); null when not finite."),
    ]
    state: Annotated[MachineState, _described("Machine state after this window.")]


class OutboxMode(StrEnum):
    """How events are queued (`StatsMessage.outbox`)."""

    DURABLE = "durable"
    """Stored in the SQLite outbox before they are published: nothing lost while away."""
    DEGRADED = "degraded"
    """The outbox cannot store (full or read-only disk, I/O error): events go to the broker
    directly through a bounded in-memory queue, lost on restart; retried periodically."""


class StatsMessage(Payload, frozen=True, kw_only=True):
    """Node health on <prefix>/<node>/stats, QoS 0, not retained, every
    stats_interval_seconds; counters are totals since the process started unless noted.
    """

    SCHEMA_ID: ClassVar[str] = SCHEMA_STATS
    TITLE: ClassVar[str] = "edge-asd stats"

    schema_id: Annotated[Literal["edge-asd.stats/1"], _described(_SCHEMA_FIELD_DESCRIPTION)] = (
        _schema_field(SCHEMA_STATS)
    )
    node: Annotated[TopicLevel, _described(_NODE_DESCRIPTION)]
    ts: Annotated[
        Timestamp,
        _described("When the snapshot was taken; ISO 8601 UTC with milliseconds."),
    ]
    uptime_seconds: Annotated[Seconds, _described("Seconds since the daemon started.")]
    windows_processed: Annotated[Count, _described("Windows scored.")]
    capture_overruns: Annotated[Count, _described("Audio driver overruns reported by PortAudio.")]
    overwritten_frames: Annotated[
        Count,
        _described("Audio frames the ring buffer overwrote before inference read them."),
    ]
    dropped_windows: Annotated[Count, _described("Windows skipped because inference fell behind.")]
    inference_ms_p50: Annotated[
        OptionalWireFloat,
        _described(
            "Median encoder+scoring time per window, milliseconds; null before the first window."
        ),
    ]
    inference_ms_p95: Annotated[
        OptionalWireFloat,
        _described(
            "95th percentile encoder+scoring time per window, milliseconds; null before the "
            "first window."
        ),
    ]
    outbox_depth: Annotated[Count, _described("Events stored and not yet acknowledged.")]
    outbox_discarded: Annotated[
        Count,
        _described(
            "Events dropped by the outbox bounds (count or age); persisted, total over the "
            "outbox file's life."
        ),
    ]
    outbox_write_errors: Annotated[
        Count, _described("Outbox writes that failed (disk full, I/O error).")
    ]
    reconnects: Annotated[
        Count,
        _described("Successful reconnections to the broker after the first connection."),
    ]
    version: Annotated[str, _described("edge-asd package version.")]
    machines: Annotated[
        dict[TopicLevel, MachineState],
        _described("Current state of every machine on this node."),
    ]
    faults: Annotated[
        dict[TopicLevel, str],
        _described(
            "Why each machine in state fault is there (capture or inference thread dead or "
            "hung); empty when none is."
        ),
    ] = msgspec.field(default_factory=dict)
    messages_quarantined: Annotated[
        Count,
        _described(
            "Outbox messages the broker refused (MQTT 5 reason code) or the client could never "
            "send, set aside instead of blocking the queue."
        ),
    ] = 0
    outbox: Annotated[
        OutboxMode,
        _described(
            "durable: events are stored before they are published; degraded: the outbox "
            "cannot store (outbox_degraded_reason says why) and events are published "
            "directly, without durability, until it works again."
        ),
    ] = OutboxMode.DURABLE
    outbox_degraded_reason: Annotated[
        str | None, _described("Why the outbox is degraded; null when it is durable.")
    ] = None
    outbox_recovered_corrupt: Annotated[
        Count,
        _described(
            "Corrupt outbox files moved aside (kept for inspection) and replaced by a fresh "
            "one; persisted, total over the gateway's life."
        ),
    ] = 0
    outbox_quarantined: Annotated[
        Count,
        _described(
            "Messages in the outbox's quarantine table, total over the outbox file's life "
            "(messages_quarantined counts since start)."
        ),
    ] = 0
    outbox_clock_jumps: Annotated[
        Count, _described("Wall-clock jumps of more than a minute seen by the outbox.")
    ] = 0
    events_not_stored: Annotated[
        Count,
        _described("Events the outbox could not store, published directly instead (not durable)."),
    ] = 0
    events_held: Annotated[
        Count,
        _described(
            "Events the outbox could not store, held in memory until the broker is reachable "
            "(bounded; lost on restart)."
        ),
    ] = 0
    events_lost: Annotated[
        Count,
        _described(
            "Events neither stored nor delivered: the in-memory queue of a degraded outbox "
            "overflowed while the broker was away."
        ),
    ] = 0


class EnvironmentMessage(Payload, frozen=True, kw_only=True):
    """Whether the sound around a machine still resembles its calibration, retained on
    <prefix>/<node>/<machine>/environment, QoS 0: published when it changes (and
    `changed` false at start-up and after a reload), republished after every (re)connect.
    """

    SCHEMA_ID: ClassVar[str] = SCHEMA_ENVIRONMENT
    TITLE: ClassVar[str] = "edge-asd environment"

    schema_id: Annotated[
        Literal["edge-asd.environment/1"], _described(_SCHEMA_FIELD_DESCRIPTION)
    ] = _schema_field(SCHEMA_ENVIRONMENT)
    node: Annotated[TopicLevel, _described(_NODE_DESCRIPTION)]
    machine: Annotated[TopicLevel, _described(_MACHINE_DESCRIPTION)]
    ts: Annotated[
        Timestamp,
        _described("When the change (or the return) was decided; ISO 8601 UTC with milliseconds."),
    ]
    changed: Annotated[
        bool,
        _described(
            "True: for tens of seconds the sound around the running machine has not resembled "
            "anything heard at calibration (state environment_changed); recalibrate or learn "
            "the new condition. False: it does (again), or the monitor just started."
        ),
    ]
    level_change_db: Annotated[
        float | None,
        _described(
            "Broadband level change against the nearest calibrated condition, dB; null when "
            "changed is false."
        ),
    ]
    change_db: Annotated[
        float | None,
        _described(
            "Median over the 1/3-octave bands of the absolute level change, dB; null when "
            "changed is false."
        ),
    ]
    margin_db: Annotated[
        float | None,
        _described(
            "This machine's margin for change_db (the calibration's own spread plus 3 dB); "
            "null when changed is false."
        ),
    ]
    bands: Annotated[
        list[BandChangeRef],
        _described(
            "The bands that changed most, largest change first; empty when changed is false."
        ),
    ]

    @classmethod
    def build(
        cls, node: str, machine: str, ts: str, summary: EnvironmentSummary | None
    ) -> EnvironmentMessage:
        """The message for `summary` (None: the environment is as calibrated)."""
        if summary is None:
            return cls(
                node=node,
                machine=machine,
                ts=ts,
                changed=False,
                level_change_db=None,
                change_db=None,
                margin_db=None,
                bands=[],
            )
        info = EnvironmentInfo.from_summary(summary)
        return cls(
            node=node,
            machine=machine,
            ts=ts,
            changed=True,
            level_change_db=info.level_change_db,
            change_db=info.change_db,
            margin_db=info.margin_db,
            bands=info.bands,
        )


PAYLOAD_MODELS: Final[Mapping[str, type[Payload]]] = {
    SCHEMA_EVENT: EventMessage,
    SCHEMA_SCORE: ScoreMessage,
    SCHEMA_STATS: StatsMessage,
    SCHEMA_ENVIRONMENT: EnvironmentMessage,
}
"""Payload model of each ``schema`` id."""


def json_schema(schema_id: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) for `schema_id`, e.g. `SCHEMA_EVENT`; a fresh copy.

    Generated from the payload model on first use; the files in ``edge_asd/schemas/`` are the
    same text (a test keeps them so).
    """
    # Imported here, not at the top: only tests and tools need schemas, the daemon never does.
    from edge_asd.mqtt.schemas import payload_schema

    return payload_schema(schema_id)


def event_schema() -> dict[str, Any]:
    """JSON Schema of `EventMessage` payloads."""
    return json_schema(SCHEMA_EVENT)


def score_schema() -> dict[str, Any]:
    """JSON Schema of `ScoreMessage` payloads."""
    return json_schema(SCHEMA_SCORE)


def stats_schema() -> dict[str, Any]:
    """JSON Schema of `StatsMessage` payloads."""
    return json_schema(SCHEMA_STATS)


def environment_schema() -> dict[str, Any]:
    """JSON Schema of `EnvironmentMessage` payloads."""
    return json_schema(SCHEMA_ENVIRONMENT)


def _check_topic_name(key: str, value: str) -> None:
    """One topic level (node id, machine name): non-empty, no wildcard, no '/'."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: must be a non-empty string, got {value!r}")
    if "/" in value:
        raise ValueError(f"{key}: {value!r} must not contain '/' (it is one MQTT topic level)")
    for char in _FORBIDDEN_TOPIC_CHARS:
        if char in value:
            raise ValueError(f"{key}: {value!r} must not contain {char!r} (MQTT wildcard/NUL)")


def _check_topic_prefix(key: str, value: str) -> None:
    """The prefix may span levels ('plant/edge-asd') but has no empty level or wildcard."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: must be a non-empty string, got {value!r}")
    for char in _FORBIDDEN_TOPIC_CHARS:
        if char in value:
            raise ValueError(f"{key}: {value!r} must not contain {char!r} (MQTT wildcard/NUL)")
    if any(level == "" for level in value.split("/")):
        raise ValueError(f"{key}: {value!r} has an empty topic level (leading, trailing or '//')")
    if value.startswith("$"):
        raise ValueError(f"{key}: {value!r} must not start with '$' (reserved for the broker)")


@dataclass(frozen=True)
class Topics:
    """Topic names under ``<prefix>/<node_id>/``; validated on construction."""

    prefix: str
    node_id: str

    def __post_init__(self) -> None:
        _check_topic_prefix("topic_prefix", self.prefix)
        _check_topic_name("node_id", self.node_id)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def _machine(self, machine: str, leaf: str) -> str:
        _check_topic_name("machine", machine)
        return f"{self.base}/{machine}/{leaf}"

    def state(self, machine: str) -> str:
        return self._machine(machine, "state")

    def event(self, machine: str) -> str:
        return self._machine(machine, "event")

    def score(self, machine: str) -> str:
        return self._machine(machine, "score")

    def environment(self, machine: str) -> str:
        return self._machine(machine, "environment")

    @property
    def all(self) -> str:
        """Subscription filter for everything this node publishes."""
        return f"{self.base}/#"


def check_machine_name(machine: str) -> None:
    """Raise ValueError naming the key if `machine` cannot be one MQTT topic level."""
    _check_topic_name("machine", machine)
