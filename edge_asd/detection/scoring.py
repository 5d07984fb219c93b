"""Clip scoring: a whole recording through the machine pipeline, window scores aggregated.

Used by `edge-asd score`, `evaluate` and the pretraining validation. The framing, embedding and
scoring are the pipeline's (`pipeline.MachinePipeline.run_recording`); this module only adds
the clip-level aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_asd.detection.bundle import Bundle
from edge_asd.detection.detector import DetectorSettings
from edge_asd.detection.fusion import ViewSet
from edge_asd.detection.memory_bank import MemoryBank
from edge_asd.detection.methods import DEFAULT_SCORE_METHOD
from edge_asd.detection.pipeline import EmbeddingModel, MachinePipeline, RecordingResult
from edge_asd.detection.vocabulary import AGGREGATES, DEFAULT_AGGREGATE


def check_aggregate(aggregate: str) -> str:
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {AGGREGATES}")
    return aggregate


def aggregate_scores(scores: np.ndarray, aggregate: str) -> float:
    """The clip score of window `scores` (mean or max)."""
    check_aggregate(aggregate)
    return float(scores.max() if aggregate == "max" else scores.mean())


@dataclass(frozen=True)
class ClipScore:
    """Scores of one clip."""

    clip_score: float
    """Aggregate (mean or max) of the window scores."""
    window_scores: np.ndarray
    """float32 [n_windows]."""
    n_windows: int
    recording: RecordingResult
    """The pipeline's full result: windows, events and states (with a detector)."""


class ClipScorer:
    """Scores whole clips through a `MachinePipeline`. A clip shorter than one window is
    zero-padded at the end to one window, so every clip of an evaluation gets a score."""

    def __init__(
        self,
        encoder: EmbeddingModel,
        bank: MemoryBank,
        *,
        method: str = DEFAULT_SCORE_METHOD,
        window_samples: int,
        hop_samples: int,
        aggregate: str = DEFAULT_AGGREGATE,
        detector: DetectorSettings | None = None,
        views: ViewSet | None = None,
    ) -> None:
        self.aggregate = check_aggregate(aggregate)
        self.pipeline = MachinePipeline(
            encoder,
            bank,
            method=method,
            window_samples=window_samples,
            hop_samples=hop_samples,
            detector=detector,
            views=views,
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        encoder: EmbeddingModel,
        *,
        aggregate: str = DEFAULT_AGGREGATE,
        detector: DetectorSettings | None = None,
    ) -> ClipScorer:
        """A scorer with the bundle's bank, method and framing; the encoder must be the
        calibrated one (BundleError otherwise)."""
        scorer = cls.__new__(cls)
        scorer.aggregate = check_aggregate(aggregate)
        scorer.pipeline = MachinePipeline.from_bundle(bundle, encoder, detector=detector)
        return scorer

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """float32 [B] scores of already framed windows [B, window_samples]."""
        return self.pipeline.score_windows(windows)

    def score_clip(self, samples: np.ndarray) -> ClipScore:
        """Score a float32 1-D clip at the encoder's rate (ValueError for an unusable clip)."""
        result = self.pipeline.run_recording(samples, pad_short=True)
        scores = result.scores
        return ClipScore(
            clip_score=aggregate_scores(scores, self.aggregate),
            window_scores=scores,
            n_windows=int(scores.shape[0]),
            recording=result,
        )
