"""`edge-asd demo`: the detection core end to end on audio that ships with the package.

Calibrates on a bundled recording of a (synthetic) machine running normally, then scores a
bundled recording in which the machine develops a fault for a few seconds, and prints the
per-window scores and the anomalous stretch the detector finds.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

from edge_asd.audio.files import read_wav
from edge_asd.constants import (
    DEFAULT_HOP_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    EXIT_FAILURE,
    EXIT_OK,
    SAMPLE_RATE_HZ,
    seconds_to_samples,
)
from edge_asd.detection.bundle import save_bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.detection.detector import Detector, DetectorSettings
from edge_asd.detection.windowing import frame_signal
from edge_asd.model.encoder import Encoder, resolve_model

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
    with tempfile.TemporaryDirectory(prefix="edge-asd-demo-") as tmp:
        bundle_dir = out if out is not None else Path(tmp) / "bundle"
        save_bundle(bundle, bundle_dir)
        print(
            f"bundle {bundle.bundle_id}: {len(bundle.embeddings)} windows, threshold "
            f"{bundle.threshold:.3f} ({bundle.threshold_method}), saved to {bundle_dir}"
        )
    samples = read_wav(_asset(TEST_ASSET))
    windows = frame_signal(samples, window, hop)
    scores = bundle.memory_bank().score(encoder.embed(windows), bundle.method)
    detector = Detector(DetectorSettings(threshold=bundle.threshold))
    print(
        f"\nscoring {TEST_ASSET} ({len(samples) / SAMPLE_RATE_HZ:.1f} s), window {window} "
        f"samples, hop {hop}:"
    )
    print("   time (s)     score  ")
    stretches: list[tuple[float, float, float]] = []
    open_start: float | None = None
    for index, score in enumerate(scores):
        start = index * hop / SAMPLE_RATE_HZ
        end = start + window / SAMPLE_RATE_HZ
        over = score > bundle.threshold
        filled = min(BAR_WIDTH, round(BAR_WIDTH * score / (2 * bundle.threshold)))
        bar = "#" * filled + " " * (BAR_WIDTH - filled)
        marker = "  <- over threshold" if over else ""
        print(f"  {start:5.1f}-{end:5.1f}  {score:8.3f}  |{bar}|{marker}")
        for transition in detector.process(
            float(score), window_start_ts=start, window_end_ts=end, dbfs=0.0
        ):
            if transition.kind == "start":
                open_start = transition.start_ts
            elif transition.kind == "end" and open_start is not None:
                stretches.append((open_start, transition.end_ts or end, transition.peak_score))
                open_start = None
    for transition in detector.close(len(samples) / SAMPLE_RATE_HZ):
        stretches.append((transition.start_ts, transition.end_ts or 0.0, transition.peak_score))
    truth = json.loads(_asset(TRUTH_ASSET).read_text(encoding="utf-8"))
    print(
        f"\nthreshold {bundle.threshold:.3f}; the fault in this recording is at "
        f"{truth['anomaly_start_seconds']:.1f}-{truth['anomaly_end_seconds']:.1f} s "
        f"({', '.join(truth.get('faults', []))})"
    )
    if not stretches:
        print("no anomalous stretch detected")
        return EXIT_FAILURE
    for start, end, peak in stretches:
        print(f"ANOMALY detected from {start:.1f} s to {end:.1f} s (peak score {peak:.3f})")
    return EXIT_OK
