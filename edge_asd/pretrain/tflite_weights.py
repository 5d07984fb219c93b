"""Read YAMNet's weights and front-end constants out of its TFLite flatbuffer.

The file is parsed with the `tflite` package into plain records (`TensorRecord`, `OpRecord`), and
`extract_yamnet_weights` walks those records in operator order. Keeping the walk independent of
the flatbuffer lets the tests feed it a graph they build themselves.

int8 tensors are dequantised as value = scale * (q - zero_point), per channel along the tensor's
quantised dimension when the file stores one scale per channel.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

_LOGGER = logging.getLogger(__name__)

ConvKind = Literal["conv", "depthwise"]


class TfliteWeightsError(Exception):
    """The .tflite file cannot be read, or its graph is not the YAMNet layout the port expects."""


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of the graph; `data` is None for activations (not stored in the file)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """numpy dtype name: 'float32', 'int8', 'int32', ..."""
    data: np.ndarray | None = None
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None
    quantized_dim: int = 0


@dataclass(frozen=True)
class OpRecord:
    """One operator, in execution order; `inputs` of -1 are optional inputs left out."""

    kind: str
    """Builtin operator name, e.g. 'CONV_2D'."""
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvLayer:
    """A convolution with BatchNorm folded in, in PyTorch layout."""

    name: str
    kind: ConvKind
    weight: np.ndarray
    """[out, in, kh, kw] for 'conv'; [channels, 1, kh, kw] for 'depthwise'."""
    bias: np.ndarray
    """[out]."""
    stride: int
    padding: str
    """'SAME' or 'VALID' (TensorFlow semantics)."""
    activation: str
    """'NONE', 'RELU' or 'RELU6'."""
    quantized: bool = False
    """Weights stored as int8: TFLite then runs a hybrid kernel that quantises the input."""


@dataclass(frozen=True)
class DenseLayer:
    """A fully connected layer in PyTorch layout: weight [out, in], bias [out]."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    quantized: bool = False
    """Weights stored as int8 (hybrid kernel in TFLite)."""


@dataclass(frozen=True)
class FrontEndConstants:
    """The log-mel front end exactly as the file computes it.

    frame (frame_samples, taken every hop_samples) * window, zero-padded by fft_pad_left on the
    left to fft_length, real and imaginary DFT rows, magnitude sqrt(re^2 + im^2), mel matrix,
    + log_offset, natural log.
    """

    frame_samples: int
    hop_samples: int
    window: np.ndarray
    """[frame_samples]."""
    fft_length: int
    fft_pad_left: int
    """Zeros before the windowed frame inside the fft_length DFT input."""
    dft_real: np.ndarray
    """[bins, fft_length]."""
    dft_imag: np.ndarray
    """[bins, fft_length]."""
    mel: np.ndarray
    """[mel_bands, bins]."""
    log_offset: float
    patch_frames: int
    """Frames the file's fixed input yields (96 for 15 600 samples)."""
    dft_quantized: bool = False
    """DFT matrices stored as int8 (hybrid FULLY_CONNECTED in TFLite)."""
    mel_quantized: bool = False


@dataclass(frozen=True)
class YamnetWeights:
    """Everything the PyTorch port needs, in operator order."""

    front_end: FrontEndConstants
    convs: list[ConvLayer]
    classifier: DenseLayer
    embedding_tensor: str
    """Name of the tensor the port's final embedding reproduces."""


_ACTIVATIONS = {0: "NONE", 1: "RELU", 3: "RELU6"}
_PADDINGS = {0: "SAME", 1: "VALID"}


def dequantize(record: TensorRecord) -> np.ndarray:
    """The tensor's stored values as float32, dequantised when it is int8/uint8/int16."""
    if record.data is None:
        raise TfliteWeightsError(f"tensor {record.name!r} has no stored data")
    data = record.data
    if data.dtype == np.float32:
        return data
    if record.scales is None or record.scales.size == 0:
        raise TfliteWeightsError(f"tensor {record.name!r} is {data.dtype} without a scale")
    scales = record.scales.astype(np.float32)
    zeros = (
        record.zero_points.astype(np.float32)
        if record.zero_points is not None and record.zero_points.size
        else np.zeros_like(scales)
    )
    if scales.size == 1:
        return (scales[0] * (data.astype(np.float32) - zeros.reshape(-1)[0])).astype(np.float32)
    axis = record.quantized_dim
    if data.shape[axis] != scales.size:
        raise TfliteWeightsError(
            f"tensor {record.name!r}: {scales.size} per-channel scales for dimension {axis} "
            f"of shape {data.shape}"
        )
    bshape = [1] * data.ndim
    bshape[axis] = scales.size
    if zeros.size == 1:
        zeros = np.full_like(scales, zeros.reshape(-1)[0])
    return (scales.reshape(bshape) * (data.astype(np.float32) - zeros.reshape(bshape))).astype(
        np.float32
    )


def read_graph(path: str | Path) -> tuple[list[OpRecord], list[TensorRecord]]:
    """Parse the first subgraph of a .tflite file into operator and tensor records."""
    import tflite  # the `train` extra; imported here so that the records work without it

    path = Path(path)
    try:
        buf = path.read_bytes()
        model = tflite.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
    except (OSError, ValueError, IndexError, struct.error) as exc:  # flatbuffers' bare errors
        raise TfliteWeightsError(f"{path}: cannot read as a TFLite model: {exc}") from exc
    if graph is None:
        raise TfliteWeightsError(f"{path}: no subgraph in the TFLite model")

    dtypes = {
        tflite.TensorType.FLOAT32: np.float32,
        tflite.TensorType.INT8: np.int8,
        tflite.TensorType.UINT8: np.uint8,
        tflite.TensorType.INT16: np.int16,
        tflite.TensorType.INT32: np.int32,
        tflite.TensorType.INT64: np.int64,
    }
    tensors: list[TensorRecord] = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        dtype = dtypes.get(t.Type())
        data = None
        buffer = model.Buffers(t.Buffer())
        if buffer is not None and buffer.DataLength() > 0:
            if dtype is None:
                raise TfliteWeightsError(f"{path}: tensor {i} has unsupported type {t.Type()}")
            raw = buffer.DataAsNumpy().tobytes()
            data = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        q = t.Quantization()
        scales = zeros = None
        qdim = 0
        if q is not None and q.ScaleLength() > 0:
            scales = q.ScaleAsNumpy().astype(np.float32)
            zeros = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else None
            qdim = int(q.QuantizedDimension())
        tensors.append(
            TensorRecord(
                name=t.Name().decode(),
                shape=shape,
                dtype=np.dtype(dtype).name if dtype is not None else str(t.Type()),
                data=data,
                scales=scales,
                zero_points=zeros,
                quantized_dim=qdim,
            )
        )

    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    ops: list[OpRecord] = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        kind = names.get(builtin, str(builtin))
        ops.append(
            OpRecord(
                kind=kind,
                inputs=tuple(int(i) for i in op.InputsAsNumpy()),
                outputs=tuple(int(i) for i in op.OutputsAsNumpy()),
                options=_op_options(tflite, kind, op),
            )
        )
    _LOGGER.debug("%s: %d operators, %d tensors", path, len(ops), len(tensors))
    return ops, tensors


def _op_options(tflite: Any, kind: str, op: Any) -> dict[str, Any]:
    """The builtin options the port depends on, as plain values."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        out = {
            "padding": _PADDINGS[opts.Padding()],
            "stride_h": int(opts.StrideH()),
            "stride_w": int(opts.StrideW()),
            "activation": _ACTIVATIONS.get(opts.FusedActivationFunction(), "UNSUPPORTED"),
            "dilation_h": int(opts.DilationHFactor()),
            "dilation_w": int(opts.DilationWFactor()),
        }
        if kind == "DEPTHWISE_CONV_2D":
            out["depth_multiplier"] = int(opts.DepthMultiplier())
        return out
    if kind == "FULLY_CONNECTED":
        opts = tflite.FullyConnectedOptions()
        opts.Init(table.Bytes, table.Pos)
        return {"activation": _ACTIVATIONS.get(opts.FusedActivationFunction(), "UNSUPPORTED")}
    return {}


class _Graph:
    """Constant lookup over records, following DEQUANTIZE ops to their int8 sources."""

    def __init__(self, ops: list[OpRecord], tensors: list[TensorRecord]) -> None:
        self.ops = ops
        self.tensors = tensors
        self.dequantized: dict[int, int] = {}
        for op in ops:
            if op.kind == "DEQUANTIZE":
                self.dequantized[op.outputs[0]] = op.inputs[0]

    def is_const(self, index: int) -> bool:
        index = self.dequantized.get(index, index)
        return self.tensors[index].data is not None

    def const(self, index: int) -> np.ndarray:
        source = self.dequantized.get(index, index)
        record = self.tensors[source]
        if record.data is None:
            raise TfliteWeightsError(f"tensor {index} ({record.name!r}) is not a constant")
        if record.data.dtype.kind in "iu" and record.scales is None:
            return record.data  # integer shapes/indices, not quantised weights
        return dequantize(record)

    def name(self, index: int) -> str:
        return self.tensors[index].name

    def is_quantized(self, index: int) -> bool:
        """Stored as integers with a scale: TFLite runs such an op as a hybrid kernel."""
        record = self.tensors[self.dequantized.get(index, index)]
        return (
            record.data is not None and record.data.dtype.kind in "iu" and record.scales is not None
        )

    def is_hybrid(self, index: int) -> bool:
        """An int8 weight fed straight to the op (no DEQUANTIZE): activations get quantised."""
        return index not in self.dequantized and self.is_quantized(index)


def _only(ops: list[OpRecord], kind: str, what: str) -> OpRecord:
    found = [op for op in ops if op.kind == kind]
    if len(found) != 1:
        raise TfliteWeightsError(f"expected one {kind} op ({what}), found {len(found)}")
    return found[0]


def _front_end(graph: _Graph, ops: list[OpRecord]) -> FrontEndConstants:
    """Recover framing, window, DFT, mel and log offset from the ops before the first conv."""
    reshape_rows = next(
        (
            op
            for op in ops
            if op.kind == "RESHAPE"
            and graph.is_const(op.inputs[1])
            and graph.const(op.inputs[1]).size == 2
        ),
        None,
    )
    gather = next((op for op in ops if op.kind == "GATHER"), None)
    if reshape_rows is None or gather is None:
        raise TfliteWeightsError("no RESHAPE + GATHER framing found before the first conv")
    sub_frame = int(graph.const(reshape_rows.inputs[1])[1])
    indices = graph.const(gather.inputs[1]).astype(np.int64)
    if indices.ndim != 2 or indices.shape[0] < 2:
        raise TfliteWeightsError(f"framing GATHER indices have shape {indices.shape}")
    if not np.all(np.diff(indices, axis=1) == 1):
        raise TfliteWeightsError("framing GATHER indices are not contiguous sub-frames")
    hop_rows = np.diff(indices[:, 0])
    if not np.all(hop_rows == hop_rows[0]):
        raise TfliteWeightsError("framing GATHER indices do not advance by a constant hop")
    frame_samples = sub_frame * indices.shape[1]
    hop_samples = sub_frame * int(hop_rows[0])

    mul_window = next(
        op
        for op in ops
        if op.kind == "MUL" and len(op.inputs) == 2 and graph.is_const(op.inputs[1])
    )
    window = graph.const(mul_window.inputs[1]).reshape(-1).astype(np.float32)
    if window.size != frame_samples:
        raise TfliteWeightsError(f"window has {window.size} taps, frames have {frame_samples}")
    pad = _only(ops, "PAD", "zero-padding of frames to the DFT length")
    paddings = graph.const(pad.inputs[1]).reshape(-1, 2)
    pad_left, pad_right = int(paddings[-1, 0]), int(paddings[-1, 1])
    fft_length = frame_samples + pad_left + pad_right

    dense = [op for op in ops if op.kind == "FULLY_CONNECTED"]
    if len(dense) < 3:
        raise TfliteWeightsError(f"expected DFT real, DFT imag and mel FC ops, found {len(dense)}")
    dft_real = graph.const(dense[0].inputs[1])
    dft_imag = graph.const(dense[1].inputs[1])
    for dft, part in ((dft_real, "real"), (dft_imag, "imaginary")):
        if dft.ndim != 2 or dft.shape[1] != fft_length:
            raise TfliteWeightsError(
                f"DFT ({part}) matrix has shape {dft.shape}, expected [bins, {fft_length}]"
            )
    mel_op = dense[2]
    mel = graph.const(mel_op.inputs[1])
    if mel.ndim != 2 or mel.shape[1] != dft_real.shape[0]:
        raise TfliteWeightsError(f"mel matrix has shape {mel.shape}, DFT has {dft_real.shape}")
    if len(mel_op.inputs) < 3 or mel_op.inputs[2] < 0:
        raise TfliteWeightsError("mel FC has no bias: cannot find the log offset")
    offsets = graph.const(mel_op.inputs[2]).reshape(-1)
    if not np.all(offsets == offsets[0]):
        raise TfliteWeightsError("mel FC bias (log offset) is not one constant")
    _only(ops, "LOG", "log of the mel energies")
    patch_frames = int(indices.shape[0])
    return FrontEndConstants(
        frame_samples=frame_samples,
        hop_samples=hop_samples,
        window=window,
        fft_length=fft_length,
        fft_pad_left=pad_left,
        dft_real=dft_real.astype(np.float32),
        dft_imag=dft_imag.astype(np.float32),
        mel=mel.astype(np.float32),
        log_offset=float(offsets[0]),
        patch_frames=patch_frames,
        dft_quantized=graph.is_hybrid(dense[0].inputs[1]) and graph.is_hybrid(dense[1].inputs[1]),
        mel_quantized=graph.is_hybrid(mel_op.inputs[1]),
    )


def _conv_layer(graph: _Graph, op: OpRecord) -> ConvLayer:
    opts = op.options
    if opts.get("stride_h") != opts.get("stride_w"):
        raise TfliteWeightsError(f"{op.kind} {graph.name(op.outputs[0])!r}: unequal strides")
    if opts.get("dilation_h", 1) != 1 or opts.get("dilation_w", 1) != 1:
        raise TfliteWeightsError(f"{op.kind} {graph.name(op.outputs[0])!r}: dilation unsupported")
    if opts.get("activation") not in ("NONE", "RELU", "RELU6"):
        raise TfliteWeightsError(f"{op.kind}: unsupported activation {opts.get('activation')}")
    weight = graph.const(op.inputs[1])
    if weight.ndim != 4:
        raise TfliteWeightsError(f"{op.kind} weight has shape {weight.shape}")
    if op.kind == "CONV_2D":
        kind: ConvKind = "conv"
        torch_weight = weight.transpose(0, 3, 1, 2)  # [O, kh, kw, I] -> [O, I, kh, kw]
    else:
        kind = "depthwise"
        if opts.get("depth_multiplier", 1) != 1:
            raise TfliteWeightsError("depthwise conv with depth_multiplier != 1 unsupported")
        torch_weight = weight.transpose(3, 0, 1, 2)  # [1, kh, kw, C] -> [C, 1, kh, kw]
    out_channels = torch_weight.shape[0]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        bias = graph.const(op.inputs[2]).reshape(-1)
    else:
        bias = np.zeros(out_channels, np.float32)
    if bias.size != out_channels:
        raise TfliteWeightsError(f"{op.kind}: bias of {bias.size} for {out_channels} outputs")
    return ConvLayer(
        name=graph.name(op.inputs[1]),
        kind=kind,
        weight=np.ascontiguousarray(torch_weight, dtype=np.float32),
        bias=bias.astype(np.float32),
        stride=int(opts["stride_h"]),
        padding=str(opts["padding"]),
        activation=str(opts["activation"]),
        quantized=graph.is_hybrid(op.inputs[1]),
    )


def extract_yamnet_weights(ops: list[OpRecord], tensors: list[TensorRecord]) -> YamnetWeights:
    """Walk the operators in order: front end, convolutions, global mean, classifier."""
    graph = _Graph(ops, tensors)
    first_conv = next(
        (i for i, op in enumerate(ops) if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")), None
    )
    if first_conv is None:
        raise TfliteWeightsError("no convolution in the graph")
    front_end = _front_end(graph, ops[:first_conv])
    convs = [_conv_layer(graph, op) for op in ops if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    mean = _only(ops, "MEAN", "global average pooling")
    tail = ops[ops.index(mean) + 1 :]
    classifier_ops = [op for op in tail if op.kind == "FULLY_CONNECTED"]
    if len(classifier_ops) != 1:
        raise TfliteWeightsError(
            f"expected one FULLY_CONNECTED after the MEAN, found {len(classifier_ops)}"
        )
    fc = classifier_ops[0]
    if fc.inputs[0] != mean.outputs[0]:
        raise TfliteWeightsError("the classifier does not read the pooled embedding")
    weight = graph.const(fc.inputs[1])
    bias = (
        graph.const(fc.inputs[2]).reshape(-1)
        if len(fc.inputs) > 2 and fc.inputs[2] >= 0
        else np.zeros(weight.shape[0], np.float32)
    )
    classifier = DenseLayer(
        name=graph.name(fc.inputs[1]),
        weight=weight.astype(np.float32),
        bias=bias,
        quantized=graph.is_hybrid(fc.inputs[1]),
    )
    return YamnetWeights(
        front_end=front_end,
        convs=convs,
        classifier=classifier,
        embedding_tensor=graph.name(mean.outputs[0]),
    )


def read_yamnet_weights(path: str | Path) -> YamnetWeights:
    """Parse `path` and extract the port's weights; errors name the file."""
    ops, tensors = read_graph(path)
    try:
        weights = extract_yamnet_weights(ops, tensors)
    except TfliteWeightsError as exc:
        raise TfliteWeightsError(f"{path}: {exc}") from exc
    _LOGGER.info(
        "%s: front end %d/%d samples, %d convs, classifier %s",
        path,
        weights.front_end.frame_samples,
        weights.front_end.hop_samples,
        len(weights.convs),
        weights.classifier.weight.shape,
    )
    return weights
