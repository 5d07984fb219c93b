"""Build DCASE-layout development sets from the real normal recordings and real noise in shared/.

    python benchmarks/make_devset.py --out devsets/dev --conditions clean,stationary --snrs 0,-10

One ROOT with one section per condition (`clean`, `stationary_snr+5`, ..., `mismatched_snr-10`):

- The 45 real 10 s recordings are split BY RECORDING into source-train, target-train and test
  (no recording on both sides), then cut into clips of `--clip-seconds`.
- Target domain: a shifted operating condition (slower speed by resampling, pitch down a few %,
  plus a treble EQ and gain change) with few training clips.
- Test: every test clip appears as source normal, source anomaly, target normal and target
  anomaly (paired design: the same machine audio with and without a fault, so differences come
  from the fault). Anomalies get one `edge_asd_dev.synth` fault each (types in turn, random level in
  a per-fault range). The same fault parameters are used in every condition.
- Noise: clean; stationary (white/pink); non-stationary (babble/factory2); mismatched (train
  noise factory2/pink, test noise babble/white) at each SNR (dB re the normal machine sound).
  Train crops come from the first half of each noise file, test crops from the second half.

Writes ROOT/manifest.json describing every file. Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any, Final

import numpy as np
from scipy import signal
from tqdm import tqdm

from edge_asd.audio.files import AudioFileError, read_wav, write_wav
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd_dev import synth

_LOGGER = logging.getLogger("make_devset")

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_SHARED: Final = REPO_ROOT.parent / "shared"
DEFAULT_OUT: Final = REPO_ROOT / "devsets" / "dev"
MACHINE_DIR: Final = "data/machine_normal_dev"
NOISE_DIR: Final = "data/noise_dev"

CONDITIONS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None]] = {
    "clean": None,
    "stationary": (("white", "pink"), ("white", "pink")),
    "nonstationary": (("babble", "factory2"), ("babble", "factory2")),
    "mismatched": (("factory2", "pink"), ("babble", "white")),
}
"""Condition -> (train noise types, test noise types); None = no noise."""
DEFAULT_SNRS_DB: Final = (5.0, 0.0, -5.0, -10.0)

N_TARGET_TRAIN_RECORDINGS: Final = 3
N_TEST_RECORDINGS: Final = 15
TARGET_SPEED: Final = 0.96
"""Target-domain machine speed relative to source (4 % slower: every frequency 4 % lower)."""
TARGET_SPEED_RATIO: Final = (25, 24)
"""resample_poly up/down that stretches time by 1 / TARGET_SPEED."""
TARGET_EQ_CORNER_HZ: Final = 2_000.0
TARGET_EQ_GAIN_DB: Final = 4.0
"""High-shelf boost above the corner: a different mounting/microphone position."""
TARGET_GAIN_DB: Final = -3.0
FAULT_LEVELS_DB: Final[dict[str, tuple[float, float]]] = {
    "bearing_impacts": (-10.0, 0.0),
    "whine": (-20.0, -10.0),
    "imbalance_modulation": (-8.0, 0.0),
    "rub_bursts": (-10.0, 0.0),
    "looseness": (-10.0, 0.0),
}
"""Fault-to-signal ratio range (dB) per fault type; faults differ in how audible a dB is."""
SHAFT_HZ_RANGE: Final = (20.0, 60.0)
"""The recorded machine's shaft rate is not documented; faults draw one in this range."""
PEAK_LIMIT: Final = 0.99
"""Mixtures louder than this are scaled down (never clipped) before writing 16-bit PCM."""


@dataclass(frozen=True)
class Segment:
    recording: str
    index: int
    samples: np.ndarray


def _speed_shift(x: np.ndarray) -> np.ndarray:
    up, down = TARGET_SPEED_RATIO
    divisor = gcd(up, down)
    return signal.resample_poly(x.astype(np.float64), up // divisor, down // divisor)


def _target_colour(x: np.ndarray) -> np.ndarray:
    """Treble shelf and gain of the target domain, applied in the frequency domain."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE_HZ)
    shelf_db = TARGET_EQ_GAIN_DB / (1.0 + (TARGET_EQ_CORNER_HZ / np.maximum(freqs, 1.0)) ** 2)
    out = np.fft.irfft(spec * 10 ** ((shelf_db + TARGET_GAIN_DB) / 20), x.size)
    return np.asarray(out)


def cut_segments(recording: str, x: np.ndarray, clip_samples: int, target: bool) -> list[Segment]:
    """Non-overlapping clips of one recording; target ones are slowed down and recoloured."""
    if target:
        x = _target_colour(_speed_shift(x))
    n = x.size // clip_samples
    return [
        Segment(recording, i, x[i * clip_samples : (i + 1) * clip_samples].astype(np.float32))
        for i in range(n)
    ]


def _noise_crop(
    noise: np.ndarray, n: int, rng: np.random.Generator, second_half: bool
) -> tuple[np.ndarray, int]:
    half = noise.size // 2
    lo, hi = (half, noise.size) if second_half else (0, half)
    if hi - lo < n:
        raise ValueError(f"noise half is {hi - lo} samples, shorter than a {n}-sample clip")
    start = int(rng.integers(lo, hi - n + 1))
    return noise[start : start + n], start


def _limit(x: np.ndarray) -> tuple[np.ndarray, float]:
    peak = float(np.max(np.abs(x)))
    gain = 1.0 if peak <= PEAK_LIMIT else PEAK_LIMIT / peak
    return (x * gain).astype(np.float32), gain


class SectionWriter:
    """Mixes noise into clips of one section, writes them, and records what it wrote."""

    def __init__(
        self,
        sec_dir: Path,
        snr: float | None,
        rng: np.random.Generator,
        noise: dict[str, np.ndarray],
        bar: tqdm,
    ) -> None:
        self.sec_dir = sec_dir
        self.snr = snr
        self.rng = rng
        self.noise = noise
        self.bar = bar
        self.files: list[dict[str, Any]] = []

    def write(
        self,
        rel: str,
        clean: np.ndarray,
        faulty: np.ndarray,
        noise_types: tuple[str, ...] | None,
        second_half: bool,
        info: dict[str, Any],
    ) -> None:
        mixed = faulty.astype(np.float64)
        if noise_types is not None and self.snr is not None:
            kind = noise_types[int(self.rng.integers(len(noise_types)))]
            crop, start = _noise_crop(self.noise[kind], clean.size, self.rng, second_half)
            # SNR re the NORMAL machine sound, so a loud fault does not quieten the noise.
            scaled = synth.mix_at_snr(clean, crop, self.snr).astype(np.float64) - clean
            mixed = mixed + scaled
            info = {**info, "noise": kind, "noise_start_s": start / SAMPLE_RATE_HZ}
        limited, gain = _limit(mixed)
        write_wav(self.sec_dir / rel, limited)
        self.files.append({"file": rel, **info, "gain": gain})
        self.bar.update(1)


def _short(recording: str) -> str:
    """The recording's number (normal_id_00_00000012 -> 00000012), for readable file names."""
    return recording.rsplit("_", 1)[-1]


def _snr_label(snr: float) -> str:
    return "0" if snr == 0 else f"{snr:+g}"


def _section_names(
    conditions: Sequence[str], snrs: Sequence[float]
) -> list[tuple[str, str, float | None]]:
    out: list[tuple[str, str, float | None]] = []
    for condition in conditions:
        if CONDITIONS[condition] is None:
            out.append((condition, condition, None))
        else:
            out.extend((f"{condition}_snr{_snr_label(snr)}", condition, snr) for snr in snrs)
    return out


def build(
    shared: Path,
    out: Path,
    *,
    conditions: Sequence[str],
    snrs: Sequence[float],
    seed: int,
    clip_seconds: float,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the sections and manifest.json under `out`; returns the manifest."""
    machine_files = sorted((shared / MACHINE_DIR).glob("*.wav"))
    if len(machine_files) < N_TARGET_TRAIN_RECORDINGS + N_TEST_RECORDINGS + 2:
        raise SystemExit(f"{shared / MACHINE_DIR}: found {len(machine_files)} .wav files, need 20+")
    clip_samples = round(clip_seconds * SAMPLE_RATE_HZ)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(machine_files))
    test_idx = sorted(order[:N_TEST_RECORDINGS].tolist())
    target_idx = sorted(
        order[N_TEST_RECORDINGS : N_TEST_RECORDINGS + N_TARGET_TRAIN_RECORDINGS].tolist()
    )
    source_idx = sorted(order[N_TEST_RECORDINGS + N_TARGET_TRAIN_RECORDINGS :].tolist())

    recordings = {f.stem: read_wav(f) for f in machine_files}
    names = [f.stem for f in machine_files]

    def segments(indices: Sequence[int], target: bool) -> list[Segment]:
        segs: list[Segment] = []
        for i in indices:
            segs.extend(cut_segments(names[i], recordings[names[i]], clip_samples, target))
        return segs

    train_source = segments(source_idx, False)
    train_target = segments(target_idx, True)
    test_source = segments(test_idx, False)
    test_target = segments(test_idx, True)
    if not (train_source and train_target and test_source and test_target):
        raise SystemExit(f"--clip-seconds {clip_seconds} is longer than the recordings allow")

    # Faults are drawn once per test clip and domain, so every condition has the same anomalies.
    fault_names = sorted(synth.FAULTS)
    faults: dict[tuple[str, int], dict[str, Any]] = {}
    for domain_i, segs in enumerate((test_source, test_target)):
        for j, _seg in enumerate(segs):
            name = fault_names[(j + domain_i) % len(fault_names)]
            lo, hi = FAULT_LEVELS_DB[name]
            faults[(("source", "target")[domain_i], j)] = {
                "fault": name,
                "level_db": float(rng.uniform(lo, hi)),
                "shaft_hz": float(rng.uniform(*SHAFT_HZ_RANGE)),
                "seed": int(rng.integers(2**31)),
            }

    noise_types = sorted({t for v in CONDITIONS.values() if v for pair in v for t in pair})
    noise: dict[str, np.ndarray] = {}
    for name in noise_types:
        path = shared / NOISE_DIR / f"{name}.wav"
        try:
            noise[name] = read_wav(path)
        except AudioFileError as exc:
            raise SystemExit(f"cannot read noise file: {exc}") from exc

    sections = _section_names(conditions, snrs)
    per_section = len(train_source) + len(train_target) + 2 * (len(test_source) + len(test_target))
    manifest: dict[str, Any] = {
        "description": "edge-asd development set: real normal machine audio (MIMII id_00), "
        "synthetic faults (edge_asd_dev.synth), real noise (NOISEX-92 excerpts)",
        "seed": seed,
        "clip_seconds": clip_seconds,
        "sample_rate": SAMPLE_RATE_HZ,
        "split": {
            "train_source_recordings": [names[i] for i in source_idx],
            "train_target_recordings": [names[i] for i in target_idx],
            "test_recordings": [names[i] for i in test_idx],
        },
        "target_domain": {
            "speed": TARGET_SPEED,
            "eq_corner_hz": TARGET_EQ_CORNER_HZ,
            "eq_gain_db": TARGET_EQ_GAIN_DB,
            "gain_db": TARGET_GAIN_DB,
        },
        "fault_levels_db": {k: list(v) for k, v in FAULT_LEVELS_DB.items()},
        "sections": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(
        total=per_section * len(sections),
        unit="clip",
        file=sys.stderr,
        disable=None if progress else True,  # None: shown on a terminal only
    ) as bar:
        for section, condition, snr in sections:
            sec_dir = out / section
            if sec_dir.exists():
                shutil.rmtree(sec_dir)
            (sec_dir / "train").mkdir(parents=True)
            (sec_dir / "test").mkdir(parents=True)
            noise_pair = CONDITIONS[condition]
            # Seeded from the section's name (hash() is salted per process, so not that).
            sec_rng = np.random.default_rng([seed, *(ord(c) for c in section)])
            writer = SectionWriter(sec_dir, snr, sec_rng, noise, bar)
            train_noise = None if noise_pair is None else noise_pair[0]
            test_noise = None if noise_pair is None else noise_pair[1]
            for domain, segs in (("source", train_source), ("target", train_target)):
                for j, seg in enumerate(segs):
                    rel = (
                        f"train/section_00_{domain}_train_normal_{j:04d}_"
                        f"rec{_short(seg.recording)}_seg_{seg.index}.wav"
                    )
                    info: dict[str, Any] = {
                        "domain": domain,
                        "label": "normal",
                        "recording": seg.recording,
                    }
                    writer.write(rel, seg.samples, seg.samples, train_noise, False, info)
            for domain, segs in (("source", test_source), ("target", test_target)):
                for j, seg in enumerate(segs):
                    info = {"domain": domain, "recording": seg.recording, "segment": seg.index}
                    rec = _short(seg.recording)
                    rel = f"test/section_00_{domain}_test_normal_{j:04d}_rec{rec}.wav"
                    writer.write(
                        rel, seg.samples, seg.samples, test_noise, True, {**info, "label": "normal"}
                    )
                    fault = faults[(domain, j)]
                    faulty = synth.apply_fault(
                        seg.samples,
                        fault["fault"],
                        rng=np.random.default_rng(fault["seed"]),
                        level_db=fault["level_db"],
                        shaft_hz=fault["shaft_hz"],
                    )
                    rel = (
                        f"test/section_00_{domain}_test_anomaly_{j:04d}_"
                        f"{fault['fault']}_rec{_short(seg.recording)}.wav"
                    )
                    writer.write(
                        rel,
                        seg.samples,
                        faulty,
                        test_noise,
                        True,
                        {**info, "label": "anomaly", **fault},
                    )
            manifest["sections"][section] = {
                "condition": condition,
                "snr_db": snr,
                "train_noise": list(train_noise) if train_noise else None,
                "test_noise": list(test_noise) if test_noise else None,
                "files": writer.files,
            }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="shared/ folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output ROOT")
    parser.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"comma-separated subset of {','.join(CONDITIONS)}",
    )
    parser.add_argument(
        "--snrs",
        default=",".join(f"{s:g}" for s in DEFAULT_SNRS_DB),
        help="comma-separated SNRs in dB for the noisy conditions",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        parser.error(f"--conditions: unknown {unknown}; expected some of {list(CONDITIONS)}")
    try:
        snrs = [float(s) for s in args.snrs.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--snrs: expected comma-separated numbers, got {args.snrs!r}")
    if not 0.5 <= args.clip_seconds <= 10.0:
        parser.error("--clip-seconds must be between 0.5 and 10")
    manifest = build(
        args.shared,
        args.out,
        conditions=conditions,
        snrs=snrs,
        seed=args.seed,
        clip_seconds=args.clip_seconds,
        progress=not args.no_progress,
    )
    n_files = sum(len(s["files"]) for s in manifest["sections"].values())
    _LOGGER.info(
        "wrote %d sections, %d files under %s", len(manifest["sections"]), n_files, args.out
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
