"""Typed, versioned MQTT payloads and topic names.

Every payload is a flat JSON object whose ``schema`` field names its type and major version
(``edge-asd.event/1``). Timestamps, in the dataclasses as on the wire, are ISO 8601 UTC strings
with milliseconds (``2026-11-22T03:04:05.123Z``); build them with `format_ts(epoch_seconds)`
(checked on construction, so a payload never carries another format). Non-finite
floats (a NaN score, the -inf dBFS of digital silence) become JSON ``null``, so a payload is
always valid JSON. The JSON Schemas live in ``edge_asd/schemas/``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Final

from edge_asd.detection.states import EventType, MachineState

_LOGGER = logging.getLogger(__name__)

SCHEMA_EVENT: Final = "edge-asd.event/1"
SCHEMA_SCORE: Final = "edge-asd.score/1"
SCHEMA_STATS: Final = "edge-asd.stats/1"

DEFAULT_TOPIC_PREFIX: Final = "edge-asd"

_MS_PER_SECOND: Final = 1000
_TS_PATTERN: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# MQTT reserves these in topic names (wildcards) or forbids them (NUL).
_FORBIDDEN_TOPIC_CHARS: Final = ("+", "#", "\x00")

_SCHEMA_FILES: Final = {
    SCHEMA_EVENT: "event.schema.json",
    SCHEMA_SCORE: "score.schema.json",
    SCHEMA_STATS: "stats.schema.json",
}


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
    if not isinstance(text, str) or not _TS_PATTERN.match(text):
        raise ValueError(f"timestamp {text!r} is not ISO 8601 UTC with milliseconds")
    moment = datetime.strptime(text[:-1], f"{_TS_FORMAT}.%f").replace(tzinfo=UTC)
    return round((moment - _EPOCH) / timedelta(milliseconds=1)) / _MS_PER_SECOND


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/inf: map them to null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _check_ts(key: str, value: str | None, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or not _TS_PATTERN.match(value):
        raise ValueError(
            f"{key}: {value!r} is not ISO 8601 UTC with milliseconds; build it with format_ts()"
        )


def _dumps(payload: Mapping[str, Any]) -> str:
    # allow_nan=False turns a forgotten NaN into an error here instead of invalid JSON on the wire.
    return json.dumps(payload, allow_nan=False, separators=(",", ":"), sort_keys=False)


def _check_schema(data: Mapping[str, Any], expected: str) -> None:
    found = data.get("schema")
    if found != expected:
        raise ValueError(f"payload field 'schema' is {found!r}, expected {expected!r}")


@dataclass(frozen=True)
class ModelRef:
    """Which encoder produced the scores."""

    name: str
    version: str
    sha256: str
    """Hex SHA-256 of the ONNX file."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRef:
        return cls(name=str(data["name"]), version=str(data["version"]), sha256=str(data["sha256"]))


def _set(obj: object, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass in __post_init__."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class EventMessage:
    """One lifecycle step of an anomaly event (``<machine>/event``).

    ``type`` accepts the strings ``start``/``update``/``end`` and ``model`` a mapping with
    name/version/sha256; both are normalised (and checked) on construction.
    """

    type: EventType | str
    event_id: str
    """Same for start, updates and end of one event."""
    node: str
    machine: str
    seq: int
    """Per-node, strictly increasing across restarts (`Outbox.next_seq`)."""
    ts: str
    """When this message was produced (`format_ts`)."""
    start_ts: str
    """First window over the threshold (`format_ts`)."""
    end_ts: str | None
    """End of the event; None until ``type`` is end."""
    score: float
    """Latest (smoothed) window score, same units as ``threshold``."""
    peak_score: float
    """Highest window score so far in this event."""
    threshold: float
    windows_over: int
    """Windows over the threshold so far in this event."""
    dbfs: float
    """Level of the latest window, dB relative to full scale (<= 0)."""
    duration_seconds: float
    """Seconds from ``start_ts`` to ``ts`` (or to ``end_ts`` for end)."""
    model: ModelRef | Mapping[str, str]
    bundle_id: str
    """Calibration bundle that set the threshold."""
    schema: str = field(default=SCHEMA_EVENT)

    def __post_init__(self) -> None:
        _set(self, "type", EventType(self.type))
        if not isinstance(self.model, ModelRef):
            _set(self, "model", ModelRef.from_dict(self.model))
        _check_ts("ts", self.ts)
        _check_ts("start_ts", self.start_ts)
        _check_ts("end_ts", self.end_ts, nullable=True)

    @property
    def model_ref(self) -> ModelRef:
        assert isinstance(self.model, ModelRef)  # normalised in __post_init__
        return self.model

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "type": str(self.type),
            "event_id": self.event_id,
            "node": self.node,
            "machine": self.machine,
            "seq": int(self.seq),
            "ts": self.ts,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "score": _finite_or_none(self.score),
            "peak_score": _finite_or_none(self.peak_score),
            "threshold": _finite_or_none(self.threshold),
            "windows_over": int(self.windows_over),
            "dbfs": _finite_or_none(self.dbfs),
            "duration_seconds": _finite_or_none(self.duration_seconds),
            "model": self.model_ref.to_dict(),
            "bundle_id": self.bundle_id,
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventMessage:
        _check_schema(data, SCHEMA_EVENT)
        return cls(
            type=EventType(data["type"]),
            event_id=str(data["event_id"]),
            node=str(data["node"]),
            machine=str(data["machine"]),
            seq=int(data["seq"]),
            ts=data["ts"],
            start_ts=data["start_ts"],
            end_ts=data.get("end_ts"),
            score=_float_or_nan(data["score"]),
            peak_score=_float_or_nan(data["peak_score"]),
            threshold=_float_or_nan(data["threshold"]),
            windows_over=int(data["windows_over"]),
            dbfs=_float_or_nan(data["dbfs"]),
            duration_seconds=_float_or_nan(data["duration_seconds"]),
            model=ModelRef.from_dict(data["model"]),
            bundle_id=str(data["bundle_id"]),
        )


@dataclass(frozen=True)
class ScoreMessage:
    """Per-window score telemetry (``<machine>/score``), QoS 0, rate-limited by the daemon."""

    node: str
    machine: str
    ts: str
    """End of the window (`format_ts`)."""
    score: float
    threshold: float
    dbfs: float
    """Window level, dB relative to full scale."""
    state: MachineState | str
    schema: str = field(default=SCHEMA_SCORE)

    def __post_init__(self) -> None:
        _set(self, "state", MachineState(self.state))
        _check_ts("ts", self.ts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "node": self.node,
            "machine": self.machine,
            "ts": self.ts,
            "score": _finite_or_none(self.score),
            "threshold": _finite_or_none(self.threshold),
            "dbfs": _finite_or_none(self.dbfs),
            "state": str(self.state),
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreMessage:
        _check_schema(data, SCHEMA_SCORE)
        return cls(
            node=str(data["node"]),
            machine=str(data["machine"]),
            ts=data["ts"],
            score=_float_or_nan(data["score"]),
            threshold=_float_or_nan(data["threshold"]),
            dbfs=_float_or_nan(data["dbfs"]),
            state=MachineState(data["state"]),
        )


@dataclass(frozen=True)
class StatsMessage:
    """Node health counters (``stats``); counters are totals since the process started."""

    node: str
    ts: str
    """When the snapshot was taken (`format_ts`)."""
    uptime_seconds: float
    windows_processed: int
    capture_overruns: int
    overwritten_frames: int
    """Audio frames the ring buffer overwrote before inference read them."""
    dropped_windows: int
    inference_ms_p50: float | None
    """Median encoder+scoring time per window, milliseconds; None before the first window."""
    inference_ms_p95: float | None
    outbox_depth: int
    outbox_discarded: int
    """Persisted total of events dropped by the outbox bounds (count or age)."""
    outbox_write_errors: int
    reconnects: int
    version: str
    """edge-asd package version."""
    machines: Mapping[str, MachineState | str]
    """Current state of every machine on this node."""
    schema: str = field(default=SCHEMA_STATS)

    def __post_init__(self) -> None:
        _set(self, "machines", {str(k): MachineState(v) for k, v in self.machines.items()})
        _check_ts("ts", self.ts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "node": self.node,
            "ts": self.ts,
            "uptime_seconds": _finite_or_none(self.uptime_seconds),
            "windows_processed": int(self.windows_processed),
            "capture_overruns": int(self.capture_overruns),
            "overwritten_frames": int(self.overwritten_frames),
            "dropped_windows": int(self.dropped_windows),
            "inference_ms_p50": _finite_or_none(self.inference_ms_p50),
            "inference_ms_p95": _finite_or_none(self.inference_ms_p95),
            "outbox_depth": int(self.outbox_depth),
            "outbox_discarded": int(self.outbox_discarded),
            "outbox_write_errors": int(self.outbox_write_errors),
            "reconnects": int(self.reconnects),
            "version": self.version,
            "machines": {name: str(state) for name, state in self.machines.items()},
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsMessage:
        _check_schema(data, SCHEMA_STATS)
        p50 = data.get("inference_ms_p50")
        p95 = data.get("inference_ms_p95")
        return cls(
            node=str(data["node"]),
            ts=data["ts"],
            uptime_seconds=_float_or_nan(data["uptime_seconds"]),
            windows_processed=int(data["windows_processed"]),
            capture_overruns=int(data["capture_overruns"]),
            overwritten_frames=int(data["overwritten_frames"]),
            dropped_windows=int(data["dropped_windows"]),
            inference_ms_p50=None if p50 is None else float(p50),
            inference_ms_p95=None if p95 is None else float(p95),
            outbox_depth=int(data["outbox_depth"]),
            outbox_discarded=int(data["outbox_discarded"]),
            outbox_write_errors=int(data["outbox_write_errors"]),
            reconnects=int(data["reconnects"]),
            version=str(data["version"]),
            machines=dict(data["machines"]),
        )


@cache
def _schema_text(schema_id: str) -> str:
    name = _SCHEMA_FILES[schema_id]
    return resources.files("edge_asd").joinpath("schemas", name).read_text(encoding="utf-8")


def json_schema(schema_id: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) for `schema_id`, e.g. `SCHEMA_EVENT`; a fresh copy."""
    if schema_id not in _SCHEMA_FILES:
        raise ValueError(f"unknown payload schema {schema_id!r}; known: {sorted(_SCHEMA_FILES)}")
    loaded: dict[str, Any] = json.loads(_schema_text(schema_id))
    return loaded


def event_schema() -> dict[str, Any]:
    """JSON Schema of `EventMessage` payloads."""
    return json_schema(SCHEMA_EVENT)


def score_schema() -> dict[str, Any]:
    """JSON Schema of `ScoreMessage` payloads."""
    return json_schema(SCHEMA_SCORE)


def stats_schema() -> dict[str, Any]:
    """JSON Schema of `StatsMessage` payloads."""
    return json_schema(SCHEMA_STATS)


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

    @property
    def all(self) -> str:
        """Subscription filter for everything this node publishes."""
        return f"{self.base}/#"


def check_machine_name(machine: str) -> None:
    """Raise ValueError naming the key if `machine` cannot be one MQTT topic level."""
    _check_topic_name("machine", machine)
