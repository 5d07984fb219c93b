"""`edge-asd replay`: the daemon's exact pipeline for one machine over recordings.

Each file is a separate stream from offset 0, run as fast as the CPU allows through the machine's
pipeline as `service.startup` builds it for the daemon (its bundle, model, decision rule and stop
detection). One JSON object per line: every state change and every event transition, with
`offset_seconds` = the position in the file at the end of the window that caused it, and every
change of the machine's surroundings (`environment`: as on the MQTT environment topic). Users tune
on a recorded incident with it; the streams benchmark and `evaluate` use the same pipeline.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from edge_asd.audio.files import AudioFileError, read_wav
from edge_asd.detection.detector import EventTransition
from edge_asd.detection.pipeline import EnvironmentChange, PipelineStep, StateChange
from edge_asd.model.encoder import Encoder
from edge_asd.service.startup import MachineSetup


def _event_line(
    transition: EventTransition, setup: MachineSetup, encoder: Encoder
) -> dict[str, Any]:
    info = encoder.info
    end = transition.end_ts
    return {
        "kind": "event",
        "type": str(transition.kind),
        "offset_seconds": round(transition.ts, 3),
        "event_id": transition.event_id,
        "machine": setup.config.name,
        "start_offset_seconds": round(transition.start_ts, 3),
        "end_offset_seconds": None if end is None else round(end, 3),
        "score": transition.score,
        "peak_score": transition.peak_score,
        "threshold": setup.threshold,
        "windows_over": transition.windows_over,
        "dbfs": transition.dbfs,
        "duration_seconds": round(
            (end if end is not None else transition.ts) - transition.start_ts, 3
        ),
        "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
        "bundle_id": setup.bundle.bundle_id,
        "environment": (
            None if transition.environment is None else transition.environment.to_dict()
        ),
    }


def _state_line(change: StateChange, setup: MachineSetup) -> dict[str, Any]:
    return {
        "kind": "state",
        "state": str(change.state),
        "offset_seconds": round(change.time, 3),
        "machine": setup.config.name,
    }


def _environment_line(change: EnvironmentChange, setup: MachineSetup) -> dict[str, Any]:
    summary = {} if change.summary is None else change.summary.to_dict()
    return {
        "kind": "environment",
        "changed": change.changed,
        "offset_seconds": round(change.time, 3),
        "machine": setup.config.name,
        **summary,
    }


def step_lines(
    step: PipelineStep, setup: MachineSetup, encoder: Encoder
) -> Iterator[dict[str, Any]]:
    """State changes and transitions in time order; a state change caused by a transition
    (anomalous after a start) follows it, as on MQTT."""
    items: list[tuple[float, int, dict[str, Any]]] = []
    for change in step.state_changes:
        items.append((change.time, 1, _state_line(change, setup)))
    for environment in step.environment:
        items.append((environment.time, 1, _environment_line(environment, setup)))
    for transition in step.transitions:
        items.append((transition.ts, 0, _event_line(transition, setup, encoder)))
    for _, _, line in sorted(items, key=lambda item: (item[0], item[1])):
        yield line


def replay(
    setup: MachineSetup,
    encoder: Encoder,
    files: Sequence[Path],
    *,
    out: TextIO = sys.stdout,
) -> int:
    """Replay each file; returns the number of files that could not be read."""
    failures = 0
    for path in files:
        try:
            samples = read_wav(path)
        except AudioFileError as exc:
            failures += 1
            print(json.dumps({"kind": "error", "file": str(path), "error": str(exc)}), file=out)
            continue
        if samples.size == 0:
            failures += 1
            print(json.dumps({"kind": "error", "file": str(path), "error": "no audio"}), file=out)
            continue
        result = setup.pipeline(encoder).run_recording(samples)
        for line in step_lines(result.step, setup, encoder):
            line["file"] = str(path)
            print(json.dumps(_finite(line)), file=out)
        out.flush()
    return failures


def _finite(line: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: such values become null, as in the MQTT payloads."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in line.items()
    }
