"""Alarms on monitoring streams: what a plant would receive from the daemon, per detector variant.

    PYTHONPATH=. python benchmarks/streams.py --out runs/streams            # full run
    PYTHONPATH=. python benchmarks/streams.py --quick --out runs/streams-quick   # smoke, < 1 min

Long, seeded streams are built from the development data (`--data`, default ../shared/data;
nothing of it is copied into the repository) and fed to the product's own
`edge_asd.detection.pipeline.MachinePipeline` exactly as the daemon feeds it: blocks of
`--block-seconds` (0.1 s) with `pipeline.push(block, end_time)`, and the capture's health
(`CaptureSupervisor`: healthy from the first block; digital silence is audio, which the pipeline
reports `idle`) applied with `pipeline.set_audio` before each block, as `Daemon._apply_health`
does. The script never
scores or detects on its own: what it counts are the pipeline's event transitions and machine
states.

Scenarios (`--scenarios`), built once per seed (`--seeds`, default 0,1,2: each seed its own
calibration/monitoring split and streams, because one split alone says little):

- `mimii`: calibrate on 30 of the 45 MIMII normal clips (5 min) with factory noise from the FIRST
  half of factory2.wav at `--snr` dB (10); monitor three streams, one per noise never heard at
  calibration (the second half of factory2, babble, pink), made of the 15 other clips looped in
  random 5-10 s pieces with 0.5 s crossfades, the SNR and the overall gain each drifting slowly
  by up to +-3 dB (periods of 2-10 min). Each stream holds every synthetic fault family
  (`edge_asd_dev.synth.ALL_FAULTS`) at three fault-to-signal ratios (`MIMII_FAULT_LEVELS_DB`),
  30-120 s each, and two machine stops of each kind, 20-60 s: the machine sound fades out (3 s)
  and back in (2 s) with the room noise left running ("room"), or the input is digital silence
  ("silence"); all in random order with 60-180 s of normal running between them.
- `fan`: calibrate on the ON recordings of the 2020-03-18 session but one (seed k holds out the
  k-th of the 7); monitor the held-out ON recording (stream fan-2020) and the 2021-02-10 ON
  recordings (stream fan-2021, a shifted condition), looped, with the real faults spliced in
  (BLADE_FAULT and TAPPING in fan-2020; FAN_GUARDS, recorded 2020-12-10, in fan-2021), the OFF
  recordings of each session as real stops ("room", 2 s crossfades) and one stretch of digital
  silence.

Measured per detector variant and scenario (all seeds together, and per seed):

- false alarms per hour of normal running: event starts (the `start` message, at its `ts`) outside
  every fault and stop interval, each extended by `GRACE_SECONDS` after its end; normal hours
  exclude the same stretches. Starts inside a stop (+ grace) are stop alarms. "alarm on": the
  share of normal running during which an event is open (one alarm that never ends is one false
  alarm per `max_event_seconds` but 100 % alarm on).
- faults caught within `CATCH_WITHIN_SECONDS` of onset (share), caught at all (a start during the
  fault), and the median delay from onset to the `start` of the caught ones. A fault that begins
  while an alarm is already open is not caught (it is counted apart).
- stops handled: no event started during the stop (+ grace) and none held open through its first
  `STATE_WITHIN_SECONDS`; for a variant that names the states that should report a stop
  (`DetectorVariant.stop_states`, e.g. `idle`), one of them must also be reported within
  `STATE_WITHIN_SECONDS` of the stop's start.

Outputs in `--out`: results.json (every stream, fault and stop), table.md (the tables printed),
and `<scenario>_<stream>.png` (score, thresholds, fault and stop intervals, events and machine
states of the first stream of the first seed of each scenario; needs matplotlib,
`pip install -e .[bench]`).

A new detector variant is one entry of `VARIANTS`: a name and a function (bundle, encoder) ->
MachinePipeline. The calibration API is called in one place only, `calibrate_bundle`.
"""

# ruff: noqa: E402  (the BLAS thread variables must be set before numpy is imported)
from __future__ import annotations

import os

# BLAS reads its thread count once, when numpy loads, so this must come before the imports below.
# One thread, as on the gateway (and the development machine is shared).
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
for _var in _BLAS_THREAD_VARS:
    os.environ.setdefault(_var, "1")

import argparse
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
from tqdm import tqdm

from edge_asd.audio.files import read_wav
from edge_asd.cli import parse_views_option
from edge_asd.config import CalibrationConfig, MachineConfig, detector_settings
from edge_asd.constants import DEFAULT_HOP_SECONDS, SAMPLE_RATE_HZ, seconds_to_samples
from edge_asd.detection.bundle import Bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.detection.detector import DetectorSettings
from edge_asd.detection.pipeline import EmbeddingModel, MachinePipeline, PipelineStep
from edge_asd.detection.states import EventType
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.service.startup import MachineSetup
from edge_asd_dev import synth

_LOGGER = logging.getLogger("streams")

REPO: Final = Path(__file__).resolve().parents[1]
DEFAULT_DATA: Final = REPO.parent / "shared" / "data"
DEFAULT_OUT: Final = REPO / "runs" / "streams"

FAULT: Final = "fault"
STOP: Final = "stop"
CONDITION: Final = "condition"
ROOM_STOP: Final = "room"
"""The machine stops; the room (its noise) is still heard."""
SILENCE_STOP: Final = "silence"
"""The input is digital silence (muted or dead microphone)."""

MIMII_OFF_CLIPS: Final = 4
"""Calibration clips whose noise alone is also given as the stopped machine (40 s)."""
GRACE_SECONDS: Final = 10.0
"""After a fault or a stop ends, starts within this are still attributed to it."""
CATCH_WITHIN_SECONDS: Final = 10.0
STATE_WITHIN_SECONDS: Final = 10.0
"""A variant with `stop_states` must report one of them within this of a stop's start."""
BLOCK_SECONDS: Final = 0.1
_MACHINE_DEFAULTS: Final = {f.name: f.default for f in msgspec.structs.fields(MachineConfig)}
NO_AUDIO_SECONDS: Final = float(_MACHINE_DEFAULTS["no_audio_seconds"])
"""The daemon's defaults (`machines[]` in the config) from here on."""
TRIGGER_WINDOWS: Final = int(_MACHINE_DEFAULTS["trigger_windows"])
RELEASE_WINDOWS: Final = int(_MACHINE_DEFAULTS["release_windows"])
MAX_EVENT_SECONDS: Final = float(_MACHINE_DEFAULTS["max_event_seconds"])

# ---------------------------------------------------------------------------------------------
# Metrics (pure functions of intervals, events and states; tests/test_streams_metrics.py)


@dataclass(frozen=True)
class Interval:
    """A stretch of a stream, seconds from its start."""

    kind: str
    """FAULT, STOP or CONDITION."""
    group: str
    """Fault family, stop kind (ROOM_STOP, SILENCE_STOP) or condition name."""
    start: float
    end: float
    label: str = ""
    """Detail that splits a group in the tables: a synthetic fault's strength."""
    source: str = ""
    """Where the audio came from: the recording spliced in."""


@dataclass(frozen=True)
class Event:
    """One event as the plant sees it."""

    ts: float
    """Time of its `start` message."""
    start_ts: float
    """Start of the first window of the evidence."""
    end: float | None = None
    """Time of its `end` message; None while open."""


def attribute(ts: float, intervals: Sequence[Interval], grace: float) -> Interval | None:
    """The fault or stop an event started at `ts` belongs to (start <= ts <= end + grace), or
    None when it started during normal running."""
    for interval in intervals:
        if interval.kind in (FAULT, STOP) and interval.start <= ts <= interval.end + grace:
            return interval
    return None


def measure_outside(start: float, end: float, excluded: Iterable[tuple[float, float]]) -> float:
    """Length of [start, end] not covered by the union of the `excluded` spans."""
    spans = sorted((max(a, start), min(b, end)) for a, b in excluded if b > start and a < end)
    covered = 0.0
    cursor = start
    for a, b in spans:
        if b <= cursor:
            continue
        covered += b - max(a, cursor)
        cursor = b
    return max(0.0, (end - start) - covered)


def excluded_spans(intervals: Sequence[Interval], grace: float) -> list[tuple[float, float]]:
    """Faults and stops, each extended by `grace`: not normal running."""
    return [(i.start, i.end + grace) for i in intervals if i.kind in (FAULT, STOP)]


def state_at(states: Sequence[tuple[float, str]], t: float) -> str | None:
    """The machine state in effect at `t` (`states`: (time, state) changes in time order)."""
    current = None
    for when, state in states:
        if when > t:
            break
        current = state
    return current


def fault_outcome(fault: Interval, events: Sequence[Event], catch_within: float) -> dict[str, Any]:
    """Whether and when an event started during the fault."""
    starts = sorted(e.ts for e in events if fault.start <= e.ts <= fault.end)
    delay = starts[0] - fault.start if starts else None
    open_at_onset = any(
        e.ts < fault.start and (e.end is None or e.end > fault.start) for e in events
    )
    return {
        "group": fault.group,
        "label": fault.label,
        "source": fault.source,
        "start": fault.start,
        "end": fault.end,
        "delay": delay,
        "caught": delay is not None,
        "caught_within": delay is not None and delay <= catch_within,
        "open_at_onset": open_at_onset,
    }


def stop_outcome(
    stop: Interval,
    events: Sequence[Event],
    states: Sequence[tuple[float, str]],
    *,
    grace: float,
    expected_states: frozenset[str] | None,
    state_within: float,
) -> dict[str, Any]:
    """Alarms during a stop, the states reported, and whether it was handled: no event started
    during it (or within `grace` after it), no event that started before it still open
    `state_within` after its start, and, when `expected_states` is given, one of them reported
    within `state_within` of its start."""
    alarms = [e.ts for e in events if stop.start <= e.ts <= stop.end + grace]
    held_open = any(
        e.ts < stop.start and (e.end is None or e.end > min(stop.end, stop.start + state_within))
        for e in events
    )
    seen = {s for t, s in states if stop.start < t <= stop.end}
    first = state_at(states, stop.start)
    if first is not None:
        seen.add(first)
    reported: bool | None = None
    if expected_states is not None:
        deadline = min(stop.end, stop.start + state_within)
        reported = (first in expected_states) or any(
            stop.start < t <= deadline and s in expected_states for t, s in states
        )
    return {
        "group": stop.group,
        "label": stop.label,
        "source": stop.source,
        "start": stop.start,
        "end": stop.end,
        "alarms": len(alarms),
        "held_open": held_open,
        "states": sorted(seen),
        "state_reported": reported,
        "handled": not alarms and not held_open and reported is not False,
    }


def stream_metrics(
    duration: float,
    intervals: Sequence[Interval],
    events: Sequence[Event],
    states: Sequence[tuple[float, str]],
    *,
    grace: float = GRACE_SECONDS,
    catch_within: float = CATCH_WITHIN_SECONDS,
    stop_states: Mapping[str, frozenset[str]] | None = None,
    state_within: float = STATE_WITHIN_SECONDS,
) -> dict[str, Any]:
    """Every count of one stream. CONDITION intervals split normal running (and its alarms) by
    recording condition; without them everything is one condition ""."""
    excluded = excluded_spans(intervals, grace)
    states = sorted(states, key=lambda change: change[0])  # stable: equal times keep their order
    conditions = [i for i in intervals if i.kind == CONDITION] or [
        Interval(CONDITION, "", 0.0, duration)
    ]
    per_condition: dict[str, dict[str, float]] = {}
    for cond in conditions:
        entry = per_condition.setdefault(
            cond.group, {"normal_seconds": 0.0, "false_alarms": 0, "alarm_on_seconds": 0.0}
        )
        end = min(cond.end, duration)
        entry["normal_seconds"] += measure_outside(cond.start, end, excluded)
        for event in events:
            a, b = max(event.ts, cond.start), min(duration if event.end is None else event.end, end)
            if b > a:
                entry["alarm_on_seconds"] += measure_outside(a, b, excluded)
    normal_alarms = 0
    stop_alarms = 0
    fault_alarms = 0
    for event in events:
        owner = attribute(event.ts, intervals, grace)
        if owner is None:
            normal_alarms += 1
            cond = next((c for c in conditions if c.start <= event.ts <= c.end), None)
            if cond is not None:
                per_condition[cond.group]["false_alarms"] += 1
        elif owner.kind == STOP:
            stop_alarms += 1
        else:
            fault_alarms += 1
    faults = [fault_outcome(i, events, catch_within) for i in intervals if i.kind == FAULT]
    stops = [
        stop_outcome(
            i,
            events,
            states,
            grace=grace,
            expected_states=None if stop_states is None else stop_states.get(i.group, frozenset()),
            state_within=state_within,
        )
        for i in intervals
        if i.kind == STOP
    ]
    return {
        "duration_seconds": duration,
        "normal_seconds": measure_outside(0.0, duration, excluded),
        "alarm_on_seconds": sum(c["alarm_on_seconds"] for c in per_condition.values()),
        "false_alarms": normal_alarms,
        "stop_alarms": stop_alarms,
        "fault_alarms": fault_alarms,
        "events": len(events),
        "conditions": per_condition,
        "faults": faults,
        "stops": stops,
    }


def _per_hour(count: float, seconds: float) -> float | None:
    return None if seconds <= 0 else count / (seconds / 3600.0)


def _share(part: float, whole: float) -> float | None:
    return None if whole <= 0 else part / whole


def _fault_order(key: str) -> tuple[str, float, str]:
    """Family, then strength (a label "-10 dB"), then the rest."""
    group, _, label = key.partition(" ")
    try:
        return group, float(label.split()[0]), label
    except (IndexError, ValueError):
        return group, 0.0, label


def summarise(streams: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over streams (outputs of `stream_metrics`)."""
    duration = sum(s["duration_seconds"] for s in streams)
    normal = sum(s["normal_seconds"] for s in streams)
    alarm_on = sum(s["alarm_on_seconds"] for s in streams)
    false_alarms = sum(s["false_alarms"] for s in streams)
    faults = [f for s in streams for f in s["faults"]]
    stops = [x for s in streams for x in s["stops"]]
    delays = [f["delay"] for f in faults if f["delay"] is not None]
    conditions: dict[str, dict[str, Any]] = {}
    for s in streams:
        for name, c in s["conditions"].items():
            entry = conditions.setdefault(
                name, {"normal_seconds": 0.0, "false_alarms": 0, "alarm_on_seconds": 0.0}
            )
            for key in entry:
                entry[key] += c[key]
    for entry in conditions.values():
        entry["false_alarms_per_hour"] = _per_hour(entry["false_alarms"], entry["normal_seconds"])
        entry["alarm_on_share"] = _share(entry["alarm_on_seconds"], entry["normal_seconds"])
    by_fault: dict[str, dict[str, Any]] = {}
    for f in faults:
        key = f"{f['group']} {f['label']}".strip()
        entry = by_fault.setdefault(key, {"n": 0, "caught_within": 0, "caught": 0, "delays": []})
        entry["n"] += 1
        entry["caught_within"] += int(f["caught_within"])
        entry["caught"] += int(f["caught"])
        if f["delay"] is not None:
            entry["delays"].append(f["delay"])
    by_stop: dict[str, dict[str, int]] = {}
    for x in stops:
        entry_s = by_stop.setdefault(x["group"], {"n": 0, "handled": 0, "alarms": 0})
        entry_s["n"] += 1
        entry_s["handled"] += int(x["handled"])
        entry_s["alarms"] += x["alarms"]
    return {
        "hours": duration / 3600.0,
        "normal_hours": normal / 3600.0,
        "false_alarms": false_alarms,
        "false_alarms_per_hour": _per_hour(false_alarms, normal),
        "alarm_on_share": _share(alarm_on, normal),
        "stop_alarms": sum(s["stop_alarms"] for s in streams),
        "faults": len(faults),
        "faults_caught_within": sum(int(f["caught_within"]) for f in faults),
        "faults_caught": sum(int(f["caught"]) for f in faults),
        "share_caught_within": (
            None if not faults else sum(int(f["caught_within"]) for f in faults) / len(faults)
        ),
        "median_delay_seconds": statistics.median(delays) if delays else None,
        "faults_open_at_onset": sum(int(f["open_at_onset"]) for f in faults),
        "stops": len(stops),
        "stops_handled": sum(int(x["handled"]) for x in stops),
        "by_stop": dict(sorted(by_stop.items())),
        "by_fault": dict(sorted(by_fault.items(), key=lambda item: _fault_order(item[0]))),
        "conditions": conditions,
    }


# ---------------------------------------------------------------------------------------------
# Detector variants


@dataclass(frozen=True)
class DetectorVariant:
    """One way of turning the calibrated bundle into a monitoring pipeline."""

    name: str
    description: str
    build: Callable[[Bundle, EmbeddingModel], MachinePipeline]
    stop_states: Mapping[str, frozenset[str]] | None = None
    """Per stop kind, the machine states that report it (e.g. {"room": {"idle"}}); None: a stop
    is handled when it raises no alarm."""


def hysteresis_variant(
    name: str,
    description: str,
    threshold_of: Callable[[Bundle], float],
    *,
    trigger_windows: int = TRIGGER_WINDOWS,
    release_windows: int = RELEASE_WINDOWS,
) -> DetectorVariant:
    """Today's detector (N windows over the threshold start an event, M under it end it), set
    up as the daemon sets it up from a machine's config."""

    def build(bundle: Bundle, encoder: EmbeddingModel) -> MachinePipeline:
        settings = DetectorSettings(
            threshold=threshold_of(bundle),
            trigger_windows=trigger_windows,
            release_windows=release_windows,
            max_event_seconds=MAX_EVENT_SECONDS,
        )
        return MachinePipeline.from_bundle(bundle, encoder, detector=settings)

    return DetectorVariant(name, description, build)


def daemon_variant() -> DetectorVariant:
    """The daemon's defaults, built by the daemon's own code (`service.startup.MachineSetup`):
    the evidence decision calibrated for the false-alarm budget, and stop detection (`idle`)."""
    machine = MachineConfig(name="machine", bundle=Path("bundle"))

    def build(bundle: Bundle, encoder: EmbeddingModel) -> MachinePipeline:
        threshold = bundle.threshold * machine.threshold_scale
        setup = MachineSetup(
            0, machine, bundle, detector_settings(machine, threshold, bundle.evidence)
        )
        return setup.pipeline(encoder)  # type: ignore[arg-type]

    return DetectorVariant(
        "daemon",
        "the daemon's defaults: evidence over time for a budget of 1 false alarm per week "
        "(CUSUM, fast path for gross scores), stops reported idle, 10 s hold-off after restarts",
        build,
        stop_states={ROOM_STOP: frozenset({"idle"}), SILENCE_STOP: frozenset({"idle"})},
    )


VARIANTS: Final[tuple[DetectorVariant, ...]] = (
    daemon_variant(),
    hysteresis_variant(
        "before",
        "the previous default: calibrated threshold (bundle.threshold), trigger 2, release 4, "
        "no stop detection",
        lambda bundle: bundle.threshold,
    ),
    hysteresis_variant(
        "max-heldout",
        "threshold = max held-out normal score (bundle.normal_stats['max']), trigger 2, release 4",
        lambda bundle: float(bundle.normal_stats["max"]),
    ),
)


# ---------------------------------------------------------------------------------------------
# Calibration (the one place that calls the calibration API)


def calibrate_bundle(
    clips: Sequence[Clip],
    encoder: EmbeddingModel,
    *,
    progress: bool,
    off_clips: Sequence[Clip] = (),
    views: str | list[str] | None = None,
) -> Bundle:
    """The product's calibration with the config's default `calibration` settings (what
    `edge-asd calibrate` uses), framed for `encoder` at the default hop; `off_clips` as
    `--off-from-dir`; `views` as `--views` (None: the default)."""
    framing = Framing(encoder.info.window_samples, seconds_to_samples(DEFAULT_HOP_SECONDS))
    settings = CalibrationConfig() if views is None else CalibrationConfig(views=views)
    return calibrate(clips, encoder, framing, settings, off_clips=off_clips, progress=progress)


# ---------------------------------------------------------------------------------------------
# Audio building blocks


def _samples(seconds: float) -> int:
    return seconds_to_samples(seconds)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def splice(pieces: Sequence[np.ndarray], overlaps: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """Pieces one after the other, piece i overlapping piece i-1 by overlaps[i] samples with an
    equal-power crossfade (overlaps[0] is ignored; 0 = a hard cut). Returns the signal and the
    start sample of each piece in it."""
    total = sum(p.size for p in pieces) - sum(overlaps[1:])
    out = np.zeros(total, dtype=np.float32)
    starts: list[int] = []
    pos = 0
    for i, piece in enumerate(pieces):
        p = np.array(piece, dtype=np.float32)
        xf = 0 if i == 0 else int(overlaps[i])
        if xf > min(p.size, pos):
            raise ValueError(f"crossfade of {xf} samples is longer than piece {i}")
        pos -= xf
        if xf:
            u = (np.arange(xf, dtype=np.float32) + 0.5) / xf
            out[pos : pos + xf] *= np.cos(0.5 * np.pi * u)
            p[:xf] *= np.sin(0.5 * np.pi * u)
        out[pos : pos + p.size] += p
        starts.append(pos)
        pos += p.size
    return out, starts


def loop_pool(
    pool: Sequence[np.ndarray],
    n: int,
    rng: np.random.Generator,
    *,
    piece_seconds: tuple[float, float],
    crossfade_seconds: float,
) -> np.ndarray:
    """`n` samples of random pieces of random recordings of `pool`, crossfaded."""
    xf = _samples(crossfade_seconds)
    pieces: list[np.ndarray] = []
    total = 0
    while total < n + xf:
        clip = pool[int(rng.integers(len(pool)))]
        length = min(clip.size, _samples(rng.uniform(*piece_seconds)))
        if length <= 2 * xf:
            raise ValueError("pool recordings are too short for the crossfade")
        offset = int(rng.integers(0, clip.size - length + 1))
        pieces.append(clip[offset : offset + length])
        total += length - (xf if len(pieces) > 1 else 0)
    out, _ = splice(pieces, [xf] * len(pieces))
    return out[:n]


def slow_curve(
    seconds: float, rng: np.random.Generator, *, periods: tuple[float, float] = (120.0, 600.0)
) -> tuple[np.ndarray, np.ndarray]:
    """(times, values in [-1, 1]) every 0.1 s: a few slow sinusoids (periods in seconds)."""
    t = np.arange(0.0, seconds + 0.2, 0.1)
    values = np.zeros_like(t)
    for _ in range(3):
        values += np.sin(2 * np.pi * t / rng.uniform(*periods) + rng.uniform(0, 2 * np.pi))
    return t, values / max(1e-9, float(np.max(np.abs(values))))


def ramp(n: int, up: int, down: int) -> np.ndarray:
    """float32 [n] envelope: raised-cosine rise over `up` samples, fall over `down`."""
    env = np.ones(n, dtype=np.float32)
    if up:
        env[:up] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(up) + 0.5) / up)
    if down:
        env[n - down :] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(down) + 0.5) / down)
    return env


def trim_quiet_edges(x: np.ndarray, *, below_db: float = 12.0) -> np.ndarray:
    """Drop leading and trailing 0.5 s blocks more than `below_db` under the median block level
    (a recording that starts before the machine does)."""
    block = _samples(0.5)
    n = x.size // block
    if n < 3:
        return x
    levels = 10 * np.log10(np.mean(np.square(x[: n * block].reshape(n, block)), axis=1) + 1e-20)
    loud = np.flatnonzero(levels >= np.median(levels) - below_db)
    return x[loud[0] * block : (loud[-1] + 1) * block]


@dataclass
class Stream:
    """Audio to monitor and what happens in it."""

    name: str
    samples: np.ndarray
    intervals: list[Interval]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE_HZ


@dataclass
class Scenario:
    name: str
    seed: int
    description: str
    calibration: list[Clip]
    streams: list[tuple[str, Callable[[], Stream]]]
    """(name, builder): streams are built one at a time, when monitored."""
    info: dict[str, Any] = field(default_factory=dict)
    off_calibration: list[Clip] = field(default_factory=list)
    """Recordings of the stopped machine (the room alone), as `calibrate --off-from-dir`."""


@dataclass(frozen=True)
class Plan:
    """Durations (seconds) of a stream's scenery."""

    first_gap: tuple[float, float]
    gap: tuple[float, float]
    fault: tuple[float, float]
    stop: tuple[float, float]


FULL_PLAN: Final = Plan(
    first_gap=(60.0, 60.0), gap=(60.0, 180.0), fault=(30.0, 120.0), stop=(20, 60)
)
QUICK_PLAN: Final = Plan(
    first_gap=(30.0, 30.0), gap=(20.0, 30.0), fault=(20.0, 30.0), stop=(15, 25)
)


# ---------------------------------------------------------------------------------------------
# Scenario: MIMII machine + synthetic faults + real noise

MIMII_FAULT_LEVELS_DB: Final[dict[str, tuple[float, ...]]] = {
    # Devset ranges (benchmarks/make_devset.py) for the five families: low, middle, high.
    "bearing_impacts": (-10.0, -5.0, 0.0),
    "whine": (-20.0, -15.0, -10.0),
    "imbalance_modulation": (-8.0, -4.0, 0.0),
    "rub_bursts": (-10.0, -5.0, 0.0),
    "looseness": (-10.0, -5.0, 0.0),
    "hiss_leak": (-20.0, -15.0, -10.0),
    "valve_clicks": (-15.0, -10.0, -5.0),
}
"""Fault-to-signal ratios (dB re the machine sound) of each family in every stream."""
QUICK_FAULTS: Final = (("bearing_impacts", 0.0), ("whine", -10.0))
SHAFT_HZ_RANGE: Final = (20.0, 60.0)
"""The recorded machine's shaft rate is not documented (as in make_devset)."""
MIMII_CALIBRATION_CLIPS: Final = 30
MIMII_NOISES: Final = ("factory2-b", "babble", "pink")
"""Monitoring noises, none heard at calibration (factory2-b: the second half of factory2.wav)."""
DEFAULT_SNR_DB: Final = 10.0
DEFAULT_SEEDS: Final = "0,1,2"
DRIFT_DB: Final = 3.0
"""Peak of the slow SNR and gain drifts."""
MACHINE_CROSSFADE_SECONDS: Final = 0.5
FAULT_RAMP_SECONDS: Final = 0.5
STOP_FADE_OUT_SECONDS: Final = 3.0
STOP_FADE_IN_SECONDS: Final = 2.0
PEAK_LIMIT: Final = 0.99


def _schedule(
    rng: np.random.Generator, events: list[tuple[str, str, str]], plan: Plan
) -> tuple[list[Interval], float]:
    """Shuffle (kind, group, label) events into a timeline with normal gaps around them."""
    order = rng.permutation(len(events))
    t = rng.uniform(*plan.first_gap)
    intervals = []
    for index in order:
        kind, group, label = events[index]
        length = rng.uniform(*(plan.fault if kind == FAULT else plan.stop))
        intervals.append(Interval(kind, group, round(t, 3), round(t + length, 3), label))
        t += length + rng.uniform(*plan.gap)
    return intervals, t


def mimii_scenario(data: Path, seed: int, *, quick: bool, snr_db: float) -> Scenario:
    files = sorted((data / "machine_normal_dev").glob("*.wav"))
    if len(files) < MIMII_CALIBRATION_CLIPS + 5:
        raise SystemExit(f"expected the 45 MIMII clips in {data / 'machine_normal_dev'}")
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(files))
    n_cal = 10 if quick else MIMII_CALIBRATION_CLIPS
    cal_files = [files[i] for i in sorted(order[:n_cal])]
    mon_files = [files[i] for i in sorted(order[n_cal:])]
    factory = read_wav(data / "noise_dev" / "factory2.wav")
    half = factory.size // 2
    clips = []
    off = []
    for i, path in enumerate(cal_files):
        x = read_wav(path)
        noise = loop_pool(
            [factory[:half]], x.size, rng, piece_seconds=(3, 8), crossfade_seconds=0.5
        )
        mixed = synth.mix_at_snr(x, noise, snr_db)
        clips.append(Clip(path.name, mixed))
        if i < MIMII_OFF_CLIPS:
            # The room with the machine stopped, as the engineer would record it at calibration:
            # the calibration noise at the level it had in the mixture.
            off.append(Clip(f"off-{path.name}", (mixed - x).astype(np.float32)))
    noises = {
        "factory2-b": factory[half:],
        "babble": read_wav(data / "noise_dev" / "babble.wav"),
        "pink": read_wav(data / "noise_dev" / "pink.wav"),
    }
    pool = [read_wav(p) for p in mon_files]
    faults = (
        list(QUICK_FAULTS)
        if quick
        else [(f, lv) for f, levels in MIMII_FAULT_LEVELS_DB.items() for lv in levels]
    )
    stops_per_kind = 1 if quick else 2
    plan = QUICK_PLAN if quick else FULL_PLAN
    streams = []
    for k, noise_name in enumerate(MIMII_NOISES[:1] if quick else MIMII_NOISES):

        def build(k: int = k, noise_name: str = noise_name) -> Stream:
            return _mimii_stream(
                f"mimii-{noise_name}",
                np.random.default_rng([seed, 2, k]),
                pool,
                noises[noise_name],
                noise_name,
                faults,
                stops_per_kind,
                plan,
                snr_db,
            )

        streams.append((f"mimii-{noise_name}", build))
    return Scenario(
        "mimii",
        seed,
        f"MIMII id_00 normal clips, synthetic faults, real noise; calibration SNR {snr_db:g} dB",
        clips,
        streams,
        {
            "calibration_files": [p.name for p in cal_files],
            "monitoring_files": [p.name for p in mon_files],
            "calibration_noise": "factory2.wav, first half",
            "snr_db": snr_db,
            "drift_db": DRIFT_DB,
            "fault_levels_db": MIMII_FAULT_LEVELS_DB if not quick else dict(QUICK_FAULTS),
            "off_recordings": f"{len(off)} x 10 s of the calibration noise alone",
        },
        off_calibration=off,
    )


def _mimii_stream(
    name: str,
    rng: np.random.Generator,
    pool: Sequence[np.ndarray],
    noise_source: np.ndarray,
    noise_name: str,
    faults: Sequence[tuple[str, float]],
    stops_per_kind: int,
    plan: Plan,
    snr_db: float,
) -> Stream:
    events = [(FAULT, family, f"{level:g} dB") for family, level in faults]
    events += [
        (STOP, kind, "") for kind in (ROOM_STOP, SILENCE_STOP) for _ in range(stops_per_kind)
    ]
    intervals, seconds = _schedule(rng, events, plan)
    n = _samples(seconds)
    machine = loop_pool(
        pool, n, rng, piece_seconds=(5.0, 10.0), crossfade_seconds=MACHINE_CROSSFADE_SECONDS
    )
    ref_rms = float(np.sqrt(np.mean([_rms(c) ** 2 for c in pool])))
    machine_gain = np.ones(n, dtype=np.float32)
    silent = np.zeros(n, dtype=bool)
    for interval in intervals:
        a, b = _samples(interval.start), _samples(interval.end)
        if interval.kind == FAULT:
            level = float(interval.label.split()[0])
            seg = machine[a:b]
            faulty = synth.ALL_FAULTS[interval.group](
                seg, rng=rng, level_db=level, shaft_hz=float(rng.uniform(*SHAFT_HZ_RANGE))
            )
            ramp_n = _samples(FAULT_RAMP_SECONDS)
            machine[a:b] = seg + (faulty - seg) * ramp(b - a, ramp_n, ramp_n)
        elif interval.group == ROOM_STOP:
            machine_gain[a:b] = 1.0 - ramp(
                b - a, _samples(STOP_FADE_OUT_SECONDS), _samples(STOP_FADE_IN_SECONDS)
            )
        else:
            silent[a:b] = True
    noise = loop_pool([noise_source], n, rng, piece_seconds=(3.0, 8.0), crossfade_seconds=0.5)
    noise /= _rms(noise_source)
    curve_t, gain_curve = slow_curve(seconds, rng)
    _, snr_curve = slow_curve(seconds, rng)
    out = machine  # mixed in place, 10 s at a time
    chunk = _samples(10.0)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        t = np.arange(a, b) / SAMPLE_RATE_HZ
        gain = 10 ** (DRIFT_DB * np.interp(t, curve_t, gain_curve) / 20)
        noise_amp = ref_rms * 10 ** (-(snr_db + DRIFT_DB * np.interp(t, curve_t, snr_curve)) / 20)
        mixed = (machine[a:b] * machine_gain[a:b] + noise[a:b] * noise_amp) * gain
        out[a:b] = np.where(silent[a:b], 0.0, mixed)
    peak = float(np.max(np.abs(out)))
    if peak > PEAK_LIMIT:
        out *= PEAK_LIMIT / peak
    intervals.append(Interval(CONDITION, noise_name, 0.0, seconds))
    return Stream(name, out, intervals, {"noise": noise_name, "peak_scaled": peak > PEAK_LIMIT})


# ---------------------------------------------------------------------------------------------
# Scenario: a real desk fan (real faults, real stops)

FAN_CALIBRATION_SESSION: Final = "20200318"
FAN_SHIFTED_SESSION: Final = "20210210"
FAN_FAULTS: Final = ("BLADE_FAULT", "TAPPING", "FAN_GUARDS")
FAN_FAULT_CROSSFADE_SECONDS: Final = 0.5
FAN_STOP_CROSSFADE_SECONDS: Final = 2.0
"""A fan spins down and up over seconds; OFF recordings are faded in and out over this."""


def _fan_files(data: Path, prefix: str, session: str | None = None) -> list[Path]:
    files = sorted((data / "fan_dev").glob(f"{prefix}_*.wav"))
    return [f for f in files if session is None or f.stem.split("_")[-1].startswith(session)]


def fan_scenario(data: Path, seed: int, *, quick: bool) -> Scenario:
    on_cal_session = _fan_files(data, "ON", FAN_CALIBRATION_SESSION)
    if len(on_cal_session) < 3:
        raise SystemExit(f"expected the fan ON recordings in {data / 'fan_dev'}")
    # Seed k holds out the k-th recording (mod 7): seeds 0-6 cover every one.
    held_out = on_cal_session[seed % len(on_cal_session)]
    cal_files = [f for f in on_cal_session if f != held_out]
    clips = [Clip(p.name, read_wav(p)) for p in cal_files]
    plan = QUICK_PLAN if quick else FULL_PLAN
    recordings_a: list[tuple[str, str, Path]] = [
        (FAULT, name, f) for name in FAN_FAULTS[:2] for f in _fan_files(data, name)
    ]
    recordings_a += [(STOP, ROOM_STOP, f) for f in _fan_files(data, "OFF", FAN_CALIBRATION_SESSION)]
    recordings_b: list[tuple[str, str, Path]] = [
        (FAULT, FAN_FAULTS[2], f) for f in _fan_files(data, FAN_FAULTS[2])
    ]
    recordings_b += [(STOP, ROOM_STOP, f) for f in _fan_files(data, "OFF", FAN_SHIFTED_SESSION)]
    if quick:
        recordings_a = [recordings_a[0], next(r for r in recordings_a if r[0] == STOP)]
    specs = [("fan-2020", [held_out], recordings_a, "2020-03-18 (held-out ON)")]
    if not quick:
        specs.append(
            ("fan-2021", _fan_files(data, "ON", FAN_SHIFTED_SESSION), recordings_b, "2021-02-10")
        )
    streams = []
    for k, (name, normal_files, recordings, condition) in enumerate(specs):

        def build(
            k: int = k,
            name: str = name,
            normal_files: list[Path] = normal_files,
            recordings: list[tuple[str, str, Path]] = recordings,
            condition: str = condition,
        ) -> Stream:
            return _fan_stream(
                name, np.random.default_rng([seed, 4, k]), normal_files, recordings, condition, plan
            )

        streams.append((name, build))
    return Scenario(
        "fan",
        seed,
        "real desk fan: real faults (BLADE_FAULT, TAPPING, FAN_GUARDS), OFF recordings as stops",
        clips,
        streams,
        {
            "calibration_files": [p.name for p in cal_files],
            "held_out": held_out.name,
            "monitoring_normal": {n: [p.name for p in f] for n, f, _, _ in specs},
        },
    )


def _fan_normal(pool: Sequence[np.ndarray], seconds: float, rng: np.random.Generator) -> np.ndarray:
    return loop_pool(
        pool,
        _samples(seconds),
        rng,
        piece_seconds=(4.0, 10.0),
        crossfade_seconds=FAN_FAULT_CROSSFADE_SECONDS,
    )


def _fan_stream(
    name: str,
    rng: np.random.Generator,
    normal_files: Sequence[Path],
    recordings: Sequence[tuple[str, str, Path]],
    condition: str,
    plan: Plan,
) -> Stream:
    pool = [read_wav(p) for p in normal_files]
    events: list[tuple[str, str, str, np.ndarray, int]] = []
    for kind, group, path in recordings:
        x = read_wav(path)
        if kind == FAULT:
            xf = _samples(FAN_FAULT_CROSSFADE_SECONDS)
            events.append((kind, group, path.name, trim_quiet_edges(x), xf))
        else:
            events.append((kind, group, path.name, x, _samples(FAN_STOP_CROSSFADE_SECONDS)))
    silence = np.zeros(_samples(rng.uniform(*plan.stop)), dtype=np.float32)
    events.append((STOP, SILENCE_STOP, "", silence, 0))
    order = rng.permutation(len(events))
    pieces: list[np.ndarray] = []
    overlaps: list[int] = []
    previous_xf = 0
    for j, index in enumerate(order):
        _, _, _, x, xf = events[index]
        gap = plan.first_gap if j == 0 else plan.gap
        pieces.append(_fan_normal(pool, rng.uniform(*gap), rng))
        overlaps.append(previous_xf)  # out of the previous event into this gap
        pieces.append(x)
        overlaps.append(xf)
        previous_xf = xf
    pieces.append(_fan_normal(pool, rng.uniform(*plan.gap), rng))
    overlaps.append(previous_xf)
    samples, starts = splice(pieces, overlaps)
    intervals = []
    for j, index in enumerate(order):
        kind, group, source, x, _ = events[index]
        start = starts[2 * j + 1]
        end = start + x.size
        intervals.append(
            Interval(kind, group, start / SAMPLE_RATE_HZ, end / SAMPLE_RATE_HZ, source=source)
        )
    intervals.append(Interval(CONDITION, condition, 0.0, samples.size / SAMPLE_RATE_HZ))
    return Stream(name, samples, intervals, {"normal_files": [p.name for p in normal_files]})


# ---------------------------------------------------------------------------------------------
# Monitoring: the stream through the pipeline as the daemon feeds it


class CaptureHealth:
    """`CaptureSupervisor`'s health in stream time, for one device: healthy from the first block
    on. Digital silence is audio to the capture (the pipeline reports it `idle`); only a device
    that delivers nothing or fails is `no_audio`, and a stream built from a file never does."""

    def __init__(self, no_audio_seconds: float) -> None:
        self.no_audio_seconds = no_audio_seconds
        self.healthy: bool | None = None
        """None until the capture first reports (the daemon then has no health to apply)."""
        self.lost_seconds = 0.0
        self.reopenings = 0
        self._discontinuity = True

    def read(self, block: np.ndarray, end_time: float) -> tuple[bool, bool]:
        """(delivered, discontinuity) for a block read at `end_time`."""
        self.healthy = True
        discontinuity = self._discontinuity
        self._discontinuity = False
        return True, discontinuity


@dataclass
class StreamReport:
    """What the pipeline reported over one stream."""

    duration: float
    window_end: np.ndarray
    scores: np.ndarray
    events: list[Event]
    states: list[tuple[float, str]]
    threshold: float | None
    states_out_of_order: int
    """State changes reported with an earlier time than the change before them."""
    lost_seconds: float
    reopenings: int
    seconds: float
    """Wall time of the run."""
    environment: list[tuple[float, bool]] = field(default_factory=list)
    """When the pipeline decided the surroundings changed (True) or returned (False)."""


def monitor(
    pipeline: MachinePipeline,
    samples: np.ndarray,
    *,
    block_seconds: float = BLOCK_SECONDS,
    no_audio_seconds: float = NO_AUDIO_SECONDS,
    desc: str = "",
) -> StreamReport:
    """Feed `samples` block by block as the daemon does and collect what the pipeline reports."""
    started = time.perf_counter()
    block = _samples(block_seconds)
    capture = CaptureHealth(no_audio_seconds)
    step = PipelineStep()
    n_blocks = -(-samples.size // block)
    with tqdm(
        total=n_blocks, desc=desc, unit="block", disable=not sys.stderr.isatty(), leave=False
    ) as bar:
        for i in range(n_blocks):
            x = samples[i * block : (i + 1) * block]
            end_time = (i * block + x.size) / SAMPLE_RATE_HZ
            delivered, discontinuity = capture.read(x, end_time)
            if capture.healthy is not None:  # Daemon._apply_health, before each block
                step.extend(pipeline.set_audio(capture.healthy, end_time))
            if delivered:
                if discontinuity:
                    pipeline.reset()
                step.extend(pipeline.push(x, end_time))
            if (i + 1) % 200 == 0 or i + 1 == n_blocks:
                bar.update(i + 1 - bar.n)
    duration = samples.size / SAMPLE_RATE_HZ
    step.extend(pipeline.close(duration))
    events: dict[str, Event] = {}
    for tr in step.transitions:
        if tr.kind is EventType.START:
            events[tr.event_id] = Event(ts=tr.ts, start_ts=tr.start_ts)
        elif tr.kind is EventType.END and tr.event_id in events:
            e = events[tr.event_id]
            events[tr.event_id] = Event(ts=e.ts, start_ts=e.start_ts, end=tr.ts)
    return StreamReport(
        duration=duration,
        window_end=np.asarray([w.end_time for w in step.windows], dtype=np.float64),
        scores=np.asarray([w.score for w in step.windows], dtype=np.float32),
        events=sorted(events.values(), key=lambda e: e.ts),
        states=[(c.time, str(c.state)) for c in step.state_changes],
        states_out_of_order=sum(b.time < a.time for a, b in itertools.pairwise(step.state_changes)),
        threshold=pipeline.threshold,
        lost_seconds=capture.lost_seconds,
        reopenings=capture.reopenings,
        seconds=time.perf_counter() - started,
        environment=[(round(c.time, 3), c.changed) for c in step.environment],
    )


# ---------------------------------------------------------------------------------------------
# Tables and plot


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


def _range(values: Iterable[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    low, high = min(known), max(known)
    return f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}-{high:.3g}"


def main_table(results: Mapping[str, Any]) -> str:
    lines = [
        "| scenario | variant | threshold | hours | normal h | false alarms | FA/h | alarm on | "
        f"caught <= {CATCH_WITHIN_SECONDS:g} s | caught at all | median delay s | "
        "stops handled | stop alarms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for scenario, sc in results["scenarios"].items():
        for variant, v in sc["variants"].items():
            t = v["totals"]
            share = t["share_caught_within"]
            percent = _fmt(None if share is None else 100 * share, 0)
            open_at_onset = t["faults_open_at_onset"]
            opened = f" (+{open_at_onset} in an open alarm)" if open_at_onset else ""
            stops = ", ".join(
                f"{kind} {s['handled']}/{s['n']}" for kind, s in sorted(t["by_stop"].items())
            )
            lines.append(
                f"| {scenario} | {variant} | {_range(v['thresholds'])} | "
                f"{t['hours']:.2f} | {t['normal_hours']:.2f} | {t['false_alarms']} | "
                f"{_fmt(t['false_alarms_per_hour'])} | {_percent(t['alarm_on_share'])} | "
                f"{t['faults_caught_within']}/{t['faults']} ({percent} %) | "
                f"{t['faults_caught']}/{t['faults']}{opened} | "
                f"{_fmt(t['median_delay_seconds'])} | "
                f"{stops} | {t['stop_alarms']} |"
            )
    return "\n".join(lines)


def seed_table(results: Mapping[str, Any]) -> str:
    lines = [
        "| scenario | seed | variant | threshold | normal h | FA (FA/h) | "
        f"caught <= {CATCH_WITHIN_SECONDS:g} s | stops handled |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, sc in results["scenarios"].items():
        for seed, one in sc["seeds"].items():
            for variant, v in one["variants"].items():
                t = v["totals"]
                lines.append(
                    f"| {scenario} | {seed} | {variant} | {_range(v['thresholds'])} | "
                    f"{t['normal_hours']:.2f} | "
                    f"{t['false_alarms']} ({_fmt(t['false_alarms_per_hour'])}) | "
                    f"{t['faults_caught_within']}/{t['faults']} | "
                    f"{t['stops_handled']}/{t['stops']} |"
                )
    return "\n".join(lines)


def condition_table(results: Mapping[str, Any]) -> str:
    variants = _variant_names(results)
    lines = [
        "| scenario | condition | normal h | "
        + " | ".join(f"FA (FA/h; alarm on) {v}" for v in variants)
        + " |",
        "|---|---|---:|" + "---:|" * len(variants),
    ]
    for scenario, sc in results["scenarios"].items():
        first = next(iter(sc["variants"].values()))["totals"]["conditions"]
        for cond, c in first.items():
            cells = []
            for v in variants:
                entry = sc["variants"].get(v, {}).get("totals", {}).get("conditions", {}).get(cond)
                cells.append(
                    ""
                    if entry is None
                    else f"{entry['false_alarms']} ({_fmt(entry['false_alarms_per_hour'])}; "
                    f"{_percent(entry['alarm_on_share'])})"
                )
            lines.append(
                f"| {scenario} | {cond} | {c['normal_seconds'] / 3600:.2f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def fault_table(results: Mapping[str, Any]) -> str:
    variants = _variant_names(results)
    lines = [
        "| scenario | fault | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for scenario, sc in results["scenarios"].items():
        first = next(iter(sc["variants"].values()))["totals"]["by_fault"]
        for key in first:
            cells = []
            for v in variants:
                f = sc["variants"].get(v, {}).get("totals", {}).get("by_fault", {}).get(key)
                if f is None:
                    cells.append("")
                    continue
                delay = statistics.median(f["delays"]) if f["delays"] else None
                cells.append(f"{f['caught_within']}/{f['n']} ({f['caught']}; {_fmt(delay)} s)")
            lines.append(f"| {scenario} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _variant_names(results: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for sc in results["scenarios"].values():
        for v in sc["variants"]:
            if v not in names:
                names.append(v)
    return names


STATE_COLOURS: Final = {
    "normal": "#4caf50",
    "anomalous": "#e53935",
    "no_audio": "#212121",
    "idle": "#1e88e5",
}


def plot_stream(path: Path, stream: Stream, reports: Mapping[str, StreamReport]) -> bool:
    """Score, thresholds, fault and stop intervals, events and machine states of one stream."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        _LOGGER.warning("matplotlib is not installed (pip install -e .[bench]): no plot")
        return False
    names = list(reports)
    fig, (ax, ax_state) = plt.subplots(
        2,
        1,
        figsize=(18, 6 + 0.3 * len(names)),
        sharex=True,
        gridspec_kw={"height_ratios": [4, 0.6 + 0.4 * len(names)]},
    )
    minutes = 1 / 60.0
    first = reports[names[0]]
    ax.plot(first.window_end * minutes, first.scores, lw=0.5, color="#455a64", label="window score")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        rep = reports[name]
        colour = colours[i % len(colours)]
        if rep.threshold is not None:
            ax.axhline(rep.threshold, color=colour, ls="--", lw=1, label=f"threshold {name}")
        ax.plot(
            [e.ts * minutes for e in rep.events],
            [1.0 - 0.04 * i] * len(rep.events),
            "v",
            color=colour,
            ms=5,
            transform=ax.get_xaxis_transform(),
            label=f"event start {name}",
        )
    shown: set[str] = set()
    for interval in stream.intervals:
        if interval.kind == CONDITION:
            continue
        colour = {FAULT: "#ffab91", ROOM_STOP: "#b0bec5", SILENCE_STOP: "#78909c"}[
            FAULT if interval.kind == FAULT else interval.group
        ]
        legend = FAULT if interval.kind == FAULT else f"stop ({interval.group})"
        for axis in (ax, ax_state):
            axis.axvspan(
                interval.start * minutes,
                interval.end * minutes,
                color=colour,
                alpha=0.5,
                lw=0,
                label=None if legend in shown or axis is ax_state else legend,
            )
        shown.add(legend)
        if interval.kind == FAULT:
            ax.text(
                interval.start * minutes,
                0.02,
                f"{interval.group} {interval.label}".strip(),
                rotation=90,
                fontsize=6,
                va="bottom",
                transform=ax.get_xaxis_transform(),
            )
    positive = first.scores[first.scores > 0]
    if positive.size and positive.max() / max(positive.min(), 1e-12) > 50:
        ax.set_yscale("log")
    ax.set_ylabel("score")
    ax.set_title(f"{stream.name}: window scores, thresholds, faults, stops and events")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    for i, name in enumerate(names):
        rep = reports[name]
        changes = [*sorted(rep.states, key=lambda c: c[0]), (rep.duration, "")]
        for (t0, state), (t1, _) in itertools.pairwise(changes):
            ax_state.barh(
                i,
                (t1 - t0) * minutes,
                left=t0 * minutes,
                color=STATE_COLOURS.get(state, "#9e9e9e"),
                height=0.8,
            )
    ax_state.set_yticks(range(len(names)), names, fontsize=8)
    ax_state.set_xlabel("minutes")
    ax_state.legend(
        handles=[Patch(color=c, label=s) for s, c in STATE_COLOURS.items()],
        title="machine state",
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=7,
        title_fontsize=7,
    )
    ax_state.set_xlim(0, first.duration * minutes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# Main


def _select(items: Sequence[Any], names: str | None, what: str) -> list[Any]:
    if names is None:
        return list(items)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {item.name if hasattr(item, "name") else item: item for item in items}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


def run_scenario(
    scenario: Scenario,
    encoder: EmbeddingModel,
    variants: Sequence[DetectorVariant],
    *,
    out: Path,
    block_seconds: float,
    plot: bool,
    views: str | list[str] | None = None,
) -> dict[str, Any]:
    """Calibrate, then monitor every stream with every variant (one seed of a scenario)."""
    tty = sys.stderr.isatty()
    started = time.perf_counter()
    bundle = calibrate_bundle(
        scenario.calibration,
        encoder,
        progress=tty,
        off_clips=scenario.off_calibration,
        views=views,
    )
    calibration_seconds = time.perf_counter() - started
    print(
        f"[{scenario.name} seed {scenario.seed}] calibrated on {len(scenario.calibration)} "
        f"clips: threshold "
        f"{bundle.threshold:.4g}, max held-out {bundle.normal_stats['max']:.4g} "
        f"({calibration_seconds:.0f} s)",
        file=sys.stderr,
    )
    per_variant: dict[str, dict[str, Any]] = {
        v.name: {"description": v.description, "streams": {}, "thresholds": []} for v in variants
    }
    streams_info: dict[str, Any] = {}
    for index, (name, build) in enumerate(scenario.streams):
        stream = build()
        streams_info[name] = {
            "duration_seconds": stream.duration,
            "intervals": [vars(i) for i in stream.intervals],
            **stream.info,
        }
        reports: dict[str, StreamReport] = {}
        for variant in variants:
            pipeline = variant.build(bundle, encoder)
            report = monitor(
                pipeline, stream.samples, block_seconds=block_seconds, desc=f"{name} {variant.name}"
            )
            metrics = stream_metrics(
                report.duration,
                stream.intervals,
                report.events,
                report.states,
                stop_states=variant.stop_states,
            )
            metrics.update(
                {
                    "threshold": report.threshold,
                    "lost_audio_seconds": report.lost_seconds,
                    "capture_reopenings": report.reopenings,
                    "state_changes": len(report.states),
                    "state_changes_out_of_order": report.states_out_of_order,
                    "environment_changes": report.environment,
                    "event_list": [vars(e) for e in report.events],
                    "wall_seconds": report.seconds,
                }
            )
            per_variant[variant.name]["streams"][name] = metrics
            per_variant[variant.name]["thresholds"].append(report.threshold)
            reports[variant.name] = report
            print(
                f"[{scenario.name} seed {scenario.seed}] {name} ({stream.duration / 60:.1f} min) "
                f"{variant.name}: "
                f"{metrics['false_alarms']} false alarms, "
                f"{sum(f['caught_within'] for f in metrics['faults'])}/{len(metrics['faults'])} "
                f"faults caught <= {CATCH_WITHIN_SECONDS:g} s, "
                f"{sum(s['handled'] for s in metrics['stops'])}/{len(metrics['stops'])} stops "
                f"handled ({report.seconds:.0f} s)",
                file=sys.stderr,
            )
        if plot and index == 0:
            png = out / f"{scenario.name}_{name}.png"
            if plot_stream(png, stream, reports):
                streams_info[name]["plot"] = png.name
        del stream, reports
    for entry in per_variant.values():
        entry["totals"] = summarise(list(entry["streams"].values()))
    return {
        "calibration": {
            "clips": len(scenario.calibration),
            "seconds": sum(c.samples.size for c in scenario.calibration) / SAMPLE_RATE_HZ,
            "threshold": bundle.threshold,
            "threshold_method": bundle.threshold_method,
            "threshold_percentile": bundle.threshold_percentile,
            "normal_stats": bundle.normal_stats,
            "bank_size": bundle.size,
            "wall_seconds": calibration_seconds,
        },
        "info": scenario.info,
        "streams": streams_info,
        "variants": per_variant,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results folder (default {DEFAULT_OUT}[-quick])"
    )
    parser.add_argument("--model", default=None, help="bundled model name or ONNX path")
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 1 min)")
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"comma-separated seeds, each a calibration/monitoring split with its own streams "
        f"(default {DEFAULT_SEEDS}; --quick: 0)",
    )
    parser.add_argument("--scenarios", default=None, help="comma-separated: mimii,fan")
    parser.add_argument("--variants", default=None, help="comma-separated variant names")
    parser.add_argument(
        "--snr", type=float, default=DEFAULT_SNR_DB, help="MIMII calibration and mean SNR, dB"
    )
    parser.add_argument(
        "--views",
        type=parse_views_option,
        default=None,
        help="calibration views, as `edge-asd calibrate --views` (default: the config default)",
    )
    parser.add_argument("--block-seconds", type=float, default=BLOCK_SECONDS)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    started = time.perf_counter()
    variants = _select(VARIANTS, args.variants, "variants")
    builders: dict[str, Callable[[int], Scenario]] = {
        "mimii": lambda seed: mimii_scenario(args.data, seed, quick=args.quick, snr_db=args.snr),
        "fan": lambda seed: fan_scenario(args.data, seed, quick=args.quick),
    }
    if args.out is None:
        args.out = DEFAULT_OUT.with_name(DEFAULT_OUT.name + "-quick") if args.quick else DEFAULT_OUT
    if args.seeds is None:
        args.seeds = "0" if args.quick else DEFAULT_SEEDS
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if not seeds:
        raise SystemExit("--seeds names no seed")
    chosen = _select(list(builders), args.scenarios, "scenarios")
    if not args.data.is_dir():
        raise SystemExit(f"data folder {args.data} not found (--data)")
    model_path = resolve_model(args.model)
    encoder = Encoder(model_path)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": encoder.info.to_dict(),
        "settings": {
            "seeds": seeds,
            "quick": args.quick,
            "block_seconds": args.block_seconds,
            "views": args.views,
            "grace_seconds": GRACE_SECONDS,
            "catch_within_seconds": CATCH_WITHIN_SECONDS,
            "state_within_seconds": STATE_WITHIN_SECONDS,
            "no_audio_seconds": NO_AUDIO_SECONDS,
        },
        "variants": {v.name: v.description for v in variants},
        "scenarios": {},
    }
    for name in chosen:
        per_seed: dict[str, Any] = {}
        description = ""
        for seed in seeds:
            scenario = builders[name](seed)
            description = scenario.description
            per_seed[str(seed)] = run_scenario(
                scenario,
                encoder,
                variants,
                out=args.out,
                block_seconds=args.block_seconds,
                plot=not args.no_plot and seed == seeds[0],
                views=args.views,
            )
        results["scenarios"][name] = {
            "description": description,
            "variants": {
                v.name: {
                    "description": v.description,
                    "thresholds": [
                        t
                        for one in per_seed.values()
                        for t in one["variants"][v.name]["thresholds"]
                    ],
                    "totals": summarise(
                        [
                            stream
                            for one in per_seed.values()
                            for stream in one["variants"][v.name]["streams"].values()
                        ]
                    ),
                }
                for v in variants
            },
            "seeds": per_seed,
        }
    results["wall_seconds"] = time.perf_counter() - started
    tables = "\n\n".join(
        [
            f"Model {encoder.info.name} {encoder.info.version} "
            f"(sha256 {encoder.info.sha256[:12]}...), seeds {','.join(map(str, seeds))}"
            + (", QUICK run" if args.quick else ""),
            main_table(results),
            "Per seed (each seed: its own calibration/monitoring split and streams):",
            seed_table(results),
            "False alarms (FA/h) per condition of normal running:",
            condition_table(results),
            f"Faults caught <= {CATCH_WITHIN_SECONDS:g} s / n (caught at all; median delay):",
            fault_table(results),
        ]
    )
    print(tables)
    (args.out / "table.md").write_text(tables + "\n", encoding="utf-8")
    with open(args.out / "results.json", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, default=_json_default)
        fh.write("\n")
    print(f"\nwrote {args.out / 'results.json'} ({results['wall_seconds']:.0f} s)", file=sys.stderr)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    sys.exit(main())
