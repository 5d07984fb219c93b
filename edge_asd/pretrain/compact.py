"""A compact from-scratch student (< 1 M parameters) for users with large corpora.

Not the default: distilled from scratch on a few minutes of audio it did worse than random
weights (see docs/model-card.md); the default student is the YAMNet port.

Log-mel front end (framing and DFT as a fixed 1-D convolution, so the ONNX graph needs no STFT
op and int8 quantisation leaves it alone) -> four conv blocks -> global average pool ->
embedding; a tagging head and a projection head to the teacher's dimension hang off the
embedding and are used in training only.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Final

import numpy as np
import torch
from torch import Tensor, nn

from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.pretrain.student import StudentOutput

_LOGGER = logging.getLogger(__name__)

FFT_SAMPLES: Final = 400
"""25 ms analysis window at 16 kHz."""
HOP_SAMPLES: Final = 160
"""10 ms hop."""
N_MELS: Final = 64
MEL_FMIN_HZ: Final = 60.0
MEL_FMAX_HZ: Final = 7800.0
LOG_OFFSET: Final = 1e-6
"""Added to mel power before the log (YAMNet uses 0.001 on magnitudes; power needs less)."""
DEFAULT_WINDOW_SAMPLES: Final = SAMPLE_RATE_HZ
DEFAULT_EMBEDDING_DIM: Final = 128
DEFAULT_WIDTH: Final = 32
N_BLOCKS: Final = 4
MAX_PARAMETERS: Final = 1_000_000
_HTK_MEL_BREAK_HZ: Final = 700.0
_HTK_MEL_SCALE: Final = 1127.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return _HTK_MEL_SCALE * np.log1p(hz / _HTK_MEL_BREAK_HZ)


def mel_matrix(n_mels: int, n_fft: int, rate_hz: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular HTK mel filters."""
    bins_hz = np.linspace(0.0, rate_hz / 2.0, n_fft // 2 + 1)
    edges = np.linspace(_hz_to_mel(np.array(fmin_hz)), _hz_to_mel(np.array(fmax_hz)), n_mels + 2)
    mel_bins = _hz_to_mel(bins_hz)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (mel_bins[None, :] - lower) / (centre - lower)
    falling = (upper - mel_bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMel(nn.Module):
    """[B, S] waveform -> [B, n_mels, frames] log mel power; fixed (no parameters)."""

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        n_bins = FFT_SAMPLES // 2 + 1
        t = np.arange(FFT_SAMPLES)
        k = np.arange(n_bins)[:, None]
        window = 0.5 - 0.5 * np.cos(2.0 * math.pi * t / FFT_SAMPLES)
        phase = 2.0 * math.pi * k * t[None, :] / FFT_SAMPLES
        basis = np.concatenate([np.cos(phase) * window, -np.sin(phase) * window])
        self.register_buffer("dft", torch.from_numpy(basis.astype(np.float32))[:, None, :])
        mel = mel_matrix(n_mels, FFT_SAMPLES, SAMPLE_RATE_HZ, MEL_FMIN_HZ, MEL_FMAX_HZ)
        self.register_buffer("mel", torch.from_numpy(mel))
        self.n_bins = n_bins
        self.dft: Tensor
        self.mel: Tensor

    def forward(self, waveform: Tensor) -> Tensor:
        spec = nn.functional.conv1d(waveform[:, None, :], self.dft, stride=HOP_SAMPLES)
        power = spec[:, : self.n_bins] ** 2 + spec[:, self.n_bins :] ** 2
        return torch.log(torch.matmul(self.mel, power) + LOG_OFFSET)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, groups=c_out, bias=False),
        nn.Conv2d(c_out, c_out, kernel_size=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CompactStudent(nn.Module):
    """Small CNN student: `embedding_dim`-d embeddings, `num_classes` tagging logits."""

    def __init__(
        self,
        *,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        num_classes: int = 0,
        teacher_dim: int | None = None,
        width: int = DEFAULT_WIDTH,
        window_samples: int = DEFAULT_WINDOW_SAMPLES,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.window_samples = window_samples
        self.frontend = LogMel()
        # Per-band normalisation learned from data; log-mel levels vary with microphone gain.
        self.input_norm = nn.BatchNorm2d(1)
        channels = [1] + [width * 2 ** min(i, 2) for i in range(N_BLOCKS)]
        self.blocks = nn.Sequential(*(_block(a, b) for a, b in itertools.pairwise(channels)))
        self.embed = nn.Linear(channels[-1], embedding_dim)
        self.tagging_head = nn.Linear(embedding_dim, num_classes) if num_classes else None
        self.projection = (
            nn.Linear(embedding_dim, teacher_dim)
            if teacher_dim and teacher_dim != embedding_dim
            else None
        )
        total = sum(p.numel() for p in self.parameters())
        if total > MAX_PARAMETERS:
            raise ValueError(f"compact student has {total} parameters (> {MAX_PARAMETERS})")
        _LOGGER.info("compact student: %d parameters", total)

    def forward(self, waveform: Tensor) -> StudentOutput:
        x = self.input_norm(self.frontend(waveform)[:, None])
        layers = []
        for block in self.blocks:
            x = block(x)
            layers.append(x.mean(dim=(2, 3)))
        embedding = self.embed(layers[-1])
        logits = self.tagging_head(embedding) if self.tagging_head is not None else None
        return StudentOutput(embedding=embedding, logits=logits, layers=layers)
