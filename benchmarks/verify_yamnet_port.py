"""Check the PyTorch YAMNet port against the real TFLite teacher on real audio.

    python benchmarks/verify_yamnet_port.py --tflite ../shared/models/yamnet.tflite \
        --audio ../shared/data

Runs both on 15 600-sample windows cut from every WAV under --audio (resampled to 16 kHz) and
prints log-mel, embedding (cosine) and score differences, for the TFLite runtime with its default
delegate (XNNPACK) and with the built-in kernels only. Each runtime is compared with the plain
float port (the fine-tuning start point) and with the port emulating that runtime's on-the-fly
activation quantisation (which isolates the port's own error). Exit status 1 if the port
emulating the default runtime (XNNPACK) has an embedding cosine median below --min-cosine on
any group of windows.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from math import gcd
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.pretrain.yamnet import TEACHER_WINDOW_SAMPLES, YamnetPort

_LOGGER = logging.getLogger("verify_yamnet_port")

EMBEDDING_TENSOR = "yamnet_frames/global_average_pooling2d/Mean"
LOG_MEL_OUTPUT = "Identity_1"
SCORES_OUTPUT = "Identity"
INT16_FULL_SCALE = 32768.0
DEFAULT_WINDOWS_PER_FILE = 4
DEFAULT_MIN_COSINE = 0.999
PERCENTILE_LOW = 5


def load_wav(path: Path) -> np.ndarray:
    """Mono float32 in [-1, 1] at 16 kHz."""
    rate, data = wavfile.read(path)
    if data.ndim > 1:
        data = data[:, 0]
    if data.dtype == np.int16:
        x = data.astype(np.float32) / INT16_FULL_SCALE
    elif data.dtype == np.float32:
        x = data
    else:
        raise ValueError(f"{path}: unsupported sample type {data.dtype}")
    if rate != SAMPLE_RATE_HZ:
        g = gcd(rate, SAMPLE_RATE_HZ)
        x = resample_poly(x, SAMPLE_RATE_HZ // g, rate // g).astype(np.float32)
    return x


def cut_windows(x: np.ndarray, count: int, length: int) -> list[np.ndarray]:
    """`count` windows of `length` samples spread evenly over `x`."""
    if x.size < length:
        return []
    starts = np.linspace(0, x.size - length, count).astype(int)
    return [x[s : s + length] for s in starts]


class TfliteTeacher:
    """The TFLite model with all intermediate tensors kept."""

    def __init__(self, path: Path, *, builtin_only: bool) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kwargs = {}
        if builtin_only:
            kwargs["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        self.interp = Interpreter(
            model_path=str(path), experimental_preserve_all_tensors=True, num_threads=1, **kwargs
        )
        self.interp.allocate_tensors()
        details = {d["name"]: d["index"] for d in self.interp.get_tensor_details()}
        self.input_index = self.interp.get_input_details()[0]["index"]
        self.embedding_index = details[EMBEDDING_TENSOR]
        self.log_mel_index = details[LOG_MEL_OUTPUT]
        self.scores_index = details[SCORES_OUTPUT]

    def run(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log-mel [96, 64], embedding [1024], scores [521]) for one window."""
        self.interp.set_tensor(self.input_index, window[None].astype(np.float32))
        self.interp.invoke()
        return (
            self.interp.get_tensor(self.log_mel_index).copy(),
            self.interp.get_tensor(self.embedding_index)[0].copy(),
            self.interp.get_tensor(self.scores_index)[0].copy(),
        )


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, np.finfo(np.float32).tiny)


def compare(
    teacher: TfliteTeacher, port: YamnetPort, windows: np.ndarray
) -> dict[str, float | int]:
    """Differences between the port and the teacher over `windows` [N, 15600]."""
    ref = [teacher.run(w) for w in windows]
    ref_mel = np.stack([r[0] for r in ref])
    ref_emb = np.stack([r[1] for r in ref])
    ref_scores = np.stack([r[2] for r in ref])
    with torch.no_grad():
        x = torch.from_numpy(windows)
        mel = port.log_mel(x).numpy()
        out = port(x)
        emb = out.embedding.numpy()
        assert out.logits is not None
        scores = torch.sigmoid(out.logits).numpy()
    cos = cosine(emb, ref_emb)
    top_ref = ref_scores.argmax(axis=1)
    top_port = scores.argmax(axis=1)
    return {
        "windows": len(windows),
        "log_mel_max_abs_diff": float(np.abs(mel - ref_mel).max()),
        "log_mel_median_abs_diff": float(np.median(np.abs(mel - ref_mel))),
        "embedding_cosine_median": float(np.median(cos)),
        "embedding_cosine_p5": float(np.percentile(cos, PERCENTILE_LOW)),
        "embedding_cosine_min": float(cos.min()),
        "embedding_rel_l2_median": float(
            np.median(np.linalg.norm(emb - ref_emb, axis=1) / np.linalg.norm(ref_emb, axis=1))
        ),
        "scores_max_abs_diff": float(np.abs(scores - ref_scores).max()),
        "scores_median_abs_diff": float(np.median(np.abs(scores - ref_scores))),
        "top1_agreement": float(np.mean(top_ref == top_port)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", type=Path, required=True, help="yamnet.tflite")
    parser.add_argument("--audio", type=Path, required=True, help="folder searched for *.wav")
    parser.add_argument("--windows-per-file", type=int, default=DEFAULT_WINDOWS_PER_FILE)
    parser.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    paths = sorted(args.audio.rglob("*.wav"))
    if not paths:
        print(f"{args.audio}: no .wav files", file=sys.stderr)
        return 2
    groups: dict[str, list[np.ndarray]] = {}
    for path in paths:
        windows = cut_windows(load_wav(path), args.windows_per_file, TEACHER_WINDOW_SAMPLES)
        groups.setdefault(path.parent.name, []).extend(windows)
    # A digitally silent window and a full-scale one test the edges of the front end.
    groups["edge_cases"] = [
        np.zeros(TEACHER_WINDOW_SAMPLES, np.float32),
        np.clip(np.random.default_rng(0).standard_normal(TEACHER_WINDOW_SAMPLES), -1.0, 1.0).astype(
            np.float32
        ),
    ]

    report: dict[str, dict[str, dict[str, float | int]]] = {}
    float_port = YamnetPort.from_tflite(args.tflite).eval()
    for builtin_only, mode in ((False, "xnnpack"), (True, "builtin")):
        runtime = "tflite_builtin_kernels" if builtin_only else "tflite_default_xnnpack"
        teacher = TfliteTeacher(args.tflite, builtin_only=builtin_only)
        emulating = YamnetPort.from_tflite(args.tflite, tflite_hybrid=mode).eval()
        for port_name, port in ((f"port_hybrid_{mode}", emulating), ("port_float", float_port)):
            key = f"{port_name}_vs_{runtime}"
            report[key] = {
                group: compare(teacher, port, np.stack(windows))
                for group, windows in groups.items()
            }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    worst = min(
        stats["embedding_cosine_median"]
        for key, groups_stats in report.items()
        if key.startswith("port_hybrid_xnnpack")
        for stats in groups_stats.values()
    )
    if worst < args.min_cosine:
        print(f"FAIL: embedding cosine median {worst:.5f} < {args.min_cosine}", file=sys.stderr)
        return 1
    print(f"OK: XNNPACK-emulating port's embedding cosine median >= {worst:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
