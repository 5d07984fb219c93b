"""Build the log-mel statistics encoder (ONNX) from code, and its numpy reference.

The model follows the encoder contract (docs/architecture.md): input `waveform` float32
[batch, samples] at 16 kHz, output `embedding` float32 [batch, 2 * N_MELS] = per-band mean and
standard deviation of the log-mel spectrogram over the frames of the window.

The front end frames the waveform and takes the real DFT in ONE `Conv` (stride = hop, kernels =
Hann-windowed cosine and sine DFT bases), because the ONNX STFT op is several times slower in
onnxruntime. `frontend_nodes` builds just that subgraph so that a trained encoder's export can
reuse it. Needs the `onnx` package (build time only; the runtime never imports this module).

`python -m edge_asd_dev.logmel_model OUT.onnx` writes the model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from edge_asd.constants import DEFAULT_WINDOW_SECONDS, SAMPLE_RATE_HZ, seconds_to_samples
from edge_asd.model.contract import (
    MODEL_INPUT_NAME,
    MODEL_OUTPUT_NAME,
    contract_metadata,
)

_LOGGER = logging.getLogger(__name__)

MODEL_NAME: Final = "logmel-stats"
MODEL_VERSION: Final = "1"

FRAME_SAMPLES: Final = 400
"""25 ms analysis window at 16 kHz."""
HOP_SAMPLES: Final = 160
"""10 ms hop at 16 kHz."""
N_FFT: Final = 512
"""DFT length; frames are zero-padded from FRAME_SAMPLES."""
N_FREQ_BINS: Final = N_FFT // 2 + 1
N_MELS: Final = 64
F_MIN_HZ: Final = 60.0
F_MAX_HZ: Final = 7800.0
LOG_OFFSET: Final = 1e-6
"""Added to mel power before the log so that digital silence stays finite."""
EMBEDDING_DIM: Final = 2 * N_MELS
"""Per-band mean, then per-band standard deviation."""
WINDOW_SAMPLES: Final = seconds_to_samples(DEFAULT_WINDOW_SECONDS)

OPSET: Final = 17
"""ReduceMean takes `axes` as an attribute up to opset 17; the front end works from opset 13."""
IR_VERSION: Final = 8
"""Pinned (not onnx's latest) so that onnxruntime >= 1.17 loads the file and rebuilds are
byte-identical whatever onnx version builds them."""

# Axes of the front end's output, log-mel [batch, band, frame].
_BAND_AXIS: Final = 1
_CONV_CHANNEL_AXIS: Final = 1
"""Conv wants [batch, channel, samples]; the waveform gets a channel axis of 1."""
_FRAME_AXIS: Final = 2

_HTK_MEL_SCALE: Final = 2595.0
_HTK_MEL_BREAK_HZ: Final = 700.0


def hz_to_mel(hz: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """HTK mel scale."""
    return np.asarray(_HTK_MEL_SCALE * np.log10(1.0 + np.asarray(hz) / _HTK_MEL_BREAK_HZ))


def mel_to_hz(mel: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """Inverse of `hz_to_mel`."""
    return np.asarray(_HTK_MEL_BREAK_HZ * (10.0 ** (np.asarray(mel) / _HTK_MEL_SCALE) - 1.0))


def mel_filterbank() -> NDArray[np.float64]:
    """Triangular HTK mel filters, peak weight 1 (no area normalisation): [N_MELS, N_FREQ_BINS]."""
    bin_hz = np.arange(N_FREQ_BINS) * (SAMPLE_RATE_HZ / N_FFT)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(F_MIN_HZ), hz_to_mel(F_MAX_HZ), N_MELS + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    # The lowest bands are narrower than one DFT bin; an empty band would be constant log(offset).
    if not np.all(filters.max(axis=1) > 0.0):
        raise AssertionError("a mel band contains no DFT bin; check F_MIN_HZ / N_FFT / N_MELS")
    return filters


def analysis_window() -> NDArray[np.float64]:
    """Periodic Hann window of FRAME_SAMPLES (as torch.hann_window / scipy 'hann', sym=False)."""
    n = np.arange(FRAME_SAMPLES)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / FRAME_SAMPLES)


def dft_kernels() -> NDArray[np.float64]:
    """Hann-windowed real-DFT bases as Conv kernels: [2 * N_FREQ_BINS, 1, FRAME_SAMPLES].

    Rows 0..N_FREQ_BINS-1 give the real parts, the rest the imaginary parts (sign irrelevant:
    only the power is used).
    """
    n = np.arange(FRAME_SAMPLES)[None, :]
    k = np.arange(N_FREQ_BINS)[:, None]
    phase = 2.0 * np.pi * k * n / N_FFT
    window = analysis_window()[None, :]
    bases = np.concatenate([np.cos(phase) * window, np.sin(phase) * window], axis=0)
    return bases[:, None, :]


def n_frames(samples: int) -> int:
    """Frames in a window of `samples` (no padding: only whole frames)."""
    if samples < FRAME_SAMPLES:
        raise ValueError(f"a window needs at least {FRAME_SAMPLES} samples, got {samples}")
    return 1 + (samples - FRAME_SAMPLES) // HOP_SAMPLES


def logmel_numpy(waveform: NDArray[np.floating]) -> NDArray[np.float32]:
    """Reference front end (float64 inside): waveform [samples] -> log-mel [frames, N_MELS]."""
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"logmel_numpy expects one waveform [samples], got shape {x.shape}")
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_SAMPLES)[::HOP_SAMPLES]
    spectrum = np.fft.rfft(frames * analysis_window(), n=N_FFT, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ mel_filterbank().T
    return np.log(mel + LOG_OFFSET).astype(np.float32)


def embedding_numpy(waveform: NDArray[np.floating]) -> NDArray[np.float32]:
    """Reference embedding: [samples] -> [EMBEDDING_DIM] (band means, then population stds)."""
    logmel = logmel_numpy(waveform).astype(np.float64)
    stats = np.concatenate([logmel.mean(axis=0), logmel.std(axis=0)])
    return stats.astype(np.float32)


def frontend_nodes(
    input_name: str, output_name: str, *, prefix: str = "frontend/"
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers: waveform [B, S] float32 -> log-mel [B, N_MELS, frames].

    Every node and initializer name starts with `prefix`. Valid from opset 13.
    """
    kernels = numpy_helper.from_array(dft_kernels().astype(np.float32), prefix + "dft_kernels")
    # mel(re^2 + im^2) == [mel, mel] @ [re^2; im^2]: one MatMul on the squared Conv output, no
    # Slice/Add to pair up real and imaginary parts.
    mel = mel_filterbank()
    mel_pair = numpy_helper.from_array(
        np.concatenate([mel, mel], axis=1).astype(np.float32), prefix + "mel_filters"
    )
    channel_axis = numpy_helper.from_array(
        np.array([_CONV_CHANNEL_AXIS], dtype=np.int64), prefix + "channel_axis"
    )
    offset = numpy_helper.from_array(np.array(LOG_OFFSET, dtype=np.float32), prefix + "log_offset")

    def name(x: str) -> str:
        return prefix + x

    nodes = [
        helper.make_node(
            "Unsqueeze", [input_name, channel_axis.name], [name("mono")], name=name("unsqueeze")
        ),
        helper.make_node(
            "Conv",
            [name("mono"), kernels.name],
            [name("dft")],
            name=name("dft_conv"),
            kernel_shape=[FRAME_SAMPLES],
            strides=[HOP_SAMPLES],
        ),
        helper.make_node("Mul", [name("dft"), name("dft")], [name("dft_sq")], name=name("square")),
        helper.make_node(
            "MatMul", [mel_pair.name, name("dft_sq")], [name("mel")], name=name("mel_matmul")
        ),
        helper.make_node("Add", [name("mel"), offset.name], [name("mel_offset")], name=name("add")),
        helper.make_node("Log", [name("mel_offset")], [output_name], name=name("log")),
    ]
    return nodes, [kernels, mel_pair, channel_axis, offset]


def build_model(window_samples: int = WINDOW_SAMPLES) -> onnx.ModelProto:
    """The log-mel statistics encoder for windows of `window_samples` at SAMPLE_RATE_HZ."""
    n_frames(window_samples)  # rejects windows shorter than one frame
    nodes, initializers = frontend_nodes(MODEL_INPUT_NAME, "logmel")
    nodes += [
        helper.make_node("ReduceMean", ["logmel"], ["band_mean"], axes=[_FRAME_AXIS], keepdims=1),
        helper.make_node("Sub", ["logmel", "band_mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["centred_sq"]),
        helper.make_node(
            "ReduceMean", ["centred_sq"], ["band_var"], axes=[_FRAME_AXIS], keepdims=1
        ),
        helper.make_node("Sqrt", ["band_var"], ["band_std"]),
        helper.make_node("Concat", ["band_mean", "band_std"], ["stats"], axis=_BAND_AXIS),
        helper.make_node("Squeeze", ["stats", "frame_axis"], [MODEL_OUTPUT_NAME]),
    ]
    initializers.append(
        numpy_helper.from_array(np.array([_FRAME_AXIS], dtype=np.int64), "frame_axis")
    )
    graph = helper.make_graph(
        nodes,
        "logmel_stats",
        [
            helper.make_tensor_value_info(
                MODEL_INPUT_NAME, TensorProto.FLOAT, ["batch", window_samples]
            )
        ],
        [
            helper.make_tensor_value_info(
                MODEL_OUTPUT_NAME, TensorProto.FLOAT, ["batch", EMBEDDING_DIM]
            )
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="edge_asd_dev.logmel_model",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    model.doc_string = (
        f"{N_MELS}-band log-mel (Hann {FRAME_SAMPLES}, hop {HOP_SAMPLES}, n_fft {N_FFT}, "
        f"{F_MIN_HZ:g}-{F_MAX_HZ:g} Hz HTK) mean and std over the window"
    )
    helper.set_model_props(
        model,
        contract_metadata(MODEL_NAME, MODEL_VERSION, window_samples, EMBEDDING_DIM),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(path: Path, window_samples: int = WINDOW_SAMPLES) -> None:
    """Build and write the model to `path` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_model(window_samples), str(path))
    _LOGGER.info("wrote %s (%d-sample windows)", path, window_samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_asd_dev.logmel_model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="ONNX file to write")
    parser.add_argument(
        "--window-samples",
        type=int,
        default=WINDOW_SAMPLES,
        help=f"samples per window at {SAMPLE_RATE_HZ} Hz (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.window_samples < FRAME_SAMPLES:
        parser.error(f"--window-samples must be at least {FRAME_SAMPLES}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    save_model(args.out, args.window_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
