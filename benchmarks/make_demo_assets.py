"""Make the bundled demo audio in edge_asd/assets/ from edge_asd_dev.synth (seeded, reproducible).

    PYTHONPATH=. python benchmarks/make_demo_assets.py [--out edge_asd/assets] [--check]

- demo_normal.wav: 40 s of a synthetic machine running normally (calibration material).
- demo_test.wav: 20 s of the same machine; from 8 s to 14 s it develops a bearing defect with
  a whine (faded in and out over 50 ms), normal again afterwards.
- demo_test.json: where the anomaly is (`anomaly_start_seconds`, `anomaly_end_seconds`,
  `faults`), read by `edge-asd demo`.

`--check` calibrates on demo_normal.wav with the bundled model (density scoring) and prints the
window scores of demo_test.wav against the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from edge_asd.audio.files import read_wav, write_wav
from edge_asd.constants import (
    DEFAULT_HOP_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    SAMPLE_RATE_HZ,
    seconds_to_samples,
)
from edge_asd_dev import synth

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_OUT: Final = REPO_ROOT / "edge_asd" / "assets"
SEED: Final = 20_251_122
NORMAL_SECONDS: Final = 40.0
TEST_SECONDS: Final = 20.0
ANOMALY_START_S: Final = 8.0
ANOMALY_END_S: Final = 14.0
FADE_S: Final = 0.05
"""Fault fade-in/out, so the onset is not a click that any model would flag."""
FAULTS_DB: Final = (("bearing_impacts", -14.0), ("whine", -20.0))
"""(fault, fault-to-signal ratio in dB) added over the anomalous stretch."""


def make_assets() -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """(normal, test, truth): one continuous machine recording split in two, fault added."""
    rng = np.random.default_rng(SEED)
    # One recording, split: the test is the SAME machine (same harmonic levels) as the normal.
    audio = synth.machine_sound(NORMAL_SECONDS + TEST_SECONDS, rng=rng)
    split = seconds_to_samples(NORMAL_SECONDS)
    normal = audio[:split]
    test = audio[split:].astype(np.float64)
    start = seconds_to_samples(ANOMALY_START_S)
    end = seconds_to_samples(ANOMALY_END_S)
    stretch = test[start:end]
    added = np.zeros_like(stretch)
    for name, level_db in FAULTS_DB:
        faulty = synth.apply_fault(stretch, name, rng=rng, level_db=level_db)
        added += faulty.astype(np.float64) - stretch
    fade = np.ones(stretch.size)
    ramp = seconds_to_samples(FADE_S)
    fade[:ramp] = np.linspace(0.0, 1.0, ramp)
    fade[-ramp:] = np.linspace(1.0, 0.0, ramp)
    test[start:end] = stretch + fade * added
    truth: dict[str, object] = {
        "anomaly_start_seconds": ANOMALY_START_S,
        "anomaly_end_seconds": ANOMALY_END_S,
        "faults": [name for name, _ in FAULTS_DB],
        "fault_levels_db": {name: level for name, level in FAULTS_DB},
        "duration_seconds": TEST_SECONDS,
        "sample_rate": SAMPLE_RATE_HZ,
        "seed": SEED,
        "generator": "benchmarks/make_demo_assets.py (edge_asd_dev.synth)",
    }
    return normal, test.astype(np.float32), truth


def check(out: Path) -> int:
    """Calibrate on the normal asset and show how the test asset scores (bundled model)."""
    from edge_asd.detection.calibration import Clip, Framing, calibrate
    from edge_asd.detection.pipeline import MachinePipeline
    from edge_asd.model.encoder import Encoder
    from edge_asd.model.registry import resolve_model

    encoder = Encoder(resolve_model(None))
    window = seconds_to_samples(DEFAULT_WINDOW_SECONDS)
    hop = seconds_to_samples(DEFAULT_HOP_SECONDS)
    settings = Framing(window_samples=window, hop_samples=hop)
    normal = Clip("demo_normal.wav", read_wav(out / "demo_normal.wav"))
    bundle = calibrate([normal], encoder, settings, progress=False)
    test = read_wav(out / "demo_test.wav")
    # The windows as the demo (and the daemon) score them: the bundle's method and framing.
    windows = MachinePipeline.from_bundle(bundle, encoder).run_recording(test).step.windows
    inside: list[float] = []
    outside: list[float] = []
    for w in windows:
        in_fault = w.end_time > ANOMALY_START_S and w.start_time < ANOMALY_END_S
        (inside if in_fault else outside).append(w.score)
        flag = "OVER" if w.score > bundle.threshold else ""
        print(
            f"{w.start_time:5.1f}-{w.end_time:5.1f} s  {w.score:8.3f}  "
            f"{'fault' if in_fault else '':5s} {flag}"
        )
    print(
        f"threshold {bundle.threshold:.3f}; fault windows min {min(inside):.3f}, "
        f"normal windows max {max(outside):.3f}"
    )
    separated = min(inside) > bundle.threshold >= max(outside)
    print("clearly flagged" if separated else "NOT cleanly separated")
    return 0 if separated else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="also score them with the model")
    args = parser.parse_args(argv)
    normal, test, truth = make_assets()
    args.out.mkdir(parents=True, exist_ok=True)
    write_wav(args.out / "demo_normal.wav", normal)
    write_wav(args.out / "demo_test.wav", test)
    (args.out / "demo_test.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    total = sum((args.out / n).stat().st_size for n in ("demo_normal.wav", "demo_test.wav"))
    print(f"wrote demo assets to {args.out} ({total / 1e6:.2f} MB of WAV)")
    return check(args.out) if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
