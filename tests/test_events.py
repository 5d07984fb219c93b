"""Payload dataclasses, timestamps, JSON Schemas and topic validation."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_asd.mqtt.messages import (
    SCHEMA_EVENT,
    SCHEMA_SCORE,
    SCHEMA_STATS,
    EventMessage,
    EventType,
    MachineState,
    ModelRef,
    ScoreMessage,
    StatsMessage,
    Topics,
    event_schema,
    format_ts,
    json_schema,
    parse_ts,
    score_schema,
    stats_schema,
)

TS = 1_795_316_645.123  # 2026-11-22T03:04:05.123Z
MODEL = ModelRef(name="logmel-stats", version="1.0.0", sha256="ab" * 32)


def make_event(**changes: object) -> EventMessage:
    fields: dict[str, object] = {
        "type": EventType.UPDATE,
        "event_id": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
        "node": "gw-1",
        "machine": "press-1",
        "seq": 7,
        "ts": format_ts(TS),
        "start_ts": format_ts(TS - 2.5),
        "end_ts": None,
        "score": 1.75,
        "peak_score": 2.25,
        "threshold": 1.2,
        "windows_over": 5,
        "dbfs": -23.5,
        "duration_seconds": 2.5,
        "model": MODEL,
        "bundle_id": "bundle-2026-11-20",
    }
    fields.update(changes)
    return EventMessage(**fields)  # type: ignore[arg-type]


def make_stats(**changes: object) -> StatsMessage:
    fields: dict[str, object] = {
        "node": "gw-1",
        "ts": format_ts(TS),
        "uptime_seconds": 3600.0,
        "windows_processed": 7200,
        "capture_overruns": 1,
        "overwritten_frames": 160,
        "dropped_windows": 0,
        "inference_ms_p50": 4.2,
        "inference_ms_p95": 9.8,
        "outbox_depth": 3,
        "outbox_discarded": 0,
        "outbox_write_errors": 0,
        "reconnects": 2,
        "version": "0.1.0",
        "machines": {"press-1": MachineState.NORMAL, "fan-2": MachineState.NO_AUDIO},
    }
    fields.update(changes)
    return StatsMessage(**fields)  # type: ignore[arg-type]


def validate(payload: dict[str, object], schema: dict[str, object]) -> None:
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(payload)


def test_format_ts_example_and_rounding() -> None:
    assert format_ts(TS) == "2026-11-22T03:04:05.123Z"
    assert format_ts(0.0) == "1970-01-01T00:00:00.000Z"
    # 0.9996 s rounds up into the next second, not to ".1000".
    assert format_ts(59.9996) == "1970-01-01T00:01:00.000Z"


def test_format_ts_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        format_ts(math.nan)


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_ts_round_trip_at_millisecond_resolution(millis: int) -> None:
    seconds = millis / 1000
    text = format_ts(seconds)
    assert parse_ts(text) == pytest.approx(seconds, abs=1e-6)
    expected = datetime.fromtimestamp(millis // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert text == f"{expected}.{millis % 1000:03d}Z"


@pytest.mark.parametrize("bad", ["2026-11-22T03:04:05Z", "2026-11-22 03:04:05.123Z", "", "x"])
def test_parse_ts_rejects_other_formats(bad: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_ts(bad)


def test_event_payload_fields_and_schema() -> None:
    payload = make_event().to_dict()
    assert payload["schema"] == SCHEMA_EVENT == "edge-asd.event/1"
    assert payload["ts"] == "2026-11-22T03:04:05.123Z"
    assert payload["end_ts"] is None
    assert payload["model"] == {"name": "logmel-stats", "version": "1.0.0", "sha256": "ab" * 32}
    validate(payload, event_schema())


def test_event_end_has_end_ts() -> None:
    payload = make_event(type=EventType.END, end_ts=format_ts(TS + 1.0)).to_dict()
    assert payload["type"] == "end"
    assert payload["end_ts"] == "2026-11-22T03:04:06.123Z"
    validate(payload, event_schema())


def test_plain_strings_and_mapping_are_normalised() -> None:
    event = make_event(type="start", model=MODEL.to_dict())
    assert event.type is EventType.START
    assert event.model == MODEL
    assert event.to_dict()["type"] == "start"
    with pytest.raises(ValueError):
        make_event(type="begin")


@pytest.mark.parametrize("key", ["ts", "start_ts", "end_ts"])
def test_timestamps_must_be_formatted(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        make_event(**{key: "2026-11-22 03:04:05"})
    with pytest.raises(ValueError, match=key):
        make_event(**{key: TS})


def test_event_round_trip() -> None:
    event = make_event(type=EventType.END, end_ts=format_ts(TS + 1.0))
    again = EventMessage.from_dict(json.loads(event.to_json()))
    assert again == event


def test_non_finite_floats_become_null_and_json_stays_valid() -> None:
    event = make_event(score=math.nan, dbfs=-math.inf, peak_score=math.inf)
    text = event.to_json()
    assert "NaN" not in text and "Infinity" not in text
    payload = json.loads(text)
    assert payload["score"] is None and payload["dbfs"] is None and payload["peak_score"] is None
    validate(payload, event_schema())
    back = EventMessage.from_dict(payload)
    assert math.isnan(back.score) and math.isnan(back.dbfs)


def test_schema_rejects_missing_and_extra_fields() -> None:
    payload = make_event().to_dict()
    missing = dict(payload)
    del missing["seq"]
    with pytest.raises(jsonschema.ValidationError):
        validate(missing, event_schema())
    extra = dict(payload, unexpected=1)
    with pytest.raises(jsonschema.ValidationError):
        validate(extra, event_schema())
    bad_ts = dict(payload, ts="2026-11-22T03:04:05Z")
    with pytest.raises(jsonschema.ValidationError):
        validate(bad_ts, event_schema())


def test_from_dict_checks_schema_field() -> None:
    payload = make_event().to_dict()
    payload["schema"] = "edge-asd.event/2"
    with pytest.raises(ValueError, match="schema"):
        EventMessage.from_dict(payload)


def test_score_message() -> None:
    message = ScoreMessage(
        node="gw-1",
        machine="press-1",
        ts=format_ts(TS),
        score=0.5,
        threshold=1.2,
        dbfs=-math.inf,
        state=MachineState.NORMAL,
    )
    payload = json.loads(message.to_json())
    assert payload["schema"] == SCHEMA_SCORE
    assert payload["dbfs"] is None
    validate(payload, score_schema())
    assert ScoreMessage.from_dict(payload).state is MachineState.NORMAL


def test_stats_message() -> None:
    stats = make_stats()
    payload = json.loads(stats.to_json())
    assert payload["schema"] == SCHEMA_STATS
    assert payload["machines"] == {"press-1": "normal", "fan-2": "no_audio"}
    validate(payload, stats_schema())
    assert StatsMessage.from_dict(payload) == stats
    assert make_stats(machines={"press-1": "anomalous"}).machines == {
        "press-1": MachineState.ANOMALOUS
    }
    with pytest.raises(ValueError):
        make_stats(machines={"press-1": "exploded"})


def test_stats_before_first_window_has_null_percentiles() -> None:
    payload = make_stats(inference_ms_p50=None, inference_ms_p95=math.nan).to_dict()
    assert payload["inference_ms_p50"] is None and payload["inference_ms_p95"] is None
    validate(payload, stats_schema())


def test_stats_schema_rejects_unknown_state() -> None:
    payload = make_stats().to_dict()
    payload["machines"] = {"press-1": "exploded"}
    with pytest.raises(jsonschema.ValidationError):
        validate(payload, stats_schema())


def test_json_schema_lookup() -> None:
    assert json_schema(SCHEMA_EVENT)["$id"] == "urn:edge-asd:schema:event:1"
    schema = json_schema(SCHEMA_STATS)
    schema["title"] = "changed"  # a fresh copy each time
    assert json_schema(SCHEMA_STATS)["title"] != "changed"
    for schema_id in (SCHEMA_EVENT, SCHEMA_SCORE, SCHEMA_STATS):
        jsonschema.Draft202012Validator.check_schema(json_schema(schema_id))
    with pytest.raises(ValueError, match="unknown"):
        json_schema("edge-asd.other/1")


def test_topics() -> None:
    topics = Topics("edge-asd", "gw-1")
    assert topics.availability == "edge-asd/gw-1/availability"
    assert topics.stats == "edge-asd/gw-1/stats"
    assert topics.state("press-1") == "edge-asd/gw-1/press-1/state"
    assert topics.event("press-1") == "edge-asd/gw-1/press-1/event"
    assert topics.score("press-1") == "edge-asd/gw-1/press-1/score"
    assert Topics("plant/asd", "gw-1").event("m") == "plant/asd/gw-1/m/event"


@pytest.mark.parametrize(
    ("prefix", "node", "key"),
    [
        ("", "gw", "topic_prefix"),
        ("a/+", "gw", "topic_prefix"),
        ("a/#", "gw", "topic_prefix"),
        ("a//b", "gw", "topic_prefix"),
        ("/a", "gw", "topic_prefix"),
        ("a/", "gw", "topic_prefix"),
        ("$SYS", "gw", "topic_prefix"),
        ("edge-asd", "", "node_id"),
        ("edge-asd", "g/w", "node_id"),
        ("edge-asd", "g+w", "node_id"),
        ("edge-asd", "g#", "node_id"),
    ],
)
def test_topics_reject_bad_names(prefix: str, node: str, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Topics(prefix, node)


@pytest.mark.parametrize("machine", ["", "a/b", "a+", "#", "x\x00"])
def test_topics_reject_bad_machine(machine: str) -> None:
    topics = Topics("edge-asd", "gw-1")
    for method in (topics.state, topics.event, topics.score):
        with pytest.raises(ValueError, match="machine"):
            method(machine)
