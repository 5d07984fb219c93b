"""DCASE Task 2 metrics: ROC AUC, McClish partial AUC, harmonic mean, per-section scores.

AUCs match `sklearn.metrics.roc_auc_score` (with and without `max_fpr`) without depending on
scikit-learn; the harmonic mean is `scipy.stats.hmean` (offline code: the daemon never imports
this module, so scipy costs it nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import stats

_LOGGER = logging.getLogger(__name__)

DCASE_MAX_FPR: Final = 0.1
"""The false-positive-rate limit of the DCASE Task 2 pAUC."""

SOURCE: Final = "source"
TARGET: Final = "target"
BOOTSTRAP_ROUNDS: Final = 1000
"""Resamples of the paired bootstrap."""
BOOTSTRAP_CONFIDENCE: Final = 0.95


def _binary_inputs(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = np.asarray(y_true).astype(bool).astype(np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("ROC AUC needs both classes: got only one class in y_true")
    return y, s


def _trapezoid(y: npt.NDArray[np.float64], x: npt.NDArray[np.float64]) -> float:
    """Trapezoid-rule area (numpy 1.26 has no `np.trapezoid`; `np.trapz` is gone in 2.x)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_curve(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(fpr, tpr) of the ROC curve, one point per distinct score, collinear points dropped.

    Same points as `sklearn.metrics.roc_curve(drop_intermediate=True)`, starting at (0, 0).
    """
    y, s = _binary_inputs(y_true, scores)
    order = np.argsort(s, kind="mergesort")[::-1]
    s = s[order]
    y = y[order]
    # The last index of each run of equal scores: ties move the curve diagonally.
    distinct = np.where(np.diff(s))[0]
    threshold_idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[threshold_idx]
    fps = 1 + threshold_idx - tps
    if tps.size > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps = fps[keep]
        tps = tps[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def roc_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve; ties count one half (trapezoid), as scikit-learn."""
    fpr, tpr = roc_curve(y_true, scores)
    return _trapezoid(tpr, fpr)


def partial_auc(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, max_fpr: float = DCASE_MAX_FPR
) -> float:
    """McClish-standardised AUC over FPR in [0, max_fpr] (chance 0.5, perfect 1.0).

    Exactly `sklearn.metrics.roc_auc_score(y_true, scores, max_fpr=max_fpr)`.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, tpr = roc_curve(y_true, scores)
    if max_fpr == 1.0:
        return _trapezoid(tpr, fpr)
    stop = int(np.searchsorted(fpr, max_fpr, "right"))
    tpr_at_max = np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])
    tpr_part = np.append(tpr[:stop], tpr_at_max)
    fpr_part = np.append(fpr[:stop], max_fpr)
    area = _trapezoid(tpr_part, fpr_part)
    min_area = 0.5 * max_fpr**2
    max_area = max_fpr
    return 0.5 * (1 + (area - min_area) / (max_area - min_area))


def harmonic_mean(values: Iterable[float]) -> float:
    """`scipy.stats.hmean`: any zero gives 0; no values, negative or non-finite ones are a
    ValueError (scipy would return NaN)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("harmonic mean of no values")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"harmonic mean needs finite values >= 0, got {arr.tolist()}")
    # scipy returns 0 for a zero and NaN (with a warning) for negatives: checked above instead.
    return float(stats.hmean(arr))


@dataclass(frozen=True)
class SectionMetrics:
    """DCASE Task 2 metrics of one section (machine type); AUCs in [0, 1]."""

    auc_source: float
    auc_target: float | None
    """None when the section has no target-domain normal clips."""
    pauc: float
    n_source_normal: int
    n_target_normal: int
    n_anomaly: int

    def values(self) -> list[float]:
        """The values that enter the official score's harmonic mean."""
        out = [self.auc_source]
        if self.auc_target is not None:
            out.append(self.auc_target)
        out.append(self.pauc)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dcase_section_metrics(
    is_anomaly: Sequence[bool] | npt.ArrayLike,
    scores: npt.ArrayLike,
    domains: Sequence[str],
    *,
    max_fpr: float = DCASE_MAX_FPR,
) -> SectionMetrics:
    """AUC_source, AUC_target and pAUC of one section, as the DCASE 2023 Task 2 evaluator.

    AUC_<domain> uses that domain's normal clips and ALL anomalous clips (both domains); pAUC
    uses every clip of the section. `domains` holds "source" or "target" per clip.
    """
    y = np.asarray(is_anomaly).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    dom = np.asarray(list(domains), dtype=object)
    if not y.size == s.size == dom.size:
        raise ValueError(
            f"labels ({y.size}), scores ({s.size}) and domains ({dom.size}) differ in length"
        )
    unknown = set(dom.tolist()) - {SOURCE, TARGET}
    if unknown:
        raise ValueError(f"domains must be {SOURCE!r} or {TARGET!r}, got {sorted(unknown)}")
    if not y.any():
        raise ValueError("section has no anomalous clips; AUC is undefined")
    source_normal = (~y) & (dom == SOURCE)
    target_normal = (~y) & (dom == TARGET)
    if not source_normal.any():
        raise ValueError("section has no source-domain normal clips; AUC_source is undefined")
    source_sel = source_normal | y
    auc_source = roc_auc(y[source_sel], s[source_sel])
    auc_target: float | None = None
    if target_normal.any():
        target_sel = target_normal | y
        auc_target = roc_auc(y[target_sel], s[target_sel])
    pauc = partial_auc(y, s, max_fpr=max_fpr)
    return SectionMetrics(
        auc_source=auc_source,
        auc_target=auc_target,
        pauc=pauc,
        n_source_normal=int(source_normal.sum()),
        n_target_normal=int(target_normal.sum()),
        n_anomaly=int(y.sum()),
    )


def official_score(sections: Iterable[SectionMetrics]) -> float:
    """Harmonic mean over all sections' [AUC_source, AUC_target, pAUC] (missing target left out)."""
    values: list[float] = []
    for section in sections:
        values.extend(section.values())
    return harmonic_mean(values)


# ---------------------------------------------------------------------------------------------
# Paired bootstrap of the difference between two systems on the same test clips


@dataclass(frozen=True)
class PairedScores:
    """One section's labelled test clips, scored by two systems (same clips, same order)."""

    is_anomaly: Sequence[bool]
    domains: Sequence[str]
    """"source" or "target" per clip."""
    first: Sequence[float]
    second: Sequence[float]


@dataclass(frozen=True)
class BootstrapDifference:
    """score(first) - score(second) and its bootstrap interval, in score units (0-1)."""

    difference: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_bootstrap(
    sections: Mapping[str, PairedScores],
    groups: Mapping[str, Sequence[str]],
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
    confidence: float = BOOTSTRAP_CONFIDENCE,
) -> dict[str, BootstrapDifference]:
    """Per group of sections: official-style score (harmonic mean of the group's sections' AUC
    source, AUC target, pAUC) of `first` minus that of `second`, with a `confidence` interval.

    Each round resamples every section's clips with replacement within its four strata
    (normal/anomalous x source/target), the same draw for both systems: a paired comparison on
    the same audio. It covers the choice of test clips, not of training data or seeds.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    unknown = {name for members in groups.values() for name in members} - set(sections)
    if unknown:
        raise ValueError(f"groups name sections that were not given: {sorted(unknown)}")
    names = sorted(sections)
    labels = {n: np.asarray(sections[n].is_anomaly, dtype=bool) for n in names}
    domains = {n: np.asarray(list(sections[n].domains), dtype=object) for n in names}
    scores = {
        n: (
            np.asarray(sections[n].first, dtype=np.float64),
            np.asarray(sections[n].second, dtype=np.float64),
        )
        for n in names
    }
    rng = np.random.default_rng(seed)

    def group_scores(draws: Mapping[str, npt.NDArray[np.int64]]) -> dict[str, tuple[float, float]]:
        values: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in names}
        for n in names:
            idx = draws[n]
            for system in (0, 1):
                metrics = dcase_section_metrics(
                    labels[n][idx], scores[n][system][idx], domains[n][idx].tolist()
                )
                values[n][system].extend(metrics.values())
        return {
            g: (
                harmonic_mean(v for n in members for v in values[n][0]),
                harmonic_mean(v for n in members for v in values[n][1]),
            )
            for g, members in groups.items()
        }

    observed = group_scores({n: np.arange(labels[n].size) for n in names})
    strata = {
        n: [
            np.flatnonzero((labels[n] == anomalous) & (domains[n] == domain))
            for anomalous in (False, True)
            for domain in (SOURCE, TARGET)
        ]
        for n in names
    }
    diffs: dict[str, list[float]] = {g: [] for g in groups}
    for _ in range(rounds):
        draws = {
            n: np.concatenate([rng.choice(s, size=s.size) for s in strata[n] if s.size])
            for n in names
        }
        for g, (a, b) in group_scores(draws).items():
            diffs[g].append(a - b)
    tail = 100.0 * (1.0 - confidence) / 2.0
    return {
        g: BootstrapDifference(
            difference=observed[g][0] - observed[g][1],
            low=float(np.percentile(diffs[g], tail)),
            high=float(np.percentile(diffs[g], 100.0 - tail)),
        )
        for g in groups
    }
