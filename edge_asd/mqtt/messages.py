"""Typed, versioned MQTT payloads and topic names.

Every payload is a flat JSON object whose ``schema`` field names its type and major version
(``edge-asd.event/1``). The payloads are pydantic models, and they are the single source of the
wire format: `to_dict()`/`to_json()` serialise them and `edge_asd.mqtt.schemas` generates the
JSON Schemas in ``edge_asd/schemas/`` from the same models (only on demand, never at import).

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

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
alike by Python, pydantic's regex engine and ECMA 262, the dialect of JSON Schema)."""

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


def _null_for_non_finite(value: float | None) -> float | None:
    """JSON has no NaN/inf: map them to null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _nan_for_null(value: object) -> object:
    """A null number on the wire was not finite: NaN in Python."""
    return math.nan if value is None else value


# ------------------------------------------------------------------ field types
# Each constraint is written once, here; it checks the Python value on construction and
# becomes the matching JSON Schema keyword (the schemas are generated in serialization mode,
# so they describe what `to_dict()` writes).

Timestamp = Annotated[
    str,
    StringConstraints(pattern=TS_PATTERN),
    Field(json_schema_extra={"format": "date-time"}, examples=["2026-11-22T03:04:05.123Z"]),
]
"""`format_ts` output; anything else is rejected on construction."""

TopicLevel = Annotated[str, StringConstraints(min_length=1, pattern=TOPIC_LEVEL_PATTERN)]
"""A node id or machine name: both are one level of the topic the payload is published on."""

WireFloat = Annotated[
    float,
    BeforeValidator(_nan_for_null),
    PlainSerializer(_null_for_non_finite, return_type=float | None),
]
"""A float that may legitimately be NaN/inf in Python; null on the wire, NaN when read back."""

OptionalWireFloat = Annotated[
    float | None, PlainSerializer(_null_for_non_finite, return_type=float | None)
]
"""A float that is None while unknown (and null when not finite); read back as None."""

Count = Annotated[int, Field(ge=0)]

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A non-negative, finite number of seconds (differences of finite timestamps or clocks)."""

_SCHEMA_FIELD_DESCRIPTION: Final = "Payload type and major version."


class _WireModel(BaseModel):
    """Immutable, strict about unknown fields (the schemas say additionalProperties false)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        # `schema` has a default but is always written: required in the generated schema.
        json_schema_serialization_defaults_required=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The payload as plain JSON types, fields in wire order."""
        return self.model_dump(mode="json", by_alias=True)


def _dumps(payload: Mapping[str, Any]) -> str:
    # json.dumps, not model_dump_json: the bytes stay exactly those of earlier releases (ASCII
    # escapes, Python's float repr). allow_nan=False turns a forgotten NaN into an error here
    # instead of invalid JSON on the wire.
    return json.dumps(payload, allow_nan=False, separators=(",", ":"), sort_keys=False)


class ModelRef(_WireModel):
    """Encoder identity in an event (`EventMessage.model`), from `ModelInfo`."""

    name: str = Field(description="Encoder name from the ONNX metadata.")
    version: str = Field(description="Encoder version from the ONNX metadata.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the ONNX encoder file, lowercase hex."
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRef:
        return cls.model_validate(data)


class BandChangeRef(_WireModel):
    """One 1/3-octave band's level change against the nearest calibrated condition."""

    hz: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(
        description="Lower and upper edge of the band, Hz."
    )
    change_db: float = Field(description="Level change of the band, dB (negative: quieter).")


def _band_refs(summary: EnvironmentSummary) -> list[BandChangeRef]:
    return [BandChangeRef.model_validate(band.to_dict()) for band in summary.bands]


class EnvironmentInfo(_WireModel):
    """How the sound around the machine differs from calibration (an event's context)."""

    level_change_db: float = Field(
        description="Broadband level change (bands from 88 Hz up) against the nearest "
        "calibrated condition, dB."
    )
    change_db: float = Field(
        description="Median over the 1/3-octave bands of the absolute level change, dB: what "
        "is compared with margin_db."
    )
    margin_db: float = Field(
        description="The change beyond which this machine's surroundings count as changed: the "
        "calibration's own spread plus 3 dB."
    )
    bands: list[BandChangeRef] = Field(description="The bands that changed most, largest first.")

    @classmethod
    def from_summary(cls, summary: EnvironmentSummary) -> EnvironmentInfo:
        data = summary.to_dict()
        return cls(
            level_change_db=data["level_change_db"],
            change_db=data["change_db"],
            margin_db=data["margin_db"],
            bands=_band_refs(summary),
        )


class Payload(_WireModel):
    """A top-level payload: carries its ``schema`` id and reads back from JSON."""

    SCHEMA_ID: ClassVar[str]
    """The ``schema`` value, e.g. `SCHEMA_EVENT`; the field's default, repeated for lookups."""

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
        known = {info.alias or name for name, info in cls.model_fields.items()}
        return cls.model_validate({key: value for key, value in data.items() if key in known})

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"payload is not a JSON object: {type(loaded).__name__}")
        return cls.from_dict(loaded)


class EventMessage(Payload):
    """One lifecycle step (start, update, end) of an anomaly event, published on
    <prefix>/<node>/<machine>/event with QoS 1, not retained. Delivery is at-least-once:
    (event_id, type, seq) identifies duplicates.
    """

    model_config = ConfigDict(title="edge-asd event")
    SCHEMA_ID: ClassVar[str] = SCHEMA_EVENT

    # `schema` itself would shadow a (deprecated) BaseModel method: the alias keeps the wire name.
    schema_id: Literal["edge-asd.event/1"] = Field(
        default=SCHEMA_EVENT, alias="schema", description=_SCHEMA_FIELD_DESCRIPTION
    )
    # Enum fields also accept their plain strings ("start"), as the daemon passes them.
    type: EventType = Field(description="Lifecycle step of the event.")
    event_id: str = Field(
        min_length=1,
        description="Same id for the start, updates and end of one event (the daemon uses a "
        "uuid4 as 32 lowercase hex digits; treat it as opaque).",
    )
    node: TopicLevel = Field(description="Node id (one MQTT topic level).")
    machine: TopicLevel = Field(description="Machine name (one MQTT topic level).")
    seq: int = Field(
        ge=1,
        description="Per-node sequence number, strictly increasing across restarts.",
    )
    ts: Timestamp = Field(
        description="When this message was produced; ISO 8601 UTC with milliseconds."
    )
    start_ts: Timestamp = Field(
        description="Start of the first window over the threshold; ISO 8601 UTC with milliseconds."
    )
    end_ts: Timestamp | None = Field(
        description="End of the last window over the threshold; null until type is end."
    )
    score: WireFloat = Field(
        description="Latest window score, same scale as threshold; null when not finite."
    )
    peak_score: WireFloat = Field(
        description="Highest window score so far in this event; null when not finite."
    )
    threshold: WireFloat = Field(
        description="Decision threshold from the calibration bundle; null when not finite."
    )
    windows_over: Count = Field(description="Windows over the threshold so far in this event.")
    dbfs: WireFloat = Field(
        description="Level of the latest window, dB relative to full scale (RMS 1.0); null "
        "when not finite."
    )
    duration_seconds: Seconds = Field(
        description="Seconds from start_ts to ts (to end_ts for end)."
    )
    # Also accepts a mapping with name/version/sha256 (the daemon passes one).
    model: ModelRef = Field(description="The encoder that produced the scores.")
    bundle_id: str = Field(description="Calibration bundle that set the threshold.")
    # Added within major version 1 (consumers ignore fields they do not know); written on
    # every type so the schema stays closed with every field required.
    clip: str | None = Field(
        None,
        description="Absolute path of the event's audio clip on the gateway (FLAC, or WAV "
        "without libsndfile; a spectrogram PNG of the same name lies beside it), written "
        "clips.post_seconds after the end; null before the end, or without clips.",
    )
    explanation: str | None = Field(
        None,
        description="Why it fired, in words: the frequency band that changed most against "
        "normal, by how much and how (steady, intermittent, impulses and their rate); null "
        "before the end, or when it could not be computed.",
    )
    clip_url: str | None = Field(
        None,
        description="The clip on the gateway's HTTP endpoint (http://<bind>:<port>/clips/"
        "<event_id>.<ext>) when `http` is configured; null otherwise, and before the end.",
    )
    reason: EndReason | None = Field(
        default=None,
        description="Set on an end the sound did not cause: restart (the daemon died with the "
        "event open and closed it at its next start), shutdown, fault (a worker thread "
        "failed) or reload (bundles reloaded); null otherwise.",
    )
    environment: EnvironmentInfo | None = Field(
        default=None,
        description="Set while the sound around the machine differs from calibration "
        "(state environment_changed): the event was raised or went on in surroundings the "
        "calibration never heard, so it may be the surroundings rather than the machine; "
        "null otherwise.",
    )

    @property
    def model_ref(self) -> ModelRef:
        """Kept from the dataclass API, where `model` could still be a mapping."""
        return self.model


class ScoreMessage(Payload):
    """Per-window score telemetry on <prefix>/<node>/<machine>/score, QoS 0, not retained,
    rate-limited by score_interval_seconds; dropped while the broker is away.
    """

    model_config = ConfigDict(title="edge-asd score")
    SCHEMA_ID: ClassVar[str] = SCHEMA_SCORE

    schema_id: Literal["edge-asd.score/1"] = Field(
        default=SCHEMA_SCORE, alias="schema", description=_SCHEMA_FIELD_DESCRIPTION
    )
    node: TopicLevel = Field(description="Node id (one MQTT topic level).")
    machine: TopicLevel = Field(description="Machine name (one MQTT topic level).")
    ts: Timestamp = Field(description="End of the window; ISO 8601 UTC with milliseconds.")
    score: WireFloat = Field(description="Window score; null when not finite.")
    threshold: WireFloat = Field(description="Decision threshold; null when not finite.")
    dbfs: WireFloat = Field(
        description="Window level, dB relative to full scale (RMS 1.0); null when not finite."
    )
    state: MachineState = Field(description="Machine state after this window.")


class OutboxMode(StrEnum):
    """How events are queued (`StatsMessage.outbox`)."""

    DURABLE = "durable"
    """Stored in the SQLite outbox before they are published: nothing lost while away."""
    DEGRADED = "degraded"
    """The outbox cannot store (full or read-only disk, I/O error): events go to the broker
    directly through a bounded in-memory queue, lost on restart; retried periodically."""


class StatsMessage(Payload):
    """Node health on <prefix>/<node>/stats, QoS 0, not retained, every
    stats_interval_seconds; counters are totals since the process started unless noted.
    """

    model_config = ConfigDict(title="edge-asd stats")
    SCHEMA_ID: ClassVar[str] = SCHEMA_STATS

    schema_id: Literal["edge-asd.stats/1"] = Field(
        default=SCHEMA_STATS, alias="schema", description=_SCHEMA_FIELD_DESCRIPTION
    )
    node: TopicLevel = Field(description="Node id (one MQTT topic level).")
    ts: Timestamp = Field(
        description="When the snapshot was taken; ISO 8601 UTC with milliseconds."
    )
    uptime_seconds: Seconds = Field(description="Seconds since the daemon started.")
    windows_processed: Count = Field(description="Windows scored.")
    capture_overruns: Count = Field(description="Audio driver overruns reported by PortAudio.")
    overwritten_frames: Count = Field(
        description="Audio frames the ring buffer overwrote before inference read them."
    )
    dropped_windows: Count = Field(description="Windows skipped because inference fell behind.")
    inference_ms_p50: OptionalWireFloat = Field(
        description="Median encoder+scoring time per window, milliseconds; null before the "
        "first window."
    )
    inference_ms_p95: OptionalWireFloat = Field(
        description="95th percentile encoder+scoring time per window, milliseconds; null "
        "before the first window."
    )
    outbox_depth: Count = Field(description="Events stored and not yet acknowledged.")
    outbox_discarded: Count = Field(
        description="Events dropped by the outbox bounds (count or age); persisted, total "
        "over the outbox file's life."
    )
    outbox_write_errors: Count = Field(
        description="Outbox writes that failed (disk full, I/O error)."
    )
    reconnects: Count = Field(
        description="Successful reconnections to the broker after the first connection."
    )
    version: str = Field(description="edge-asd package version.")
    machines: dict[TopicLevel, MachineState] = Field(
        description="Current state of every machine on this node."
    )
    faults: dict[TopicLevel, str] = Field(
        default_factory=dict,
        description="Why each machine in state fault is there (capture or inference thread "
        "dead or hung); empty when none is.",
    )
    messages_quarantined: Count = Field(
        default=0,
        description="Outbox messages the broker refused (MQTT 5 reason code) or the client "
        "could never send, set aside instead of blocking the queue.",
    )
    outbox: OutboxMode = Field(
        default=OutboxMode.DURABLE,
        description="durable: events are stored before they are published; degraded: the "
        "outbox cannot store (outbox_degraded_reason says why) and events are published "
        "directly, without durability, until it works again.",
    )
    outbox_degraded_reason: str | None = Field(
        default=None, description="Why the outbox is degraded; null when it is durable."
    )
    outbox_recovered_corrupt: Count = Field(
        default=0,
        description="Corrupt outbox files moved aside (kept for inspection) and replaced by a "
        "fresh one; persisted, total over the gateway's life.",
    )
    outbox_quarantined: Count = Field(
        default=0,
        description="Messages in the outbox's quarantine table, total over the outbox file's "
        "life (messages_quarantined counts since start).",
    )
    outbox_clock_jumps: Count = Field(
        default=0, description="Wall-clock jumps of more than a minute seen by the outbox."
    )
    events_not_stored: Count = Field(
        default=0,
        description="Events the outbox could not store, published directly instead (not durable).",
    )
    events_held: Count = Field(
        default=0,
        description="Events the outbox could not store, held in memory until the broker is "
        "reachable (bounded; lost on restart).",
    )
    events_lost: Count = Field(
        default=0,
        description="Events neither stored nor delivered: the in-memory queue of a degraded "
        "outbox overflowed while the broker was away.",
    )


class EnvironmentMessage(Payload):
    """Whether the sound around a machine still resembles its calibration, retained on
    <prefix>/<node>/<machine>/environment, QoS 0: published when it changes (and
    `changed` false at start-up and after a reload), republished after every (re)connect.
    """

    model_config = ConfigDict(title="edge-asd environment")
    SCHEMA_ID: ClassVar[str] = SCHEMA_ENVIRONMENT

    schema_id: Literal["edge-asd.environment/1"] = Field(
        default=SCHEMA_ENVIRONMENT, alias="schema", description=_SCHEMA_FIELD_DESCRIPTION
    )
    node: TopicLevel = Field(description="Node id (one MQTT topic level).")
    machine: TopicLevel = Field(description="Machine name (one MQTT topic level).")
    ts: Timestamp = Field(
        description="When the change (or the return) was decided; ISO 8601 UTC with milliseconds."
    )
    changed: bool = Field(
        description="True: for tens of seconds the sound around the running machine has not "
        "resembled anything heard at calibration (state environment_changed); recalibrate or "
        "learn the new condition. False: it does (again), or the monitor just started."
    )
    level_change_db: float | None = Field(
        description="Broadband level change against the nearest calibrated condition, dB; "
        "null when changed is false."
    )
    change_db: float | None = Field(
        description="Median over the 1/3-octave bands of the absolute level change, dB; null "
        "when changed is false."
    )
    margin_db: float | None = Field(
        description="This machine's margin for change_db (the calibration's own spread plus "
        "3 dB); null when changed is false."
    )
    bands: list[BandChangeRef] = Field(
        description="The bands that changed most, largest change first; empty when changed is "
        "false."
    )

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
