"""Export the un-fine-tuned YAMNet port to fp32 + int8 ONNX and measure parity, speed and size.

    python benchmarks/export_parity.py --tflite ../shared/models/yamnet.tflite \
        --audio ../shared/data --out /tmp/yamnet-port --layers 6 final 13 12 10 8 4 \
        --install 6

Calibration uses windows from every other recording, parity the windows of the others (both
include machine sound and noise). For each embedding layer: fp32 and int8 files, int8/fp32
embedding cosine, ms per 1 s window on 1 thread (batch 1), sizes. With --install LAYER, that
layer's int8 file is copied to edge_asd/models/yamnet-port-int8.onnx if it is <= 5 MB.

    python benchmarks/export_parity.py --tflite ../shared/models/yamnet.tflite \
        --audio ../shared/data --probe

only runs the layer probe instead: which layer's embedding separates normal machine sound
from synthetic faults (float port, 1-NN cosine distance, ROC AUC), clean and in factory noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.pipeline import embed_recording
from edge_asd.detection.scoring import ClipScorer
from edge_asd.model.contract import ModelInfo
from edge_asd.pretrain.export import (
    BYTES_PER_MB,
    ParityError,
    export_int8,
    time_per_window_ms,
    windows_from_signals,
)
from edge_asd.pretrain.yamnet import YamnetPort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verify_yamnet_port import load_wav

_LOGGER = logging.getLogger("export_parity")

PROBE_BANK_FILES = 30
PROBE_HOP_SAMPLES = SAMPLE_RATE_HZ // 2
PROBE_FAULT_LEVEL_DB = -15.0
PROBE_NOISE_SNR_DB = 10.0
PROBE_NOISE_FILE = "factory2.wav"
PROBE_LAYERS = (6, 8, 10, 12, 13, 14)
PROBE_CACHED_BATCHES = 64
"""Batches of all-layer embeddings kept: every batch of the clip being scored."""

MODEL_NAME = "yamnet-port"
MODEL_VERSION = "1.0.0"
"""Suffixed with the embedding layer: "1.0.0-layer6"."""
INSTALL_PATH = Path(__file__).resolve().parents[1] / "edge_asd" / "models" / "yamnet-port-int8.onnx"
MAX_INSTALL_MB = 5.0
WINDOWS_PER_FILE = 4


def front_end_ms(port: YamnetPort, out_dir: Path) -> dict[str, float]:
    """Time of the log-mel front end alone, exported the same way (fp32, 1 thread)."""

    class FrontEndOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.front_end = port.front_end

        def forward(self, waveform: torch.Tensor) -> torch.Tensor:
            return self.front_end(waveform)

    path = out_dir / "front-end.onnx"
    torch.onnx.export(
        FrontEndOnly().eval(),
        (torch.zeros(1, SAMPLE_RATE_HZ),),
        str(path),
        input_names=["waveform"],
        output_names=["embedding"],
        opset_version=17,
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return time_per_window_ms(session, (0.1 * rng.standard_normal(SAMPLE_RATE_HZ)))


class _PortLayers:
    """Every layer's embedding of the float port for a batch of windows. The port runs once per
    batch: the other layers' encoders find the batch in the cache, as each layer is scored
    through its own pipeline."""

    def __init__(self, port: YamnetPort) -> None:
        self.port = port
        self._cache: OrderedDict[bytes, list[np.ndarray]] = OrderedDict()

    def layers(self, windows: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        key = hashlib.blake2b(batch.tobytes(), digest_size=16).digest()
        if key not in self._cache:
            with torch.no_grad():
                out = self.port(torch.from_numpy(batch))
            assert out.layers is not None
            self._cache[key] = [t.numpy() for t in out.layers]
            while len(self._cache) > PROBE_CACHED_BATCHES:
                self._cache.popitem(last=False)
        return self._cache[key]

    def encoders(self) -> list[_LayerEncoder]:
        """One `EmbeddingModel` per layer of the port."""
        count = len(self.layers(np.zeros((1, SAMPLE_RATE_HZ), dtype=np.float32)))
        return [_LayerEncoder(self, index) for index in range(count)]


class _LayerEncoder:
    """One layer of the port as the pipeline's `EmbeddingModel`."""

    def __init__(self, layers: _PortLayers, index: int) -> None:
        self._layers = layers
        self._index = index
        self.info = ModelInfo(
            path="<torch>",
            sha256="",
            name=f"{MODEL_NAME}-layer{index + 1}",
            version="probe",
            sample_rate=SAMPLE_RATE_HZ,
            window_samples=SAMPLE_RATE_HZ,
            embedding_dim=0,
        )

    def embed(self, windows: np.ndarray) -> np.ndarray:
        return self._layers.layers(windows)[self._index]


def layer_probe(tflite: Path, audio: Path) -> dict[str, list[float]]:
    """Mean ROC AUC over the synth faults per layer, clean and with factory noise.

    Bank: 1 s windows (0.5 s hop) of the first 30 machine recordings; test: the others, as is
    and with each fault at -15 dB; clip score = mean 1-NN cosine distance of its windows (the
    pipeline's raw scoring, one pipeline per layer).
    """
    from edge_asd.offline.metrics import roc_auc
    from edge_asd_dev.synth import FAULTS, apply_fault, mix_at_snr

    port = YamnetPort.from_tflite(tflite, truncate=False).eval()
    machine = sorted((audio / "machine_normal_dev").glob("*.wav"))
    noise = load_wav(audio / "noise_dev" / PROBE_NOISE_FILE)
    rng = np.random.default_rng(0)
    encoders = _PortLayers(port).encoders()

    # File by file, so the port runs once per file for all layers.
    per_file = [
        [embed_recording(e, load_wav(p), SAMPLE_RATE_HZ, PROBE_HOP_SAMPLES) for e in encoders]
        for p in machine[:PROBE_BANK_FILES]
    ]
    scorers = [
        ClipScorer(
            encoder,
            MemoryBank(np.concatenate([f[i] for f in per_file]), k=1),
            method="raw",
            window_samples=SAMPLE_RATE_HZ,
            hop_samples=PROBE_HOP_SAMPLES,
        )
        for i, encoder in enumerate(encoders)
    ]

    def score(x: np.ndarray) -> np.ndarray:
        return np.array([scorer.score_clip(x).clip_score for scorer in scorers])

    result: dict[str, list[float]] = {}
    for condition, snr in (("clean", None), ("factory_noise_10dB", PROBE_NOISE_SNR_DB)):
        normal, faulty = [], {name: [] for name in FAULTS}
        for j, path in enumerate(machine[PROBE_BANK_FILES:]):
            x = load_wav(path).astype(np.float64)
            start = int(rng.integers(0, noise.size - x.size))
            n = noise[start : start + x.size]

            def noisy(y: np.ndarray, n: np.ndarray = n, snr: float | None = snr) -> np.ndarray:
                return np.asarray(y if snr is None else mix_at_snr(y, n, snr), np.float32)

            normal.append(score(noisy(x)))
            for name in FAULTS:
                y = apply_fault(
                    x, name, rng=np.random.default_rng(j), level_db=PROBE_FAULT_LEVEL_DB
                )
                faulty[name].append(score(noisy(y)))
        normal_scores = np.array(normal)
        aucs = []
        for name in FAULTS:
            fault_scores = np.array(faulty[name])
            labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(fault_scores))]
            aucs.append(
                [
                    roc_auc(labels, np.r_[normal_scores[:, i], fault_scores[:, i]])
                    for i in range(normal_scores.shape[1])
                ]
            )
        result[condition] = [float(v) for v in np.mean(aucs, axis=0)]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True, help="folder searched for *.wav")
    parser.add_argument("--out", type=Path, help="output folder (required unless --probe)")
    parser.add_argument("--probe", action="store_true", help="run the layer probe only")
    parser.add_argument("--layers", nargs="+", default=["final"], help="'final' or 1..14")
    parser.add_argument("--install", help="layer whose int8 file goes to edge_asd/models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    if args.probe:
        probe = layer_probe(args.tflite, args.audio)
        print("| condition | " + " | ".join(f"layer {i}" for i in PROBE_LAYERS) + " |")
        print("|---|" + "---|" * len(PROBE_LAYERS))
        for condition, aucs in probe.items():
            cells = " | ".join(f"{aucs[i - 1]:.3f}" for i in PROBE_LAYERS)
            print(f"| {condition} | {cells} |")
        return 0
    if args.out is None:
        parser.error("--out is required unless --probe")
    paths = sorted(args.audio.rglob("*.wav"))
    if not paths:
        print(f"{args.audio}: no .wav files", file=sys.stderr)
        return 2
    signals = [load_wav(p) for p in paths]
    calibration = windows_from_signals(signals[::2], SAMPLE_RATE_HZ, WINDOWS_PER_FILE)
    parity = windows_from_signals(signals[1::2], SAMPLE_RATE_HZ, WINDOWS_PER_FILE)
    _LOGGER.info("%d calibration, %d parity windows", len(calibration), len(parity))

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, object]] = {}
    status = 0
    for layer_arg in args.layers:
        layer: int | str = layer_arg if layer_arg == "final" else int(layer_arg)
        port = YamnetPort.from_tflite(args.tflite, embedding_layer=layer)  # type: ignore[arg-type]
        out_dir = args.out / f"layer-{layer_arg}"
        try:
            result = export_int8(
                port,
                out_dir,
                name=MODEL_NAME,
                version=f"{MODEL_VERSION}-layer{layer_arg}",
                calibration_windows=calibration,
                parity_windows=parity,
            )
            report: dict[str, object] = dict(result.report)
        except ParityError as exc:
            report = dict(exc.report)
            report["failed"] = str(exc)
            status = 1
        if layer_arg == args.layers[0]:
            report["front_end_ms"] = front_end_ms(port, out_dir)
        results[layer_arg] = report
        print(json.dumps({layer_arg: report}, indent=2), flush=True)

    (args.out / "export-parity.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| layer | D | cosine median | p5 | min | fp32 ms p50 (min) | int8 ms p50 (min) "
        "| fp32 MB | int8 MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for layer_arg, r in results.items():
        print(
            f"| {layer_arg} | {r['embedding_dim']} | {r['cosine_median']:.4f} | "
            f"{r['cosine_p5']:.4f} | {r['cosine_min']:.4f} | "
            f"{r['fp32_ms_p50']:.2f} ({r['fp32_ms_min']:.2f}) | "
            f"{r['int8_ms_p50']:.2f} ({r['int8_ms_min']:.2f}) | "
            f"{r['fp32_size_mb']:.2f} | {r['int8_size_mb']:.2f} |"
        )

    if args.install:
        report = results.get(args.install)
        if report is None or "failed" in report:
            print(f"not installing layer {args.install}: not exported or parity failed")
            return 1
        source = Path(str(report["int8_path"]))
        size_mb = source.stat().st_size / BYTES_PER_MB
        if size_mb > MAX_INSTALL_MB:
            print(f"not installing {source}: {size_mb:.2f} MB > {MAX_INSTALL_MB} MB")
            return 1
        INSTALL_PATH.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, INSTALL_PATH)
        print(f"installed {source} -> {INSTALL_PATH} ({size_mb:.2f} MB)")
    return status


if __name__ == "__main__":
    sys.exit(main())
