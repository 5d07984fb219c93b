"""`edge-asd learn`: add recordings of normal running to a bundle without recalibrating.

The first false alarms on real streams come from normal running that calibration never heard
(docs/method.md, section 5.1). Learning adds the new windows to the bank and recomputes what
depends on the bank from the embeddings alone (rho, held-out threshold, evidence decision,
running profile, report), with the bundle's own settings; the original audio is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_asd.config import CalibrationConfig
from edge_asd.detection.bundle import Bundle, BundleError, check_model
from edge_asd.detection.calibration import (
    CalibrationError,
    Clip,
    EmbeddedAudio,
    FileCheck,
    Framing,
    build_bundle,
    check_clip,
    embed_all,
    file_check,
    view_features,
)
from edge_asd.detection.pipeline import EmbeddingModel
from edge_asd.detection.vocabulary import EMBEDDING_VIEW
from edge_asd.detection.windowing import window_count

MAX_NOVEL_FRACTION = 0.5
"""Refuse (without --force) when more than this share of the new windows score above the
bundle's window threshold: that is more likely a fault than unheard normal running."""


class LearnError(Exception):
    """The recordings cannot be learned into this bundle; the message says why."""


@dataclass(frozen=True)
class LearnSummary:
    windows_before: int
    windows_added: int
    novel_fraction: float
    """Share of the new windows that scored above the old window threshold."""


def _old_audio(bundle: Bundle) -> EmbeddedAudio:
    """The bundle's windows as calibration audio: clips start where the window index is 0."""
    n = bundle.size
    if bundle.positions is not None:
        starts = np.flatnonzero(bundle.positions == 0).tolist()
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        counts = np.diff([*starts, n]).astype(int).tolist()
    else:
        counts = [n]
    levels = bundle.levels
    if levels is None:
        # Older bundles kept no per-window levels: their running level is unknown, so the
        # learned profile follows the new recordings' where they are quieter.
        median = bundle.running_profile.running_dbfs_median if bundle.running_profile else 0.0
        levels = np.full(n, median, dtype=np.float32)
    return EmbeddedAudio(bundle.embeddings, counts, levels, bundle.labels)


def _config_of(bundle: Bundle) -> CalibrationConfig:
    folds = bundle.normal_stats.get("folds", CalibrationConfig().folds)
    update = {
        "scoring": bundle.method,
        "k": bundle.k,
        "threshold_method": bundle.threshold_method,
        "threshold_percentile": bundle.threshold_percentile,
        "rho_scope": bundle.rho_scope,
        "folds": int(folds),
        # The views calibration chose stay chosen: learning adds normal audio, it does not
        # re-decide what to listen to (older bundles: the embedding alone, as they were).
        "views": [EMBEDDING_VIEW] if bundle.views is None else bundle.views.names,
    }
    if bundle.target_false_alarms_per_week is not None:
        update["target_false_alarms_per_week"] = bundle.target_false_alarms_per_week
    return CalibrationConfig.from_dict(update)


def learn(
    bundle: Bundle,
    clips: Sequence[Clip],
    encoder: EmbeddingModel,
    *,
    force: bool = False,
    progress: bool = True,
) -> tuple[Bundle, LearnSummary]:
    """A new bundle with `clips` (normal running, 16 kHz float32) learned into `bundle`."""
    try:
        check_model(bundle, encoder.info, bundle.bundle_id)
    except BundleError as exc:
        raise LearnError(str(exc)) from None
    if not clips:
        raise LearnError("no recordings to learn")
    framing = Framing(bundle.window_samples, bundle.hop_samples)
    try:
        checked = [check_clip(clip) for clip in clips]
    except CalibrationError as exc:
        raise LearnError(str(exc)) from None
    counts = [window_count(x.size, framing.window_samples, framing.hop_samples) for x in checked]
    if sum(counts) == 0:
        raise LearnError(
            f"the recordings are shorter than one window ({framing.window_seconds:g} s)"
        )
    files: list[FileCheck] = [
        file_check(c, x, n) for c, x, n in zip(clips, checked, counts, strict=True)
    ]
    embeddings, levels = embed_all(checked, counts, encoder, framing, progress)
    scores = bundle.memory_bank().score(embeddings, bundle.method)
    features = None
    if bundle.views is not None:
        features = view_features(checked, counts, framing, bundle.views.feature_names)
        scores = bundle.views.fuse_features(features, scores)
    novel = float(np.mean(scores > bundle.threshold))
    if novel > MAX_NOVEL_FRACTION and not force:
        raise LearnError(
            f"{100 * novel:.0f} % of the new windows score above the bundle's threshold "
            f"{bundle.threshold:.4f} (median score {float(np.median(scores)):.4f}): this sounds "
            "far from the machine's normal running and may be a fault; check the recordings, "
            "then use --force to learn them anyway"
        )
    old = _old_audio(bundle)
    labels = None
    if old.labels is not None:
        labels = [*old.labels, *([""] * int(embeddings.shape[0]))]
    combined_views = None
    if bundle.views is not None and features is not None:
        combined_views = {
            name: np.concatenate([fb.features, features[name]])
            for name, fb in bundle.views.banks.items()
        }
    combined = EmbeddedAudio(
        np.concatenate([old.embeddings, embeddings]),
        [*old.counts, *counts],
        np.concatenate([old.levels, levels]),
        labels,
        combined_views,
    )
    off = None
    if bundle.off_embeddings is not None:
        off = EmbeddedAudio(
            bundle.off_embeddings, [int(bundle.off_embeddings.shape[0])], np.zeros(0)
        )
    previous_files = [] if bundle.report is None else list(bundle.report.get("files", []))
    try:
        learned = build_bundle(
            combined,
            framing,
            _config_of(bundle),
            model=bundle.model,
            sources=[*bundle.sources, *(clip.name for clip in clips)],
            files=files,
            off=off,
        )
    except CalibrationError as exc:
        raise LearnError(str(exc)) from None
    # The normal spectrum does not change by adding unheard normal running to the bank: keep
    # the calibration's band profile (it explains events); the learned audio is not needed.
    learned.band_profile = bundle.band_profile
    # The surroundings it was learned in, though, are now known: a changed environment that
    # is learned stops being reported (older bundles without the profile stay without).
    if bundle.environment is not None:
        learned.environment = bundle.environment.extended(checked)
    if learned.report is not None:
        learned.report["files"] = previous_files + learned.report["files"]
        learned.report["learned"] = [clip.name for clip in clips]
    summary = LearnSummary(bundle.size, int(embeddings.shape[0]), novel)
    return learned, summary
