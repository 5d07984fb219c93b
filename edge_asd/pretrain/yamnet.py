"""A PyTorch port of YAMNet (log-mel front end + MobileNet-v1 body) that implements `Student`.

`YamnetPort.from_tflite` copies every weight and front-end constant out of the TFLite file, so
the port starts as the teacher itself. Differences from the file, all deliberate:
- framing adapts to the input length, so any input of at least `window_samples` works (the
  file takes exactly 15 600 samples = 96 frames; a 16 000-sample window gives 98 frames);
- the DFT rows the mel matrix never reads (all-zero mel columns) are dropped, and the
  windowed DFT is folded about the frame centre: no output changes (1e-6), the front end
  costs half the multiplications;
- weights the file stores as int8 are dequantised to float32 and activations stay float. The
  TFLite runtime instead quantises the inputs of its int8-weight ("hybrid") ops on the fly;
  `tflite_hybrid="xnnpack"` (asymmetric, per row / per pixel) or `"builtin"` (symmetric, per
  row / per batch item) reproduces that, with a straight-through gradient, for verification or
  for training against the teacher's exact numbers.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)
from torch import Tensor, nn

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.pretrain.student import StudentOutput
from edge_asd.pretrain.tflite_weights import (
    ConvLayer,
    FrontEndConstants,
    TfliteWeightsError,
    YamnetWeights,
    read_yamnet_weights,
)

_LOGGER = logging.getLogger(__name__)

FRAME_SAMPLES = 400
"""25 ms at 16 kHz."""
HOP_SAMPLES = 160
"""10 ms at 16 kHz."""
FFT_LENGTH = 512
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
"""Added to mel energies before the log (YAMNet's value)."""
PATCH_FRAMES = 96
TEACHER_WINDOW_SAMPLES = FRAME_SAMPLES + (PATCH_FRAMES - 1) * HOP_SAMPLES
"""15 600 samples = 0.975 s: the shortest input, the TFLite model's fixed input."""
NUM_CLASSES = 521
CONV_KERNEL = 3
HTK_MEL_BREAK_HZ = 700.0
HTK_MEL_HIGH_Q = 1127.0

# MobileNet-v1 as YAMNet configures it: (pointwise output channels, depthwise stride) per
# separable block after the first full conv.
YAMNET_FIRST_CHANNELS = 32
YAMNET_FIRST_STRIDE = 2
YAMNET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)

EQUALIZE_LAYER_STRENGTH = 1.0
"""Share of a layer output's channel range moved into the weights (free: per-channel both sides)."""
EQUALIZE_DEPTHWISE_STRENGTH = 0.5
"""Same for depthwise outputs, whose pointwise consumers pay for it in weight precision."""
EQUALIZE_MAX_FACTOR = 100.0

SYMMETRY_TOLERANCE = 1e-6
"""Relative: DFT rows this close to (anti)symmetric are folded about the frame centre."""

INT8_WIDE_LAST_LAYERS = 3
"""Layers at the end of the network whose activations get 16 bits when the final layer is
the embedding."""

INT8_MIN = -128
INT8_MAX = 127
INT8_ASYMMETRIC_STEPS = 255
INT8_SYMMETRIC_MAX = 127

EmbeddingLayer = int | Literal["final"]
HybridMode = Literal["none", "xnnpack", "builtin"]
HYBRID_MODES: tuple[str, ...] = ("none", "xnnpack", "builtin")


def fake_quantize_dynamic(x: Tensor, dims: tuple[int, ...], mode: HybridMode) -> Tensor:
    """Quantise-dequantise `x` to int8 with ranges taken over `dims`, as TFLite hybrid kernels.

    'xnnpack': asymmetric with a zero point, range [min(x, 0), max(x, 0)]; 'builtin':
    symmetric, scale max|x| / 127. The gradient passes straight through.
    """
    if mode == "none":
        return x
    with torch.no_grad():
        if mode == "xnnpack":
            lo = torch.clamp(torch.amin(x, dim=dims, keepdim=True), max=0.0)
            hi = torch.clamp(torch.amax(x, dim=dims, keepdim=True), min=0.0)
            scale = (hi - lo) / INT8_ASYMMETRIC_STEPS
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero = torch.round(INT8_MIN - lo / scale)
            q = torch.clamp(torch.round(x / scale) + zero, INT8_MIN, INT8_MAX)
            xq = (q - zero) * scale
        elif mode == "builtin":
            peak = torch.amax(torch.abs(x), dim=dims, keepdim=True)
            scale = torch.where(peak > 0, peak / INT8_SYMMETRIC_MAX, torch.ones_like(peak))
            xq = (
                torch.clamp(torch.round(x / scale), -INT8_SYMMETRIC_MAX, INT8_SYMMETRIC_MAX) * scale
            )
        else:
            raise ValueError(f"unknown hybrid mode {mode!r}; expected one of {HYBRID_MODES}")
    return x + (xq - x).detach()


@dataclass(frozen=True)
class YamnetConfig:
    """Shape of a port; the default is YAMNet's. Tests build tiny ones."""

    first_channels: int = YAMNET_FIRST_CHANNELS
    first_stride: int = YAMNET_FIRST_STRIDE
    blocks: tuple[tuple[int, int], ...] = YAMNET_BLOCKS
    num_classes: int = NUM_CLASSES
    mel_bands: int = MEL_BANDS
    frame_samples: int = FRAME_SAMPLES
    hop_samples: int = HOP_SAMPLES
    fft_length: int = FFT_LENGTH
    activation: str = "RELU"
    patch_frames: int = PATCH_FRAMES
    """Frames of the shortest input (YAMNet's 96-frame patch)."""

    @property
    def num_layers(self) -> int:
        """Blocks whose pooled output can be the embedding: the first conv + each separable."""
        return 1 + len(self.blocks)

    def layer_channels(self, layer: int) -> int:
        """Output channels of layer `layer` (1-based, YAMNet's layerN naming)."""
        return self.first_channels if layer == 1 else self.blocks[layer - 2][0]


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window, as tf.signal.hann_window(periodic=True)."""
    n = np.arange(length)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


def htk_mel_matrix(
    bands: int, fft_length: int, lo_hz: float = MEL_MIN_HZ, hi_hz: float = MEL_MAX_HZ
) -> np.ndarray:
    """[bands, fft_length // 2 + 1] triangular HTK-mel weights, as YAMNet's front end builds."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return HTK_MEL_HIGH_Q * np.log1p(hz / HTK_MEL_BREAK_HZ)

    bins = fft_length // 2 + 1
    bin_mel = to_mel(np.linspace(0.0, SAMPLE_RATE_HZ / 2, bins))
    edges = np.linspace(to_mel(np.array(lo_hz)), to_mel(np.array(hi_hz)), bands + 2)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_mel[None] - lower) / (center - lower)
    falling = (upper - bin_mel[None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[:, 0] = 0.0  # the DC bin carries no mel energy in YAMNet's matrix
    return weights.astype(np.float32)


def default_front_end(config: YamnetConfig) -> FrontEndConstants:
    """Exact-DFT front-end constants for a port built without a TFLite file."""
    bins = config.fft_length // 2 + 1
    k = np.arange(bins)[:, None]
    j = np.arange(config.fft_length)[None]
    angle = 2.0 * np.pi * k * j / config.fft_length
    return FrontEndConstants(
        frame_samples=config.frame_samples,
        hop_samples=config.hop_samples,
        window=hann_window(config.frame_samples),
        fft_length=config.fft_length,
        fft_pad_left=(config.fft_length - config.frame_samples) // 2,
        dft_real=np.cos(angle).astype(np.float32),
        dft_imag=np.sin(angle).astype(np.float32),
        mel=htk_mel_matrix(config.mel_bands, config.fft_length),
        log_offset=LOG_OFFSET,
        patch_frames=config.patch_frames,
    )


class LogMelFrontEnd(nn.Module):
    """Waveform [B, S] -> log-mel [B, T, M], T = 1 + (S - frame) // hop; no trainable weights.

    Window and real DFT are matrix products with the windowed DFT rows, never the STFT op
    (slow in onnxruntime). When window and DFT rows are (anti)symmetric about the frame
    centre, as YAMNet's are (a centred Hann frame), the frame is folded first: real part from
    x[c+m] + x[c-m], imaginary part from x[c+m] - x[c-m], which halves the multiplications
    (measured in onnxruntime, 1 thread: 0.29-0.45 ms against 0.59-0.69 ms for one Conv1d).
    Framing is a reshape into rows of gcd(frame, hop) samples and one gather of rows.
    """

    dft_kernel: Tensor
    mel_matrix: Tensor
    fold_even: Tensor
    fold_odd: Tensor
    fold_lone: Tensor
    window: Tensor
    dft_basis: Tensor

    def __init__(
        self,
        constants: FrontEndConstants,
        *,
        trim_unused_bins: bool = True,
        tflite_hybrid: HybridMode = "none",
    ) -> None:
        super().__init__()
        c = constants
        if tflite_hybrid not in HYBRID_MODES:
            raise ValueError(f"tflite_hybrid must be one of {HYBRID_MODES}, got {tflite_hybrid!r}")
        self.dft_hybrid: HybridMode = tflite_hybrid if c.dft_quantized else "none"
        self.mel_hybrid: HybridMode = tflite_hybrid if c.mel_quantized else "none"
        # Hybrid emulation takes its ranges over all bins, so it needs the unused ones too.
        trim_unused_bins = trim_unused_bins and self.mel_hybrid == "none"
        if c.fft_pad_left < 0 or c.fft_pad_left + c.frame_samples > c.fft_length:
            raise ValueError(
                f"frame of {c.frame_samples} at offset {c.fft_pad_left} exceeds DFT {c.fft_length}"
            )
        used = np.arange(c.dft_real.shape[0])
        if trim_unused_bins:
            used = np.flatnonzero(np.any(c.mel != 0.0, axis=0))
            if used.size == 0:
                raise ValueError("mel matrix is all zeros")
        span = slice(c.fft_pad_left, c.fft_pad_left + c.frame_samples)
        real = c.dft_real[used, span] * c.window[None]
        imag = c.dft_imag[used, span] * c.window[None]
        kernel = np.concatenate([real, imag], axis=0)[:, None, :]
        self.frame_samples = c.frame_samples
        self.hop_samples = c.hop_samples
        self.bins = int(used.size)
        self.mel_bands = int(c.mel.shape[0])
        self.log_offset = float(c.log_offset)
        self.register_buffer("dft_kernel", torch.from_numpy(np.ascontiguousarray(kernel)))
        self.register_buffer("mel_matrix", torch.from_numpy(np.ascontiguousarray(c.mel[:, used])))
        self.row_samples = math.gcd(self.frame_samples, self.hop_samples)
        self.folded = _is_centre_symmetric(real, imag)
        self.lone_sample = False
        if self.folded:
            centre = self.frame_samples // 2
            # even[m] = x[c+m] + x[c-m], odd[m] = x[c+m] - x[c-m], m = 0..c-1: the centre sample
            # appears twice in even[0] (half weight) and cancels in odd[0] (weight unused).
            even = real[:, centre:].copy()
            even[:, 0] *= 0.5
            odd = imag[:, centre:].copy()
            odd[:, 0] = 0.0
            self.register_buffer(
                "fold_even", torch.from_numpy(np.ascontiguousarray(even.T)), persistent=False
            )
            self.register_buffer(
                "fold_odd", torch.from_numpy(np.ascontiguousarray(odd.T)), persistent=False
            )
            # x[0] has no partner inside the frame; a Hann window gives it weight 0 (YAMNet).
            lone = np.stack([real[:, 0], imag[:, 0]])
            self.lone_sample = bool(np.any(lone != 0.0))
            if self.lone_sample:
                self.register_buffer("fold_lone", torch.from_numpy(lone.copy()), persistent=False)
        if self.dft_hybrid != "none":
            # TFLite quantises the windowed frame before the DFT: keep window and DFT apart.
            basis = np.concatenate([c.dft_real[used, span], c.dft_imag[used, span]], axis=0)
            self.register_buffer("window", torch.from_numpy(c.window.copy()))
            self.register_buffer("dft_basis", torch.from_numpy(np.ascontiguousarray(basis.T)))

    def num_frames(self, samples: int) -> int:
        """Frames produced for `samples` input samples."""
        return 1 + (samples - self.frame_samples) // self.hop_samples

    def frames(self, waveform: Tensor) -> Tensor:
        """[B, S] -> [B, T, frame] by a reshape into rows and a gather (exports as one Gather)."""
        count = self.num_frames(int(waveform.shape[1]))
        used = (count - 1) * self.hop_samples + self.frame_samples
        rows = waveform[:, :used].reshape(waveform.shape[0], -1, self.row_samples)
        step = self.hop_samples // self.row_samples
        per_frame = self.frame_samples // self.row_samples
        index = (
            torch.arange(count, device=waveform.device)[:, None] * step
            + torch.arange(per_frame, device=waveform.device)[None]
        )
        return rows[:, index].reshape(waveform.shape[0], count, self.frame_samples)

    def forward(self, waveform: Tensor) -> Tensor:
        if self.dft_hybrid == "none" and self.folded:
            frames = self.frames(waveform)
            centre = self.frame_samples // 2
            up = frames[:, :, centre:]  # x[c+m]
            down = torch.flip(frames[:, :, 1 : centre + 1], dims=[2])  # x[c-m]
            real = torch.matmul(up + down, self.fold_even)  # [B, T, bins]
            imag = torch.matmul(up - down, self.fold_odd)
            if self.lone_sample:
                first = frames[:, :, :1]
                real = real + first * self.fold_lone[0]
                imag = imag + first * self.fold_lone[1]
            magnitude = torch.sqrt(real * real + imag * imag)
            return torch.log(torch.matmul(magnitude, self.mel_matrix.T) + self.log_offset)
        if self.dft_hybrid == "none":
            spectrum = F.conv1d(waveform.unsqueeze(1), self.dft_kernel, stride=self.hop_samples)
        else:
            frames = waveform.unfold(1, self.frame_samples, self.hop_samples) * self.window
            frames = fake_quantize_dynamic(frames, (2,), self.dft_hybrid)
            spectrum = torch.matmul(frames, self.dft_basis).transpose(1, 2)
        real, imag = spectrum[:, : self.bins], spectrum[:, self.bins :]
        magnitude = torch.sqrt(real * real + imag * imag)  # [B, bins, T], as the file does
        magnitude = fake_quantize_dynamic(magnitude, (1,), self.mel_hybrid)
        mel = torch.matmul(self.mel_matrix, magnitude) + self.log_offset  # [B, M, T]
        return torch.log(mel).transpose(1, 2)


def _is_centre_symmetric(real: np.ndarray, imag: np.ndarray) -> bool:
    """Windowed DFT rows [bins, frame]: real even and imaginary odd about the frame centre."""
    frame = real.shape[1]
    if frame % 2:
        return False
    centre = frame // 2
    scale = max(
        float(np.abs(real).max()), float(np.abs(imag).max()), float(np.finfo(np.float32).tiny)
    )
    tolerance = SYMMETRY_TOLERANCE * scale
    after, before = slice(centre + 1, frame), slice(centre - 1, 0, -1)
    return bool(
        np.allclose(real[:, after], real[:, before], rtol=0.0, atol=tolerance)
        and np.allclose(imag[:, after], -imag[:, before], rtol=0.0, atol=tolerance)
    )


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis: the extra pad goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TfConv2d(nn.Module):
    """Conv2d (full or depthwise) + bias + activation with TensorFlow 'SAME' padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int,
        stride: int,
        depthwise: bool,
        activation: str,
    ) -> None:
        super().__init__()
        groups = in_channels if depthwise else 1
        if depthwise and in_channels != out_channels:
            raise ValueError("a depthwise conv keeps its channel count")
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, groups=groups, bias=True
        )
        self.kernel = kernel
        self.stride = stride
        self.depthwise = depthwise
        if activation not in ("NONE", "RELU", "RELU6"):
            raise ValueError(f"unsupported activation {activation!r}")
        self.activation = activation
        self.hybrid: HybridMode = "none"
        """Set by the weight loader on convs whose file weights are int8."""

    @property
    def bias(self) -> Tensor:
        """The convolution's bias (always present)."""
        bias = self.conv.bias
        assert bias is not None
        return bias

    def forward(self, x: Tensor) -> Tensor:
        if self.hybrid == "xnnpack":
            x = fake_quantize_dynamic(x, (1,), "xnnpack")  # per pixel (NHWC rows)
        elif self.hybrid == "builtin":
            x = fake_quantize_dynamic(x, (1, 2, 3), "builtin")  # per batch item
        # Padding follows the input size, which is fixed per export, so the int() is a constant.
        top, bottom = tf_same_padding(int(x.shape[2]), self.kernel, self.stride)
        left, right = tf_same_padding(int(x.shape[3]), self.kernel, self.stride)
        if top == bottom and left == right:
            y = F.conv2d(
                x,
                self.conv.weight,
                self.conv.bias,
                stride=self.stride,
                padding=(top, left),
                groups=self.conv.groups,
            )
        else:
            y = self.conv(F.pad(x, (left, right, top, bottom)))
        if self.activation == "RELU":
            return F.relu(y)
        if self.activation == "RELU6":
            return F.relu6(y)
        return y


class YamnetPort(nn.Module):
    """YAMNet in PyTorch; a `Student` whose embedding is a chosen block's pooled output."""

    def __init__(
        self,
        config: YamnetConfig | None = None,
        *,
        front_end: FrontEndConstants | None = None,
        embedding_layer: EmbeddingLayer = "final",
        truncate: bool = True,
        tflite_hybrid: HybridMode = "none",
    ) -> None:
        super().__init__()
        self.config = config or YamnetConfig()
        cfg = self.config
        constants = front_end or default_front_end(cfg)
        if (constants.frame_samples, constants.hop_samples, constants.fft_length) != (
            cfg.frame_samples,
            cfg.hop_samples,
            cfg.fft_length,
        ):
            raise ValueError("front-end constants disagree with the config's frame/hop/DFT")
        self.tflite_hybrid: HybridMode = tflite_hybrid
        self.front_end = LogMelFrontEnd(constants, tflite_hybrid=tflite_hybrid)
        self.classifier_hybrid: HybridMode = "none"
        if self.front_end.mel_bands != cfg.mel_bands:
            raise ValueError(
                f"front end has {self.front_end.mel_bands} mel bands, config {cfg.mel_bands}"
            )
        layers: list[nn.Module] = [
            TfConv2d(
                1,
                cfg.first_channels,
                kernel=CONV_KERNEL,
                stride=cfg.first_stride,
                depthwise=False,
                activation=cfg.activation,
            )
        ]
        channels = cfg.first_channels
        for out_channels, stride in cfg.blocks:
            layers.append(
                nn.Sequential(
                    TfConv2d(
                        channels,
                        channels,
                        kernel=CONV_KERNEL,
                        stride=stride,
                        depthwise=True,
                        activation=cfg.activation,
                    ),
                    TfConv2d(
                        channels,
                        out_channels,
                        kernel=1,
                        stride=1,
                        depthwise=False,
                        activation=cfg.activation,
                    ),
                )
            )
            channels = out_channels
        self.layers = nn.ModuleList(layers)
        # Per-channel factors from a layer's stored activations to their true values: ones
        # unless `equalize_activation_ranges` moved range into the weights for int8 export.
        # Not persistent: equalising is done on an export copy, never saved in checkpoints.
        for index in range(1, cfg.num_layers + 1):
            self.register_buffer(
                _scale_name(index), torch.ones(cfg.layer_channels(index)), persistent=False
            )
        self.classifier = nn.Linear(channels, cfg.num_classes)
        self.num_classes = cfg.num_classes
        self.window_samples = cfg.frame_samples + (cfg.patch_frames - 1) * cfg.hop_samples
        self.truncate = truncate
        self.embedding_layer: EmbeddingLayer = "final"
        self.embedding_dim = channels
        self.set_embedding_layer(embedding_layer)

    def set_embedding_layer(self, layer: EmbeddingLayer) -> None:
        """Read `.embedding` from layer `layer` (1-based, YAMNet's layerN) or the final one."""
        if layer != "final" and not (
            isinstance(layer, int) and 1 <= layer <= self.config.num_layers
        ):
            raise ValueError(
                f"embedding_layer must be 'final' or 1..{self.config.num_layers}, got {layer!r}"
            )
        self.embedding_layer = layer
        index = self.config.num_layers if layer == "final" else layer
        self.embedding_dim = self.config.layer_channels(index)

    @property
    def embedding_index(self) -> int:
        """The 1-based layer the embedding is read from."""
        return self.config.num_layers if self.embedding_layer == "final" else self.embedding_layer

    def int8_sensitive_scopes(self) -> tuple[str, ...]:
        """ONNX node-name scopes whose activations need more than 8 bits in int8 export.

        YAMNet's last layer is the hard one: its input and output are sparse and peaky (a few
        channels reach 50 where most stay below 0.2; 8 % of its outputs are non-zero), and it
        amplifies small errors in its input. Measured on real audio (int8/fp32 cosine median):
        all 8-bit 0.56, with activation equalisation and 99.99th-percentile ranges 0.989,
        16-bit activations in the last three layers 0.996. An embedding read from layer 13 or
        earlier needs none (>= 0.997 with equalisation).
        """
        last = self.config.num_layers
        if self.embedding_index < last:
            return ()
        first = last - INT8_WIDE_LAST_LAYERS + 1
        return tuple(f"/layers.{i - 1}/" for i in range(first, last + 1))

    def int8_float_scopes(self) -> tuple[str, ...]:
        """ONNX node-name scopes to keep float in int8 export: the first conv.

        It has one input channel (K = 9 per output), which onnxruntime's int8 kernel runs
        slower than float (measured 0.5 ms of a 1.6 ms layer-6 model); its 288 weights cost
        nothing in size.
        """
        return ("/layers.0/",)

    def prepare_int8_export(self, calibration_windows: Tensor) -> YamnetPort:
        """A copy with activation ranges equalised for int8; every output stays the same."""
        port = copy.deepcopy(self)
        port.equalize_activation_ranges(calibration_windows)
        return port

    def log_mel(self, waveform: Tensor) -> Tensor:
        """[B, S] -> [B, T, mel_bands]."""
        return self.front_end(waveform)

    def forward(self, waveform: Tensor) -> StudentOutput:
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be [batch, samples], got {tuple(waveform.shape)}")
        if waveform.shape[1] < self.window_samples:
            raise ValueError(
                f"waveform has {waveform.shape[1]} samples, the port needs >= {self.window_samples}"
            )
        x = self.front_end(waveform).unsqueeze(1)  # [B, 1, T, M]: time is the height
        stop = self.embedding_index if self.truncate else self.config.num_layers
        pooled: list[Tensor] = []
        for index, layer in enumerate(self.layers[:stop], start=1):
            x = layer(x)
            pooled.append(x.mean(dim=(2, 3)) * self.layer_scale(index))
        embedding = pooled[self.embedding_index - 1]
        logits = None
        if stop == self.config.num_layers:
            logits = self.classifier(
                fake_quantize_dynamic(pooled[-1], (1,), self.classifier_hybrid)
            )
        return StudentOutput(embedding=embedding, logits=logits, layers=pooled)

    def layer_scale(self, index: int) -> Tensor:
        """[C] factors from layer `index`'s stored activations to their true values."""
        scale = getattr(self, _scale_name(index))
        assert isinstance(scale, Tensor)
        return scale

    @torch.no_grad()
    def equalize_activation_ranges(
        self,
        windows: Tensor,
        *,
        layer_strength: float = EQUALIZE_LAYER_STRENGTH,
        depthwise_strength: float = EQUALIZE_DEPTHWISE_STRENGTH,
        max_factor: float = EQUALIZE_MAX_FACTOR,
    ) -> dict[str, float]:
        """Even out per-channel activation ranges for int8, leaving every output unchanged.

        ReLU commutes with positive scaling, so channel c of an activation can be stored
        divided by r_c = (max_c / median channel max) ** strength: its producer's weights and
        bias are divided by r_c, its consumer's weights multiplied by r_c, pooled outputs
        multiplied back through the layer-scale buffers. For layer outputs (full/pointwise conv
        -> depthwise conv) both sides are per-channel quantised weights, so it is free; for
        depthwise outputs the pointwise consumer's columns absorb r_c and per-output-channel
        weight quantisation pays for it, hence the smaller strength. Do this on a copy used for
        export. `windows` [N, S]: calibration audio. Returns the worst max/median channel
        spread before and after.
        """
        if self.config.activation == "RELU6":
            raise ValueError("equalisation needs ReLU or no activation; ReLU6 clips")
        was_training = self.training
        self.eval()
        convs = self.convs()
        maxima = [torch.zeros(c.conv.out_channels) for c in convs]

        def recorder(k: int) -> Callable[[nn.Module, object, Tensor], None]:
            def hook(_module: nn.Module, _inputs: object, out: Tensor) -> None:
                maxima[k] = torch.maximum(maxima[k], out.amax(dim=(0, 2, 3)))

            return hook

        hooks = [conv.register_forward_hook(recorder(k)) for k, conv in enumerate(convs)]
        saved_truncate, self.truncate = self.truncate, False
        try:
            self(windows)
        finally:
            self.truncate = saved_truncate
            for hook in hooks:
                hook.remove()

        def spread(m: Tensor) -> float:
            positive = m[m > 0]
            return float(m.max() / positive.median()) if positive.numel() else 1.0

        factors: list[Tensor] = []
        for conv, m in zip(convs, maxima, strict=True):
            positive = m[m > 0]
            strength = depthwise_strength if conv.depthwise else layer_strength
            if positive.numel() == 0 or strength == 0:
                factors.append(torch.ones_like(m))
                continue
            ratio = torch.where(m > 0, m / positive.median(), torch.ones_like(m))
            factors.append(torch.clamp(ratio**strength, 1.0 / max_factor, max_factor))
        for k, conv in enumerate(convs):
            r_out = factors[k]
            conv.conv.weight.div_(r_out.view(-1, 1, 1, 1))
            conv.bias.div_(r_out)
            if k + 1 < len(convs):
                consumer = convs[k + 1]
                shape = (-1, 1, 1, 1) if consumer.depthwise else (1, -1, 1, 1)
                consumer.conv.weight.mul_(r_out.view(shape))
        # Layer outputs are the first conv and every pointwise conv.
        for index, k in enumerate(range(0, len(convs), 2), start=1):
            self.layer_scale(index).mul_(factors[k])
        result = {
            "spread_before": max(spread(m) for m in maxima),
            "spread_after": max(spread(m / r) for m, r in zip(maxima, factors, strict=True)),
        }
        self.train(was_training)
        _LOGGER.info("equalised activation ranges: %s", result)
        return result

    def convs(self) -> list[TfConv2d]:
        """The convolutions in the file's operator order."""
        out: list[TfConv2d] = []
        for layer in self.layers:
            if isinstance(layer, TfConv2d):
                out.append(layer)
            else:
                out.extend(m for m in layer.children() if isinstance(m, TfConv2d))
        return out

    def load_yamnet_weights(self, weights: YamnetWeights) -> None:
        """Copy `weights` in operator order; raise TfliteWeightsError on any mismatch."""
        convs = self.convs()
        if len(weights.convs) != len(convs):
            raise TfliteWeightsError(
                f"file has {len(weights.convs)} convolutions, the port {len(convs)}"
            )
        for i, (src, dst) in enumerate(zip(weights.convs, convs, strict=True)):
            _check_conv(i, src, dst)
            with torch.no_grad():
                dst.conv.weight.copy_(torch.from_numpy(src.weight))
                dst.bias.copy_(torch.from_numpy(src.bias))
            dst.hybrid = self.tflite_hybrid if src.quantized else "none"
        fc = weights.classifier
        if tuple(fc.weight.shape) != tuple(self.classifier.weight.shape):
            raise TfliteWeightsError(
                f"classifier {fc.name!r}: file {fc.weight.shape}, port "
                f"{tuple(self.classifier.weight.shape)}"
            )
        if fc.bias.shape[0] != self.classifier.bias.shape[0]:
            raise TfliteWeightsError(f"classifier bias {fc.bias.shape} mismatches the port")
        with torch.no_grad():
            self.classifier.weight.copy_(torch.from_numpy(fc.weight))
            self.classifier.bias.copy_(torch.from_numpy(fc.bias))
        self.classifier_hybrid = self.tflite_hybrid if fc.quantized else "none"

    @classmethod
    def from_weights(
        cls,
        weights: YamnetWeights,
        *,
        embedding_layer: EmbeddingLayer = "final",
        truncate: bool = True,
        tflite_hybrid: HybridMode = "none",
    ) -> YamnetPort:
        """A port shaped after `weights` (channels, strides) with all of them copied in."""
        config = config_from_weights(weights)
        port = cls(
            config,
            front_end=weights.front_end,
            embedding_layer=embedding_layer,
            truncate=truncate,
            tflite_hybrid=tflite_hybrid,
        )
        port.load_yamnet_weights(weights)
        return port

    @classmethod
    def from_tflite(
        cls,
        path: str | Path,
        *,
        embedding_layer: EmbeddingLayer = "final",
        truncate: bool = True,
        tflite_hybrid: HybridMode = "none",
    ) -> YamnetPort:
        """The teacher as an exact PyTorch copy, read from YAMNet's .tflite file."""
        weights = read_yamnet_weights(path)
        try:
            return cls.from_weights(
                weights,
                embedding_layer=embedding_layer,
                truncate=truncate,
                tflite_hybrid=tflite_hybrid,
            )
        except (TfliteWeightsError, ValueError) as exc:
            raise TfliteWeightsError(f"{path}: {exc}") from exc


def _scale_name(index: int) -> str:
    return f"layer{index}_scale"


def _check_conv(index: int, src: ConvLayer, dst: TfConv2d) -> None:
    where = f"conv #{index} ({src.name!r})"
    if (src.kind == "depthwise") != dst.depthwise:
        raise TfliteWeightsError(f"{where}: file has a {src.kind} conv where the port does not")
    if tuple(src.weight.shape) != tuple(dst.conv.weight.shape):
        raise TfliteWeightsError(
            f"{where}: weight shape {src.weight.shape} in the file, "
            f"{tuple(dst.conv.weight.shape)} in the port"
        )
    if src.bias.shape[0] != dst.bias.shape[0]:
        raise TfliteWeightsError(f"{where}: bias {src.bias.shape} vs {tuple(dst.bias.shape)}")
    if src.stride != dst.stride:
        raise TfliteWeightsError(f"{where}: stride {src.stride} in the file, {dst.stride} here")
    if src.padding != "SAME":
        raise TfliteWeightsError(f"{where}: padding {src.padding}, the port implements SAME")
    if src.activation != dst.activation:
        raise TfliteWeightsError(f"{where}: activation {src.activation} vs {dst.activation}")


def config_from_weights(weights: YamnetWeights) -> YamnetConfig:
    """The `YamnetConfig` whose layers match `weights.convs` (conv, then depthwise/pointwise)."""
    convs = weights.convs
    if not convs or convs[0].kind != "conv":
        raise TfliteWeightsError("the first layer must be a full convolution")
    if len(convs) % 2 != 1:
        raise TfliteWeightsError(f"{len(convs)} convs do not form conv + separable pairs")
    activations = {c.activation for c in convs}
    if len(activations) != 1:
        raise TfliteWeightsError(f"mixed activations {sorted(activations)} are not supported")
    blocks: list[tuple[int, int]] = []
    for i in range(1, len(convs), 2):
        dw, pw = convs[i], convs[i + 1]
        if dw.kind != "depthwise" or pw.kind != "conv" or pw.weight.shape[2:] != (1, 1):
            raise TfliteWeightsError(
                f"convs #{i}, #{i + 1} ({dw.name!r}) are not a depthwise + pointwise pair"
            )
        blocks.append((int(pw.weight.shape[0]), dw.stride))
    fe = weights.front_end
    return YamnetConfig(
        first_channels=int(convs[0].weight.shape[0]),
        first_stride=convs[0].stride,
        blocks=tuple(blocks),
        num_classes=int(weights.classifier.weight.shape[0]),
        mel_bands=int(fe.mel.shape[0]),
        frame_samples=fe.frame_samples,
        hop_samples=fe.hop_samples,
        fft_length=fe.fft_length,
        activation=activations.pop(),
        patch_frames=fe.patch_frames,
    )
