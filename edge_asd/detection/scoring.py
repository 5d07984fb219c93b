"""Clip scoring: frame a clip, embed its windows, score them against a memory bank, aggregate."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol, get_args

import numpy as np

from edge_asd.detection.bundle import Bundle, check_model
from edge_asd.detection.memory_bank import DEFAULT_SCORE_METHOD, SCORE_METHODS, MemoryBank
from edge_asd.detection.windowing import frame_signal
from edge_asd.model.encoder import ModelInfo

_LOGGER = logging.getLogger(__name__)

Aggregate = Literal["mean", "max"]
AGGREGATES: Final[tuple[str, ...]] = get_args(Aggregate)

EMBED_BATCH_WINDOWS: Final = 32
"""Windows per encoder call: bounds memory (a 1 s window is 64 kB) without starving the CPU."""


class EmbeddingModel(Protocol):
    """What scoring and calibration need from `encoder.Encoder` (and what test fakes provide)."""

    @property
    def info(self) -> ModelInfo: ...

    def embed(self, windows: np.ndarray) -> np.ndarray: ...


def window_count(n_samples: int, window_samples: int, hop_samples: int) -> int:
    """Windows that `frame_signal` cuts from `n_samples` (windows start at 0, hop, 2*hop, ...)."""
    if n_samples < window_samples:
        return 0
    return (n_samples - window_samples) // hop_samples + 1


def iter_window_batches(
    samples: np.ndarray, window_samples: int, hop_samples: int, batch_windows: int
) -> Iterator[np.ndarray]:
    """The windows of `frame_signal(samples, ...)`, `batch_windows` at a time, so a long
    recording is never framed into memory at once."""
    total = window_count(len(samples), window_samples, hop_samples)
    for first in range(0, total, batch_windows):
        last = min(total, first + batch_windows)
        piece = samples[first * hop_samples : (last - 1) * hop_samples + window_samples]
        yield frame_signal(piece, window_samples, hop_samples)


def embed_windows(encoder: EmbeddingModel, windows: np.ndarray) -> np.ndarray:
    """Embed [B, S] windows; checks the encoder's output shape and values."""
    out = np.asarray(encoder.embed(windows), dtype=np.float32)
    dim = encoder.info.embedding_dim
    if out.ndim != 2 or out.shape[0] != windows.shape[0] or (dim > 0 and out.shape[1] != dim):
        raise ValueError(
            f"model {encoder.info.name} returned embeddings of shape {out.shape} for "
            f"{windows.shape[0]} windows (embedding_dim {dim})"
        )
    if not np.all(np.isfinite(out)):
        raise ValueError(f"model {encoder.info.name} returned NaN or inf embeddings")
    return out


@dataclass(frozen=True)
class ClipScore:
    """Scores of one clip."""

    clip_score: float
    """Aggregate (mean or max) of the window scores."""
    window_scores: np.ndarray
    """float32 [n_windows]."""
    n_windows: int


class ClipScorer:
    """Scores whole clips: windows of `window_samples` every `hop_samples`, one score per window,
    aggregated by mean or max. A clip shorter than one window is zero-padded at the end to one
    window, so every clip gets a score (short test clips still count in an evaluation)."""

    def __init__(
        self,
        encoder: EmbeddingModel,
        bank: MemoryBank,
        *,
        method: str = DEFAULT_SCORE_METHOD,
        window_samples: int,
        hop_samples: int,
        aggregate: str = "mean",
    ) -> None:
        if method not in SCORE_METHODS:
            raise ValueError(f"unknown scoring method {method!r}; expected one of {SCORE_METHODS}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {AGGREGATES}")
        if window_samples <= 0 or hop_samples <= 0:
            raise ValueError(
                f"window_samples ({window_samples}) and hop_samples ({hop_samples}) must be > 0"
            )
        self.encoder = encoder
        self.bank = bank
        self.method = method
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self.aggregate = aggregate

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, encoder: EmbeddingModel, *, aggregate: str = "mean"
    ) -> ClipScorer:
        """A scorer with the bundle's bank, method and framing; the encoder must be the
        calibrated one (BundleError otherwise)."""
        check_model(bundle, encoder.info, bundle.bundle_id)
        return cls(
            encoder,
            bundle.memory_bank(),
            method=bundle.method,
            window_samples=bundle.window_samples,
            hop_samples=bundle.hop_samples,
            aggregate=aggregate,
        )

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """float32 [B] scores of already framed windows [B, window_samples]."""
        return self.bank.score(embed_windows(self.encoder, windows), self.method)

    def score_clip(self, samples: np.ndarray) -> ClipScore:
        """Score a float32 1-D clip at the encoder's rate."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"clip must be 1-D samples, got shape {x.shape}")
        if x.size == 0:
            raise ValueError("clip is empty")
        if not np.all(np.isfinite(x)):
            raise ValueError("clip contains NaN or inf samples")
        if x.shape[0] < self.window_samples:
            x = np.pad(x, (0, self.window_samples - x.shape[0]))
        parts = [
            self.score_windows(batch)
            for batch in iter_window_batches(
                x, self.window_samples, self.hop_samples, EMBED_BATCH_WINDOWS
            )
        ]
        scores = np.concatenate(parts).astype(np.float32)
        value = float(scores.max() if self.aggregate == "max" else scores.mean())
        return ClipScore(clip_score=value, window_scores=scores, n_windows=int(scores.shape[0]))
