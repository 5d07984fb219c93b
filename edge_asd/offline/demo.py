"""`edge-asd demo`: the detection core end to end on audio that ships with the package.

Calibrates on a bundled recording of a (synthetic) machine running normally, then scores a
bundled recording in which the machine develops a fault for a few seconds, and prints the
per-window scores and the anomalous stretch the detector finds. The test recording runs
through the daemon's machine pipeline (`pipeline.MachinePipeline`), so what it prints is what
the daemon would have scored and raised.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from edge_asd.audio.files import read_wav
from edge_asd.config import MachineConfig, detector_settings
from edge_asd.constants import (
    DEFAULT_HOP_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    EXIT_FAILURE,
    EXIT_OK,
    seconds_to_samples,
)
from edge_asd.detection.bundle import save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.detection.pipeline import MachinePipeline
from edge_asd.detection.states import EventType
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model

NORMAL_ASSET = "demo_normal.wav"
TEST_ASSET = "demo_test.wav"
TRUTH_ASSET = "demo_test.json"
BAR_WIDTH = 40
"""Characters of the score bar at twice the threshold."""


def _asset(name: str) -> Path:
    return Path(str(resources.files("edge_asd") / "assets" / name))


def run_demo(*, model: str | None = None, out: Path | None = None) -> int:
    encoder = Encoder(resolve_model(model))
    window = seconds_to_samples(DEFAULT_WINDOW_SECONDS)
    hop = seconds_to_samples(DEFAULT_HOP_SECONDS)
    settings = Framing(window_samples=window, hop_samples=hop)
    print(f"model: {encoder.info.name} {encoder.info.version} ({encoder.info.embedding_dim}-d)")
    print(f"calibrating on {NORMAL_ASSET} (normal running) ...")
    normal = Clip(name=NORMAL_ASSET, samples=read_wav(_asset(NORMAL_ASSET)))
    bundle = calibrate([normal], encoder, settings, progress=True, sources=[NORMAL_ASSET])
    saved = ""
    if out is not None:
        save_bundle(bundle, out)
        saved = f", saved to {out}"
    print(
        f"bundle {bundle.bundle_id}: {len(bundle.embeddings)} windows, threshold "
        f"{bundle.threshold:.3f} ({bundle.threshold_method}){saved}"
    )
    # The daemon's default detection for a machine calibrated like this (a config's defaults).
    machine = MachineConfig(name="demo", bundle=Path(out or "demo-bundle"))
    detector = detector_settings(machine, bundle.threshold, bundle.evidence)
    threshold = detector.threshold
    pipeline = MachinePipeline.from_bundle(bundle, encoder, detector=detector)
    samples = read_wav(_asset(TEST_ASSET))
    result = pipeline.run_recording(samples)
    print(
        f"\nscoring {TEST_ASSET} ({result.duration_seconds:.1f} s), window "
        f"{pipeline.window_samples} samples, hop {pipeline.hop_samples}:"
    )
    print("   time (s)     score  ")
    for w in result.step.windows:
        over = w.score > threshold
        filled = min(BAR_WIDTH, round(BAR_WIDTH * w.score / (2 * threshold)))
        bar = "#" * filled + " " * (BAR_WIDTH - filled)
        marker = "  <- over threshold" if over else ""
        print(f"  {w.start_time:5.1f}-{w.end_time:5.1f}  {w.score:8.3f}  |{bar}|{marker}")
    if detector.evidence is not None:
        print(
            "  a single window over the threshold is not an alarm: evidence accumulates over "
            f"windows above it until it reaches {detector.evidence.alarm_level:.2f} (the level "
            "calibration set for 1 false alarm a week), or "
            f"{detector.trigger_windows} windows in a row score over "
            f"{detector.evidence.gross_score:.3f} (far above normal)"
        )
    else:
        print(
            "  a single window over the threshold is not an alarm: an event needs "
            f"{detector.trigger_windows} windows in a row over it (trigger_windows)"
        )
    # The pipeline closed any event still open at the end of the file, so every stretch
    # detected has its end transition.
    stretches = [
        (t.start_ts, t.ts if t.end_ts is None else t.end_ts, t.peak_score)
        for t in result.step.transitions
        if t.kind is EventType.END
    ]
    truth = json.loads(_asset(TRUTH_ASSET).read_text(encoding="utf-8"))
    print(
        f"\nthreshold {threshold:.3f}; the fault in this recording is at "
        f"{truth['anomaly_start_seconds']:.1f}-{truth['anomaly_end_seconds']:.1f} s "
        f"({', '.join(truth.get('faults', []))})"
    )
    if not stretches:
        print("no anomalous stretch detected")
        return EXIT_FAILURE
    for start, end, peak in stretches:
        print(f"ANOMALY detected from {start:.1f} s to {end:.1f} s (peak score {peak:.3f})")
    return EXIT_OK
