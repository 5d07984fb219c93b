"""`environment_changed` on real recordings: when does the daemon say the surroundings changed?

    PYTHONPATH=. python benchmarks/environment.py --data ../shared/data --out runs/environment

Calibration as in the streams benchmark (benchmarks/streams.py, scenario mimii): 30 of the 45
MIMII id_00 normal clips (5 min) mixed with factory noise from the first half of factory2.wav at
10 dB SNR, the product's `calibrate` with the default model and settings. Monitoring: the 15
other clips (150 s, back to back) mixed with each noise (the second half of factory2, babble,
pink, white; none of the four crops was heard at calibration) at each SNR (10 to -10 dB), each
stream through the daemon's own pipeline (`service.startup.MachineSetup`, default machine
settings), plus, in the calibration's noise at 10 dB: the input gain 3 and 6 dB up, and each
synthetic fault family at the strongest level of the development set.

Per stream it prints when `environment_changed` was first decided (seconds from the start; the
monitor needs its 10 s average and then 20 s over the margin), the share of the stream spent
changed, the summary at the change, the alarms (event starts), and the median over the stream's
10 s blocks of the monitor's distance (median band change against the nearest calibration
block, dB; compare with the margin printed first). Nothing here is tuned on
these figures: the monitor's constants are fixed in `edge_asd/detection/environment.py`.
"""

# ruff: noqa: E402  (the BLAS thread variables must be set before numpy is imported)
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from edge_asd.audio.files import read_wav
from edge_asd.config import CalibrationConfig, MachineConfig, detector_settings
from edge_asd.constants import DEFAULT_HOP_SECONDS, seconds_to_samples
from edge_asd.detection.bundle import Bundle
from edge_asd.detection.calibration import Clip, Framing, calibrate
from edge_asd.detection.environment import (
    MAX_BLOCKS,
    EnvironmentMonitor,
    EnvironmentProfile,
    block_distance,
    clip_blocks,
)
from edge_asd.detection.states import EventType, MachineState
from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.service.startup import MachineSetup
from edge_asd_dev import synth

REPO: Final = Path(__file__).resolve().parents[1]
CALIBRATION_CLIPS: Final = 30
CALIBRATION_SNR_DB: Final = 10.0
SNRS_DB: Final = (10.0, 5.0, 0.0, -5.0, -10.0)
NOISES: Final = ("factory2-b", "babble", "pink", "white")
GAINS_DB: Final = (3.0, 6.0)
FAULT_LEVELS_DB: Final = {
    "bearing_impacts": 0.0,
    "whine": -10.0,
    "imbalance_modulation": 0.0,
    "rub_bursts": 0.0,
    "looseness": 0.0,
    "hiss_leak": -10.0,
    "valve_clicks": -5.0,
}
"""The strongest level of each family in the streams benchmark (MIMII_FAULT_LEVELS_DB)."""


def _noise(data: Path, name: str) -> np.ndarray:
    """factory2-a / factory2-b: the first / second half of factory2.wav; else the whole file."""
    if name.startswith("factory2"):
        x = read_wav(data / "noise_dev" / "factory2.wav")
        half = x.size // 2
        return x[:half] if name.endswith("-a") else x[half:]
    return read_wav(data / "noise_dev" / f"{name}.wav")


def _mix(
    clip: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    start = int(rng.integers(0, max(1, noise.size - clip.size)))
    return synth.mix_at_snr(clip, noise[start : start + clip.size], snr_db)


def _pipeline(bundle: Bundle, encoder: Encoder):  # type: ignore[no-untyped-def]
    machine = MachineConfig(name="machine", bundle=Path("bundle"))
    threshold = bundle.threshold * machine.threshold_scale
    setup = MachineSetup(0, machine, bundle, detector_settings(machine, threshold, bundle.evidence))
    return setup.pipeline(encoder)


def _run(bundle: Bundle, encoder: Encoder, audio: np.ndarray) -> dict[str, Any]:
    result = _pipeline(bundle, encoder).run_recording(np.clip(audio, -1.0, 1.0))
    states = [(c.time, c.state) for c in result.step.state_changes]
    changed_time = 0.0
    since: float | None = None
    for t, state in [*states, (result.duration_seconds, None)]:
        if since is not None:
            changed_time += t - since
            since = None
        if state is MachineState.ENVIRONMENT_CHANGED:
            since = t
    first = next((c for c in result.step.environment if c.changed), None)
    assert bundle.environment is not None
    # The monitor's distance, block by block (10 s, side by side): how close the call was.
    blocks, _ = clip_blocks([audio])
    distances = block_distance(blocks, bundle.environment.blocks_db).min(axis=1)
    return {
        "median_distance_db": float(np.median(distances)),
        "seconds": result.duration_seconds,
        "first_changed_s": None if first is None else round(first.time, 1),
        "changed_share": changed_time / result.duration_seconds,
        "changes": len(result.step.environment),
        "summary": None if first is None or first.summary is None else first.summary.to_dict(),
        "alarms": sum(1 for t in result.step.transitions if t.kind is EventType.START),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "environment")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    files = sorted((args.data / "machine_normal_dev").glob("*.wav"))
    order = rng.permutation(len(files))
    clips = [read_wav(files[i]) for i in order]
    calibration_noise = _noise(args.data, "factory2-a")
    started = time.monotonic()
    encoder = Encoder(resolve_model(None))
    framing = Framing(encoder.info.window_samples, seconds_to_samples(DEFAULT_HOP_SECONDS))
    bundle = calibrate(
        [
            Clip(f"c{i}", _mix(x, calibration_noise, CALIBRATION_SNR_DB, rng))
            for i, x in enumerate(clips[:CALIBRATION_CLIPS])
        ],
        encoder,
        framing,
        CalibrationConfig(),
        progress=False,
    )
    assert bundle.environment is not None
    print(
        f"calibrated: {bundle.environment.blocks_db.shape[0]} blocks, spread "
        f"{bundle.environment.spread_db:.2f} dB, margin {bundle.environment.enter_db:.2f} dB",
        flush=True,
    )
    monitored = clips[CALIBRATION_CLIPS:]
    rows: list[dict[str, Any]] = []

    def stream(label: str, audio: np.ndarray) -> None:
        row = {"stream": label, **_run(bundle, encoder, audio)}
        rows.append(row)
        summary = row["summary"]
        described = (
            ""
            if summary is None
            else f"level {summary['level_change_db']:+.1f} dB, median band change "
            f"{summary['change_db']:.1f} dB, top band {summary['bands'][0]['hz']} "
            f"{summary['bands'][0]['change_db']:+.1f} dB"
        )
        first = row["first_changed_s"]
        print(
            f"| {label} | {row['median_distance_db']:.1f} | "
            f"{'-' if first is None else f'{first:.1f}'} | "
            f"{100 * row['changed_share']:.0f} % | {row['changes']} | {row['alarms']} | "
            f"{described} |",
            flush=True,
        )

    print(
        "| stream | distance dB | changed at s | time changed | changes | alarms | at the change |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in NOISES:
        noise = _noise(args.data, name)
        for snr in SNRS_DB:
            audio = np.concatenate([_mix(x, noise, snr, rng) for x in monitored])
            stream(f"{name} {snr:+.0f} dB", audio)
    noise = _noise(args.data, "factory2-b")
    base = np.concatenate([_mix(x, noise, CALIBRATION_SNR_DB, rng) for x in monitored])
    for gain in GAINS_DB:
        stream(f"factory2-b +10 dB, gain {gain:+.0f} dB", base * 10 ** (gain / 20.0))
    for fault, level in FAULT_LEVELS_DB.items():
        faulty = synth.ALL_FAULTS[fault](base, rng=rng, level_db=level)
        stream(f"factory2-b +10 dB, {fault} {level:+.0f} dB", faulty)
    # What the monitor adds to each window (the daemon's inference thread), with this
    # calibration's blocks and with the most a bundle keeps.
    windows = np.lib.stride_tricks.sliding_window_view(base, encoder.info.window_samples)[
        :: framing.hop_samples
    ][:400]
    profiles = {
        "this calibration": bundle.environment,
        "the most a bundle keeps": EnvironmentProfile(
            bundle.environment.edges_hz,
            np.resize(
                bundle.environment.blocks_db, (MAX_BLOCKS, bundle.environment.edges_hz.shape[0])
            ),
            bundle.environment.spread_db,
        ),
    }
    for label, profile in profiles.items():
        monitor = EnvironmentMonitor(profile, framing.hop_samples)
        for window in windows[:40]:
            monitor.update(window)
        began = time.perf_counter()
        for window in windows:
            monitor.update(window)
        per_window = (time.perf_counter() - began) / windows.shape[0]
        print(
            f"monitor, {label} ({profile.blocks_db.shape[0]} blocks): "
            f"{1000 * per_window:.3f} ms per window"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{time.monotonic() - started:.0f} s; results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
