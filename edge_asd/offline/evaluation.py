"""Evaluation on the DCASE Task 2 layout (`dcase`): per-section AUCs, pAUC, official score,
operating point.

Per section: every train window is embedded into a memory bank (domain labels from the file
names), every test clip is scored through the machine pipeline (clip score = mean of its window
scores by default), and the DCASE metrics are computed. The operating point (docs/method.md,
section 5) uses a threshold from held-out train windows (whole clips per fold, as `calibration`
does); the test clips then run through the pipeline with the daemon's detector at that
threshold, and its events are the alarms counted.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from tqdm import tqdm

from edge_asd.audio.files import AudioFileError, read_wav
from edge_asd.config import CalibrationConfig, ConfigError
from edge_asd.constants import DEFAULT_HOP_SECONDS, SAMPLE_RATE_HZ, seconds_to_samples
from edge_asd.detection.bundle import LEGACY_RHO_SCOPE, Bundle
from edge_asd.detection.calibration import (
    CalibrationError,
    EmbeddedAudio,
    Framing,
    build_bundle,
    requested_views,
    view_features,
)
from edge_asd.detection.detector import (
    DEFAULT_RELEASE_WINDOWS,
    DEFAULT_TRIGGER_WINDOWS,
    DetectorSettings,
)
from edge_asd.detection.pipeline import EmbeddingModel, RecordingResult, embed_recording
from edge_asd.detection.scoring import ClipScorer
from edge_asd.detection.vocabulary import (
    DECISION_RULES,
    DEFAULT_AGGREGATE,
    DEFAULT_DECISION_RULE,
    FEATURE_VIEWS,
)
from edge_asd.offline.dcase import EvaluationError, LabelledClip, Section, discover_sections
from edge_asd.offline.metrics import SOURCE, TARGET, dcase_section_metrics, harmonic_mean

_LOGGER = logging.getLogger(__name__)

RESULTS_FILE: Final = "results.json"

_CALIBRATION_DEFAULTS: Final = CalibrationConfig()
"""Scoring, k, rho scope, threshold and folds default as in `edge-asd calibrate`."""
SECONDS_PER_HOUR: Final = 3600.0


# ---------------------------------------------------------------------------------------------
# Operating point


def operating_point(
    clips: Sequence[LabelledClip],
    recordings: Sequence[RecordingResult],
    durations_s: Sequence[float],
    detector: DetectorSettings,
) -> dict[str, Any]:
    """False alarms per hour of normal test audio and share of anomalous clips caught.

    `recordings` are the clips run through the pipeline with `detector`: an alarm is an event
    the daemon would have started, and it is known at that start's `ts` (the end of the window
    completing the trigger run, in seconds from the clip's start).
    """
    normal_alarms = {SOURCE: 0, TARGET: 0}
    normal_seconds = {SOURCE: 0.0, TARGET: 0.0}
    normal_clips = {SOURCE: 0, TARGET: 0}
    normal_clips_alarmed = {SOURCE: 0, TARGET: 0}
    n_anomalous = 0
    caught = 0
    delays: list[float] = []
    for clip, recording, seconds in zip(clips, recordings, durations_s, strict=True):
        starts = recording.event_starts
        if clip.is_anomaly:
            n_anomalous += 1
            if starts:
                caught += 1
                delays.append(starts[0].ts)
        else:
            normal_alarms[clip.domain] += len(starts)
            normal_seconds[clip.domain] += seconds
            normal_clips[clip.domain] += 1
            normal_clips_alarmed[clip.domain] += bool(starts)

    def per_hour(alarms: int, seconds: float) -> float | None:
        return None if seconds <= 0 else alarms * SECONDS_PER_HOUR / seconds

    def share(part: int, whole: int) -> float | None:
        return None if whole == 0 else part / whole

    total_alarms = sum(normal_alarms.values())
    total_seconds = sum(normal_seconds.values())
    return {
        "threshold": float(detector.threshold),
        "trigger_windows": detector.trigger_windows,
        "release_windows": detector.release_windows,
        "normal_hours": total_seconds / SECONDS_PER_HOUR,
        "false_alarms": total_alarms,
        "false_alarms_per_hour": per_hour(total_alarms, total_seconds),
        "false_alarms_per_hour_source": per_hour(normal_alarms[SOURCE], normal_seconds[SOURCE]),
        "false_alarms_per_hour_target": per_hour(normal_alarms[TARGET], normal_seconds[TARGET]),
        "normal_clips_with_alarm": share(
            sum(normal_clips_alarmed.values()), sum(normal_clips.values())
        ),
        "anomalous_clips": n_anomalous,
        "anomalous_clips_caught": share(caught, n_anomalous),
        "median_seconds_to_alarm": float(np.median(delays)) if delays else None,
    }


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class _TrainSet:
    embeddings: np.ndarray
    labels: list[str]
    window_counts: list[int]
    levels: list[float]
    """RMS level (dBFS) of every window."""
    n_clips: dict[str, int]
    skipped: list[str]
    views: dict[str, np.ndarray] | None
    """Raw features of every window per feature view (calibration.view_features), or None."""


def _embed_train(
    section: Section,
    encoder: EmbeddingModel,
    framing: Framing,
    bar: tqdm,
    feature_views: Sequence[str] = (),
) -> _TrainSet:
    window_samples, hop_samples = framing.window_samples, framing.hop_samples
    parts: list[np.ndarray] = []
    labels: list[str] = []
    counts: list[int] = []
    levels: list[float] = []
    n_clips = {SOURCE: 0, TARGET: 0}
    skipped: list[str] = []
    signals: list[np.ndarray] = []
    for clip in section.train:
        try:
            x = read_wav(clip.path)
        except AudioFileError as exc:
            _LOGGER.error("skipping train file: %s", exc)
            skipped.append(str(exc))
            bar.update(1)
            continue
        embeddings = embed_recording(encoder, x, window_samples, hop_samples, levels=levels)
        count = embeddings.shape[0]
        bar.update(1)
        if count == 0:
            _LOGGER.warning("%s: shorter than one window; skipped", clip.path)
            skipped.append(f"{clip.path}: shorter than one window ({window_samples} samples)")
            continue
        parts.append(embeddings)
        if feature_views:
            signals.append(x)
        labels.extend([clip.domain] * count)
        counts.append(count)
        n_clips[clip.domain] += 1
    if not parts:
        raise EvaluationError(f"section {section.name}: no usable train clips")
    views = view_features(signals, counts, framing, feature_views) if feature_views else None
    return _TrainSet(np.concatenate(parts, axis=0), labels, counts, levels, n_clips, skipped, views)


def _write_scores(path: Path, names: Sequence[str], scores: Sequence[float]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for name, score in zip(names, scores, strict=True):
            writer.writerow([name, f"{score:.8g}"])


def _detector_settings(
    section: Section, bundle: Bundle, decision: str, trigger_windows: int, release_windows: int
) -> DetectorSettings | None:
    """The daemon's detector for the section's calibration, or None (logged) when no threshold
    the daemon could run at came out (e.g. a non-positive one of "difference" scores)."""
    evidence = bundle.evidence if decision == "evidence" else None
    try:
        return DetectorSettings(
            threshold=evidence.reference if evidence is not None else bundle.threshold,
            trigger_windows=trigger_windows,
            release_windows=release_windows,
            evidence=evidence,
        )
    except ValueError as exc:
        _LOGGER.warning("section %s: no operating point (%s)", section.name, exc)
        return None


def _evaluate_section(
    section: Section,
    out_dir: Path,
    encoder: EmbeddingModel,
    framing: Framing,
    calibration: CalibrationConfig,
    aggregate: str,
    decision: str,
    trigger_windows: int,
    release_windows: int,
    progress: bool,
) -> dict[str, Any]:
    total = len(section.train) + len(section.test)
    with tqdm(
        total=total, unit="clip", desc=section.name, file=sys.stderr, disable=not progress
    ) as bar:
        feature_views = [v for v in requested_views(calibration) if v in FEATURE_VIEWS]
        train = _embed_train(section, encoder, framing, bar, feature_views)
        n_windows = train.embeddings.shape[0]
        if n_windows <= calibration.k:
            raise EvaluationError(
                f"section {section.name}: {n_windows} train windows, "
                f"need more than k={calibration.k}"
            )
        # The section is calibrated exactly as `edge-asd calibrate` would (folds, bank, held-out
        # threshold, evidence decision for the budget), so the operating point is the daemon's.
        audio = EmbeddedAudio(
            train.embeddings,
            train.window_counts,
            np.asarray(train.levels),
            train.labels,
            train.views,
        )
        try:
            bundle = build_bundle(
                audio,
                framing,
                calibration,
                model=encoder.info,
                sources=[str(c.path) for c in section.train],
                # A section is calibrated like a machine, but a small one is still scored.
                min_windows=calibration.k + 1,
            )
        except CalibrationError as exc:
            raise EvaluationError(
                f"section {section.name}: {exc} (k={calibration.k}, "
                f"rho_scope {calibration.rho_scope!r})"
            ) from exc
        bank = bundle.memory_bank()
        detector = _detector_settings(section, bundle, decision, trigger_windows, release_windows)
        # With detector settings, each clip also runs through the daemon's detector (closed at
        # the clip's end, so no event carries over to the next clip).
        scorer = ClipScorer(
            encoder,
            bank,
            method=calibration.scoring,
            window_samples=framing.window_samples,
            hop_samples=framing.hop_samples,
            aggregate=aggregate,
            detector=detector,
            views=bundle.views,
        )
        scored: list[LabelledClip] = []
        clip_scores: list[float] = []
        recordings: list[RecordingResult] = []
        durations: list[float] = []
        skipped = list(train.skipped)
        for clip in section.test:
            try:
                x = read_wav(clip.path)
                result = scorer.score_clip(x)
            except (AudioFileError, ValueError) as exc:
                message = str(exc) if isinstance(exc, AudioFileError) else f"{clip.path}: {exc}"
                _LOGGER.error("skipping test file: %s", message)
                skipped.append(message)
                bar.update(1)
                continue
            scored.append(clip)
            clip_scores.append(result.clip_score)
            recordings.append(result.recording)
            # The clip's own length: a short clip is scored zero-padded to one window, but the
            # padding is not audio the machine made.
            durations.append(x.size / SAMPLE_RATE_HZ)
            bar.update(1)
    if not scored:
        raise EvaluationError(f"section {section.name}: no test clip could be scored")
    csv_path = out_dir / section.csv_name
    _write_scores(csv_path, [c.path.name for c in scored], clip_scores)
    try:
        section_metrics = dcase_section_metrics(
            [c.is_anomaly for c in scored], clip_scores, [c.domain for c in scored]
        )
    except ValueError as exc:
        raise EvaluationError(f"section {section.name}: {exc}") from exc
    result_dict: dict[str, Any] = {
        "auc_source": section_metrics.auc_source,
        "auc_target": section_metrics.auc_target,
        "pauc": section_metrics.pauc,
        "n_train_clips": sum(train.n_clips.values()),
        "n_train_clips_source": train.n_clips[SOURCE],
        "n_train_clips_target": train.n_clips[TARGET],
        "n_train_windows": int(n_windows),
        "n_test_source_normal": section_metrics.n_source_normal,
        "n_test_target_normal": section_metrics.n_target_normal,
        "n_test_anomaly": section_metrics.n_anomaly,
        "scores_csv": csv_path.name,
        "skipped_files": skipped,
        "operating_point": None,
        # What calibration chose for the section: used or not, weight and why, per view.
        "views": None if bundle.report is None else bundle.report.get("views"),
    }
    if detector is not None:
        result_dict["operating_point"] = operating_point(scored, recordings, durations, detector)
        result_dict["operating_point"]["decision"] = (
            "evidence" if detector.evidence is not None else "hysteresis"
        )
        result_dict["operating_point"]["threshold_method"] = calibration.threshold_method
        result_dict["operating_point"]["threshold_percentile"] = calibration.threshold_percentile
    return result_dict


def evaluate(
    root: Path | str,
    out_dir: Path | str,
    encoder: EmbeddingModel,
    *,
    method: str = _CALIBRATION_DEFAULTS.scoring,
    k: int = _CALIBRATION_DEFAULTS.k,
    rho_scope: str | None = None,
    window_samples: int | None = None,
    hop_samples: int | None = None,
    aggregate: str = DEFAULT_AGGREGATE,
    progress: bool = True,
    threshold_method: str = _CALIBRATION_DEFAULTS.threshold_method,
    threshold_percentile: float = _CALIBRATION_DEFAULTS.threshold_percentile,
    trigger_windows: int = DEFAULT_TRIGGER_WINDOWS,
    release_windows: int = DEFAULT_RELEASE_WINDOWS,
    decision: str = DEFAULT_DECISION_RULE,
    target_false_alarms_per_week: float = _CALIBRATION_DEFAULTS.target_false_alarms_per_week,
    views: str | Sequence[str] = _CALIBRATION_DEFAULTS.views,
) -> dict[str, Any]:
    """Evaluate `encoder` + memory bank on every section under ROOT; write CSVs and results.json.

    `window_samples` defaults to the model's window, `hop_samples` to 0.5 s (16 kHz samples);
    `rho_scope` (vocabulary.RhoScope) to calibration's default. Settings the config would refuse
    raise ValueError naming the key.
    Returns the results dict that is also written to OUT_DIR/results.json.
    """
    try:
        # Validated as the config's calibration section is, so both accept the same values.
        calibration = CalibrationConfig.from_dict(
            {
                "scoring": method,
                "k": k,
                "threshold_method": threshold_method,
                "threshold_percentile": threshold_percentile,
                "rho_scope": _CALIBRATION_DEFAULTS.rho_scope if rho_scope is None else rho_scope,
                "target_false_alarms_per_week": target_false_alarms_per_week,
                "views": views if isinstance(views, str) else list(views),
            }
        )
    except ConfigError as exc:
        raise ValueError("; ".join(f"{key}: {message}" for key, message in exc.items)) from None
    info = encoder.info
    window = window_samples if window_samples is not None else info.window_samples
    hop = hop_samples if hop_samples is not None else seconds_to_samples(DEFAULT_HOP_SECONDS)
    if info.window_samples > 0 and window != info.window_samples:
        raise ValueError(
            f"model {info.name} ({info.path}) takes windows of {info.window_samples} samples, "
            f"got window_samples={window}"
        )
    if decision not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {decision!r}; expected one of {DECISION_RULES}")
    if trigger_windows < 1 or release_windows < 1:
        raise ValueError("trigger_windows and release_windows must be at least 1")
    try:
        framing = Framing(window_samples=window, hop_samples=hop)
    except CalibrationError as exc:
        raise ValueError(str(exc)) from exc
    sections = discover_sections(root)
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    _LOGGER.info("evaluating %d sections under %s with %s scoring", len(sections), root, method)
    per_section: dict[str, dict[str, Any]] = {}
    for section in sections:
        per_section[section.name] = _evaluate_section(
            section,
            out_path,
            encoder,
            framing,
            calibration,
            aggregate,
            decision,
            trigger_windows,
            release_windows,
            progress,
        )
    # Official score: harmonic mean over every section's [AUC_source, AUC_target, pAUC].
    values: list[float] = []
    for s in per_section.values():
        values.extend(v for v in (s["auc_source"], s["auc_target"], s["pauc"]) if v is not None)
    results: dict[str, Any] = {
        "official_score": harmonic_mean(values),
        "sections": per_section,
        "model": {
            "name": info.name,
            "version": info.version,
            "sha256": info.sha256,
            "path": info.path,
        },
        "scoring": {
            "method": method,
            "k": k,
            "rho_scope": calibration.rho_scope,
            "window_seconds": window / SAMPLE_RATE_HZ,
            "hop_seconds": hop / SAMPLE_RATE_HZ,
            "aggregate": aggregate,
            "views": calibration.views,
        },
        "root": str(Path(root)),
    }
    (out_path / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _LOGGER.info("official score %.4f; results in %s", results["official_score"], out_path)
    return results


# ---------------------------------------------------------------------------------------------
# Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(results: Mapping[str, Any]) -> str:
    """A Markdown table: one row per section (AUCs and pAUC in %, operating point), then the
    official score, model and scoring settings."""
    header = (
        "| section | train clips (src/tgt) | AUC source % | AUC target % | pAUC % "
        "| false alarms/h (src/tgt) | faults caught % |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, sec in results["sections"].items():
        op = sec.get("operating_point") or {}
        fa = (
            f"{_num(op.get('false_alarms_per_hour'), '.1f')} "
            f"({_num(op.get('false_alarms_per_hour_source'), '.1f')}/"
            f"{_num(op.get('false_alarms_per_hour_target'), '.1f')})"
        )
        lines.append(
            f"| {name} | {sec['n_train_clips_source']}/{sec['n_train_clips_target']} "
            f"| {_pct(sec['auc_source'])} | {_pct(sec['auc_target'])} | {_pct(sec['pauc'])} "
            f"| {fa} | {_pct(op.get('anomalous_clips_caught'))} |"
        )
    model = results["model"]
    scoring = results["scoring"]
    lines.append("")
    lines.append(f"Official score (harmonic mean): {_pct(results['official_score'])} %")
    lines.append(
        f"Model {model['name']} v{model['version']} (sha256 {str(model['sha256'])[:12]}), "
        f"scoring {scoring['method']} k={scoring['k']} "
        f"rho_scope={scoring.get('rho_scope', LEGACY_RHO_SCOPE)}, "
        f"window {scoring['window_seconds']:g} s, "
        f"hop {scoring['hop_seconds']:g} s, clip score = {scoring['aggregate']} of windows"
    )
    return "\n".join(lines)


__all__ = [
    "EvaluationError",
    "evaluate",
    "format_table",
    "operating_point",
]
