"""The payload JSON Schemas are generated from the payload models; the committed files match."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_asd.mqtt import schemas
from edge_asd.mqtt.messages import (
    PAYLOAD_MODELS,
    SCHEMA_ENVIRONMENT,
    SCHEMA_EVENT,
    SCHEMA_SCORE,
    SCHEMA_STATS,
    EnvironmentMessage,
    EventMessage,
    EventType,
    MachineState,
    ModelRef,
    ScoreMessage,
    StatsMessage,
    format_ts,
    json_schema,
)

REPO = Path(__file__).resolve().parents[1]
TS = 1_795_316_645.123  # 2026-11-22T03:04:05.123Z
MODEL = ModelRef(name="logmel-stats", version="1.0.0", sha256="ab" * 32)

# Bytes written by the hand-written dataclasses before the payloads became pydantic models, then
# msgspec Structs
# (ASCII escapes, Python float repr, null for NaN/inf): the wire format must not move.
GOLDEN_EVENT = (
    '{"schema":"edge-asd.event/1","type":"end","event_id":"0123456789abcdef0123456789abcdef",'
    '"node":"gw-1","machine":"presse-\\u00fc","seq":7,"ts":"2026-11-22T03:04:05.123Z",'
    '"start_ts":"2026-11-22T03:04:02.623Z","end_ts":"2026-11-22T03:04:05.123Z","score":null,'
    '"peak_score":1e-05,"threshold":1e+16,"windows_over":5,"dbfs":null,"duration_seconds":2.5,'
    '"model":{"name":"logmel-stats","version":"1.0.0","sha256":"'
    + "ab"
    * 32
    + '"},"bundle_id":"b-1","clip":null,"explanation":null,"clip_url":null,"reason":null,'
    '"environment":null}'
)
"""clip, explanation, reason and environment were added within version 1; everything before
them is unchanged."""
GOLDEN_ENVIRONMENT = (
    '{"schema":"edge-asd.environment/1","node":"gw-1","machine":"press-1",'
    '"ts":"2026-11-22T03:04:05.123Z","changed":true,"level_change_db":9.5,"change_db":8.2,'
    '"margin_db":6.1,"bands":[{"hz":[447.0,562.0],"change_db":12.1},'
    '{"hz":[562.0,708.0],"change_db":-3.0}]}'
)
GOLDEN_SCORE = (
    '{"schema":"edge-asd.score/1","node":"gw-1","machine":"press-1",'
    '"ts":"2026-11-22T03:04:05.123Z","score":0.30000000000000004,"threshold":1.2,'
    '"dbfs":-23.0,"state":"normal"}'
)
GOLDEN_STATS = (
    '{"schema":"edge-asd.stats/1","node":"gw-1","ts":"2026-11-22T03:04:05.123Z",'
    '"uptime_seconds":3600.25,"windows_processed":7200,"capture_overruns":1,'
    '"overwritten_frames":160,"dropped_windows":0,"inference_ms_p50":null,'
    '"inference_ms_p95":null,"outbox_depth":3,"outbox_discarded":0,"outbox_write_errors":0,'
    '"reconnects":2,"version":"0.1.0","machines":{"press-1":"normal","fan-2":"no_audio"},'
    '"faults":{},"messages_quarantined":0,"outbox":"durable","outbox_degraded_reason":null,'
    '"outbox_recovered_corrupt":0,"outbox_quarantined":0,"outbox_clock_jumps":0,'
    '"events_not_stored":0,"events_held":0,"events_lost":0}'
)


def event(**changes: Any) -> EventMessage:
    fields: dict[str, Any] = {
        "type": "end",
        "event_id": "0123456789abcdef0123456789abcdef",
        "node": "gw-1",
        "machine": "presse-ü",
        "seq": 7,
        "ts": format_ts(TS),
        "start_ts": format_ts(TS - 2.5),
        "end_ts": format_ts(TS),
        "score": math.nan,
        "peak_score": 1e-05,
        "threshold": 1e16,
        "windows_over": 5,
        "dbfs": -math.inf,
        "duration_seconds": 2.5,
        "model": MODEL,
        "bundle_id": "b-1",
    }
    fields.update(changes)
    return EventMessage(**fields)


def score() -> ScoreMessage:
    return ScoreMessage(
        node="gw-1",
        machine="press-1",
        ts=format_ts(TS),
        score=0.1 + 0.2,
        threshold=1.2,
        dbfs=-23.0,
        state="normal",
    )


def stats(**changes: Any) -> StatsMessage:
    fields: dict[str, Any] = {
        "node": "gw-1",
        "ts": format_ts(TS),
        "uptime_seconds": 3600.25,
        "windows_processed": 7200,
        "capture_overruns": 1,
        "overwritten_frames": 160,
        "dropped_windows": 0,
        "inference_ms_p50": None,
        "inference_ms_p95": math.nan,
        "outbox_depth": 3,
        "outbox_discarded": 0,
        "outbox_write_errors": 0,
        "reconnects": 2,
        "version": "0.1.0",
        "machines": {"press-1": "normal", "fan-2": "no_audio"},
    }
    fields.update(changes)
    return StatsMessage(**fields)


def environment() -> EnvironmentMessage:
    return EnvironmentMessage(
        node="gw-1",
        machine="press-1",
        ts=format_ts(TS),
        changed=True,
        level_change_db=9.5,
        change_db=8.2,
        margin_db=6.1,
        bands=[{"hz": [447, 562], "change_db": 12.1}, {"hz": [562, 708], "change_db": -3.0}],
    )


def validator(schema_id: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json_schema(schema_id), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_committed_schema_files_are_the_generated_ones() -> None:
    stale = schemas.stale_files(REPO / "edge_asd" / "schemas")
    assert not stale, f"stale {stale}: run python -m edge_asd.mqtt.schemas --write"


def test_generator_cli_writes_and_checks(tmp_path: Path) -> None:
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1  # nothing there yet
    assert schemas.main(["--write", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schemas.SCHEMA_FILES.values())
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "event.schema.json").write_text("{}\n", encoding="utf-8")
    assert schemas.stale_files(tmp_path) == [tmp_path / "event.schema.json"]
    assert schemas.write_files(tmp_path) == [tmp_path / "event.schema.json"]
    assert schemas.stale_files(tmp_path) == []


@pytest.mark.parametrize(
    "schema_id", [SCHEMA_EVENT, SCHEMA_SCORE, SCHEMA_STATS, SCHEMA_ENVIRONMENT]
)
def test_generated_schema_is_strict_draft_2020_12(schema_id: str) -> None:
    schema = json_schema(schema_id)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == schemas.schema_uri(schema_id)
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    assert schema["additionalProperties"] is False
    model = PAYLOAD_MODELS[schema_id]
    wire_names = [info.encode_name for info in msgspec.structs.fields(model)]
    # Field order on the wire = model order = schema order, and every field is required.
    assert list(schema["properties"]) == wire_names == schema["required"]
    assert schema["properties"]["schema"]["const"] == schema_id == model.SCHEMA_ID


@pytest.mark.parametrize(
    ("message", "golden"),
    [
        (event, GOLDEN_EVENT),
        (score, GOLDEN_SCORE),
        (stats, GOLDEN_STATS),
        (environment, GOLDEN_ENVIRONMENT),
    ],
)
def test_wire_bytes_unchanged(message: Any, golden: str) -> None:
    built = message()
    assert built.to_json() == golden
    payload = json.loads(golden)
    assert built.to_dict() == payload
    validator(built.SCHEMA_ID).validate(payload)
    again = type(built).from_json(golden)
    assert again.to_json() == golden


def invalid_events() -> list[tuple[str, dict[str, Any]]]:
    good = event().to_dict()
    missing = [(f"missing {key}", {k: v for k, v in good.items() if k != key}) for key in good]
    return [
        *missing,
        ("negative duration", {**good, "duration_seconds": -0.5}),
        ("null duration", {**good, "duration_seconds": None}),
        ("ts without ms", {**good, "ts": "2026-11-22T03:04:05Z"}),
        ("ts with offset", {**good, "ts": "2026-11-22T03:04:05.123+00:00"}),
        ("ts not a date", {**good, "start_ts": "2026-13-45T03:04:05.123Z"}),
        ("ts as number", {**good, "ts": TS}),
        ("unknown field", {**good, "unexpected": 1}),
        ("unknown model field", {**good, "model": {**good["model"], "size": 1}}),
        ("other schema", {**good, "schema": "edge-asd.event/2"}),
        ("unknown type", {**good, "type": "begin"}),
        ("seq 0", {**good, "seq": 0}),
        ("seq as float", {**good, "seq": 7.5}),
        ("negative windows_over", {**good, "windows_over": -1}),
        ("score as string", {**good, "score": "1.5"}),
        ("machine with /", {**good, "machine": "a/b"}),
        ("empty node", {**good, "node": ""}),
        ("empty event_id", {**good, "event_id": ""}),
        ("sha256 not hex", {**good, "model": {**good["model"], "sha256": "xyz"}}),
    ]


@pytest.mark.parametrize(("why", "payload"), invalid_events(), ids=[w for w, _ in invalid_events()])
def test_generated_event_schema_rejects(why: str, payload: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator(SCHEMA_EVENT).validate(payload)


def test_generated_stats_and_score_schemas_reject() -> None:
    good = stats().to_dict()
    for bad in (
        {**good, "outbox_depth": -1},
        {**good, "uptime_seconds": -1.0},
        {**good, "machines": {"a/b": "normal"}},
        {**good, "machines": {"": "normal"}},
        {**good, "machines": {"press-1": "exploded"}},
        {k: v for k, v in good.items() if k != "inference_ms_p50"},
        {**good, "extra": None},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator(SCHEMA_STATS).validate(bad)
    good = score().to_dict()
    for bad in (
        {**good, "state": "broken"},
        {**good, "ts": "yesterday"},
        {k: v for k, v in good.items() if k != "dbfs"},
        {**good, "schema": SCHEMA_EVENT},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator(SCHEMA_SCORE).validate(bad)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"duration_seconds": -0.5}, "duration_seconds"),
        ({"duration_seconds": math.inf}, "duration_seconds"),
        ({"seq": 0}, "seq"),
        ({"windows_over": -1}, "windows_over"),
        ({"machine": "a/b"}, "machine"),
        ({"node": "gw+"}, "node"),
        ({"ts": "2026-11-22T03:04:05.123Z\n"}, "ts"),
        ({"model": {"name": "m", "version": "1", "sha256": "zz"}}, "sha256"),
    ],
)
def test_model_rejects_what_the_schema_rejects(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        event(**changes)


def test_model_rejects_missing_and_unknown_fields() -> None:
    # A constructor call with a wrong keyword is a programming error: TypeError, as for any
    # Python class (pydantic raised ValueError). Reading a payload is ValueError.
    fields = event().to_dict()
    del fields["schema"]
    EventMessage(**fields)
    with pytest.raises(TypeError, match="unexpected"):
        EventMessage(**fields, unexpected=1)
    del fields["bundle_id"]
    with pytest.raises(TypeError, match="bundle_id"):
        EventMessage(**fields)
    payload = event().to_dict()
    del payload["bundle_id"]
    with pytest.raises(ValueError, match="bundle_id"):
        EventMessage.from_dict(payload)


def test_from_dict_ignores_unknown_fields_but_constructor_does_not() -> None:
    # Forward compatible within a major version, as docs/mqtt.md promises consumers.
    payload = {**event().to_dict(), "added_in_1_1": True}
    assert EventMessage.from_dict(payload).to_json() == GOLDEN_EVENT
    with pytest.raises(ValueError, match="not a JSON object"):
        EventMessage.from_json("[1]")


def test_numpy_scalars_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    message = event(
        seq=np.int64(7), score=np.float32(1.5), windows_over=np.int32(5), dbfs=np.float64(-20.0)
    )
    payload = message.to_dict()
    assert payload["seq"] == 7 and type(payload["seq"]) is int
    assert payload["score"] == 1.5 and type(payload["score"]) is float
    validator(SCHEMA_EVENT).validate(payload)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)


@given(
    kind=st.sampled_from(list(EventType)),
    score_value=finite_or_not,
    peak=finite_or_not,
    dbfs=finite_or_not,
    duration=st.floats(min_value=0, max_value=1e9),
    seq=st.integers(min_value=1, max_value=2**53),
    millis=st.integers(min_value=0, max_value=4_102_444_800_000),
)
def test_every_constructible_event_validates(
    kind: EventType,
    score_value: float,
    peak: float,
    dbfs: float,
    duration: float,
    seq: int,
    millis: int,
) -> None:
    ts = format_ts(millis / 1000)
    message = event(
        type=kind,
        score=score_value,
        peak_score=peak,
        dbfs=dbfs,
        duration_seconds=duration,
        seq=seq,
        ts=ts,
        end_ts=ts if kind is EventType.END else None,
    )
    payload = json.loads(message.to_json())
    validator(SCHEMA_EVENT).validate(payload)
    assert EventMessage.from_dict(payload).to_json() == message.to_json()


@given(p50=st.none() | finite_or_not, state=st.sampled_from(list(MachineState)))
def test_every_constructible_stats_validates(p50: float | None, state: MachineState) -> None:
    payload = json.loads(stats(inference_ms_p50=p50, machines={"m": state}).to_json())
    validator(SCHEMA_STATS).validate(payload)


def test_importing_messages_generates_no_schema() -> None:
    # The daemon imports the models only; schema generation (and this module) stays on demand.
    code = (
        "import sys, edge_asd.mqtt.messages as m; assert 'edge_asd.mqtt.schemas' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def doc_sections() -> dict[str, str]:
    """docs/mqtt.md split at its ``### `edge-asd.<name>/1` `` headings."""
    text = (REPO / "docs" / "mqtt.md").read_text(encoding="utf-8")
    sections = {}
    for chunk in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = chunk.partition("\n")
        sections[heading.strip().strip("`")] = body.split("\n## ")[0]
    return sections


@pytest.mark.parametrize(
    "schema_id", [SCHEMA_EVENT, SCHEMA_SCORE, SCHEMA_STATS, SCHEMA_ENVIRONMENT]
)
def test_docs_match_the_payloads(schema_id: str) -> None:
    section = doc_sections()[schema_id]
    properties = list(json_schema(schema_id)["properties"])
    # Every field is documented (in a table's first column or the score prose) ...
    documented = set(re.findall(r"`([a-z0-9_]+)`", section))
    assert set(properties) <= documented
    # ... and the example is a real payload: valid, and written back identically by the model.
    examples = re.findall(r"```json\n(.*?)```", section, flags=re.DOTALL)
    assert len(examples) == 1
    payload = json.loads(examples[0])
    assert list(payload) == properties
    validator(schema_id).validate(payload)
    assert PAYLOAD_MODELS[schema_id].from_dict(payload).to_dict() == payload
    if schema_id == SCHEMA_EVENT:
        assert re.fullmatch(r"[0-9a-f]{32}", payload["event_id"])  # uuid4().hex, as the daemon
