"""Calibration: normal audio in, a bundle (memory bank + held-out threshold) out.

The threshold comes from HELD-OUT normal windows (docs/method.md, section 5): overlapping windows
of one recording are near-duplicates, so scoring a window against a bank that holds its
neighbours would underestimate normal scores. Windows are split into folds

- by whole clips when there are at least `folds` clips, or
- otherwise by contiguous stretches of the concatenated timeline, where the windows that overlap
  a window of another fold in time are left out of the held-out scoring (they stay in the banks),

and each fold is scored against a bank built, with its own rho, from the other folds.

Every bank entry carries its group (the clip it came from; with contiguous folds, the part of a
clip inside one stretch, so that a single long recording still has several groups) and its window
index in the clip; `rho_scope` (memory_bank.RhoScope) decides which same-group entries are kept
out of rho. The final bank and every held-out fold's bank follow the same rule.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from scipy import stats
from tqdm import tqdm

from edge_asd.constants import (
    DEFAULT_HOP_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    SAMPLE_RATE_HZ,
    seconds_to_samples,
)
from edge_asd.detection.bundle import Bundle
from edge_asd.detection.memory_bank import (
    NO_EXCLUSION,
    RHO_FLOOR,
    RHO_SCOPES,
    MemoryBank,
    exclusion_windows_for,
)
from edge_asd.detection.methods import DEFAULT_SCORE_METHOD, SCORE_METHODS
from edge_asd.detection.pipeline import EmbeddingModel, embed_recording
from edge_asd.detection.windowing import window_count

_LOGGER = logging.getLogger(__name__)

ThresholdMethod = Literal["gamma", "quantile"]
THRESHOLD_METHODS: Final = ("gamma", "quantile")

SILENCE_DBFS: Final = -70.0
"""RMS level (dB re full-scale square wave, i.e. RMS 1.0) under which the material is silence."""
CLIPPING_LEVEL: Final = 0.999
"""|sample| at or above this counts as clipped (full scale is 1.0)."""
MAX_CLIPPED_FRACTION: Final = 0.01
"""A clip with more clipped samples than this fraction is refused."""

GAMMA_LOC_MARGIN: Final = 0.01
"""The gamma location sits this fraction of the score range below min(0, lowest score)."""
MIN_GAMMA_SCORES: Final = 20
"""Fewer held-out scores than this: the gamma fit is not trusted, the quantile is used."""
MAX_FOLD_IMBALANCE: Final = 2.0
"""Whole-clip folds are used only if no fold holds more than this many times its fair share."""
STAT_QUANTILES: Final = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)
_TINY_RANGE: Final = 1e-12
STRETCHES_PER_FOLD: Final = 2
"""Groups per contiguous fold: with one group per fold, a held-out bank of 2 folds would hold a
single stretch, and rho_scope "other_groups" would find no other group in it."""


class CalibrationError(Exception):
    """Calibration audio or settings cannot give a usable bundle (message says why)."""


DEFAULT_WINDOW_SAMPLES: Final = seconds_to_samples(DEFAULT_WINDOW_SECONDS)
DEFAULT_HOP_SAMPLES: Final = seconds_to_samples(DEFAULT_HOP_SECONDS)
DEFAULT_K: Final = 1
DEFAULT_THRESHOLD_METHOD: Final = "gamma"
DEFAULT_THRESHOLD_PERCENTILE: Final = 0.995
DEFAULT_FOLDS: Final = 5
DEFAULT_MIN_WINDOWS: Final = 60
DEFAULT_RHO_SCOPE: Final = "all"
"""rho from other clips (or stretches) only, as the paper computes it over independent reference
items: better official score than "all" and "non_overlapping" at K = 1 and K = 16 on both
development sets (docs/benchmarks.md, "Detection on the development sets"). Overlapping windows
of one clip are near-duplicates; with them rho measures how smooth a clip is."""


@dataclass(frozen=True, init=False)
class CalibrationSettings:
    """How to cut, score and threshold the calibration material.

    Keyword-only. The fields after the framing mirror the `calibration` section of the config,
    so ``CalibrationSettings(window_samples=w, hop_samples=h, **cfg.calibration.model_dump())``
    works; `method=` is accepted as another name for `scoring` (the name Bundle and ClipScorer
    use).
    """

    window_samples: int
    """Samples at 16 kHz."""
    hop_samples: int
    """Samples at 16 kHz."""
    scoring: str
    """Scoring method: density, difference or raw (memory_bank)."""
    k: int
    """Neighbours for the local density rho_K."""
    threshold_method: str
    """gamma or quantile."""
    threshold_percentile: float
    """Fraction of held-out normal windows under the threshold."""
    folds: int
    min_windows: int
    rho_scope: str
    """Which same-clip bank entries are kept out of rho_K: all, non_overlapping, other_groups."""

    def __init__(
        self,
        *,
        window_samples: int = DEFAULT_WINDOW_SAMPLES,
        hop_samples: int = DEFAULT_HOP_SAMPLES,
        scoring: str | None = None,
        k: int = DEFAULT_K,
        threshold_method: str = DEFAULT_THRESHOLD_METHOD,
        threshold_percentile: float = DEFAULT_THRESHOLD_PERCENTILE,
        folds: int = DEFAULT_FOLDS,
        min_windows: int = DEFAULT_MIN_WINDOWS,
        rho_scope: str = DEFAULT_RHO_SCOPE,
        method: str | None = None,
    ) -> None:
        if scoring is not None and method is not None and scoring != method:
            raise CalibrationError(f"scoring {scoring!r} and method {method!r} disagree")
        chosen = scoring if scoring is not None else method
        values = {
            "window_samples": int(window_samples),
            "hop_samples": int(hop_samples),
            "scoring": chosen if chosen is not None else DEFAULT_SCORE_METHOD,
            "k": int(k),
            "threshold_method": threshold_method,
            "threshold_percentile": float(threshold_percentile),
            "folds": int(folds),
            "min_windows": int(min_windows),
            "rho_scope": str(rho_scope),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: the dataclass way around it

    @property
    def method(self) -> str:
        """Alias of `scoring`."""
        return self.scoring

    @property
    def exclusion_windows(self) -> int:
        """memory_bank exclusion_windows for `rho_scope` at this window and hop."""
        return exclusion_windows_for(self.rho_scope, self.window_samples, self.hop_samples)

    @property
    def window_seconds(self) -> float:
        return self.window_samples / SAMPLE_RATE_HZ

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / SAMPLE_RATE_HZ

    def check(self) -> None:
        """Raise CalibrationError naming the bad field."""
        if self.window_samples <= 0 or self.hop_samples <= 0:
            raise CalibrationError(
                f"window_samples ({self.window_samples}) and hop_samples ({self.hop_samples}) "
                "must be positive"
            )
        if self.scoring not in SCORE_METHODS:
            raise CalibrationError(f"scoring method {self.scoring!r} is not one of {SCORE_METHODS}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise CalibrationError(
                f"threshold_method {self.threshold_method!r} is not one of {THRESHOLD_METHODS}"
            )
        if not 0.0 < self.threshold_percentile < 1.0:
            raise CalibrationError(
                f"threshold_percentile {self.threshold_percentile} must be in (0, 1)"
            )
        if self.folds < 2:
            raise CalibrationError(f"folds {self.folds} must be at least 2")
        if self.k < 1:
            raise CalibrationError(f"k {self.k} must be at least 1")
        if self.min_windows < 1:
            raise CalibrationError(f"min_windows {self.min_windows} must be at least 1")
        if self.rho_scope not in RHO_SCOPES:
            raise CalibrationError(f"rho_scope {self.rho_scope!r} is not one of {RHO_SCOPES}")


@dataclass(frozen=True)
class Clip:
    """One calibration recording."""

    name: str
    samples: np.ndarray
    """float32 1-D, 16 kHz, in [-1, 1]."""
    label: str | None = None
    """Optional domain / operating condition."""


# ---------------------------------------------------------------------------------------------
# Folds, held-out scores, threshold


def clip_folds(window_counts: Sequence[int], n_folds: int) -> np.ndarray:
    """Fold index per window, whole clips per fold; clips go largest first to the fold with the
    fewest windows so folds are balanced (deterministic)."""
    load = np.zeros(n_folds, dtype=np.int64)
    clip_fold = np.zeros(len(window_counts), dtype=np.int64)
    for i in sorted(range(len(window_counts)), key=lambda j: (-window_counts[j], j)):
        if window_counts[i] == 0:
            continue
        f = int(np.argmin(load))
        clip_fold[i] = f
        load[f] += window_counts[i]
    return np.repeat(clip_fold, np.asarray(window_counts, dtype=np.int64))


def contiguous_folds(n_windows: int, n_folds: int) -> np.ndarray:
    """Fold index per window: `n_folds` contiguous blocks of the window timeline."""
    return (np.arange(n_windows, dtype=np.int64) * n_folds) // max(1, n_windows)


def overlap_free_mask(
    folds: np.ndarray, clip_ids: np.ndarray, window_samples: int, hop_samples: int
) -> np.ndarray:
    """True for windows that overlap no window of another fold in time (same clip, start
    distance < window), i.e. those that may be scored held-out."""
    keep = np.ones(folds.shape[0], dtype=bool)
    n_overlapping = math.ceil(window_samples / hop_samples) - 1
    for offset in range(1, n_overlapping + 1):
        clash = (clip_ids[offset:] == clip_ids[:-offset]) & (folds[offset:] != folds[:-offset])
        keep[offset:] &= ~clash
        keep[:-offset] &= ~clash
    return keep


def assign_folds(
    window_counts: Sequence[int], settings: CalibrationSettings
) -> tuple[np.ndarray, np.ndarray, str]:
    """(fold per window, held-out score mask, scheme name "clips" or "contiguous").

    Whole clips per fold when there are at least `folds` clips and the folds come out balanced;
    otherwise contiguous stretches (one long recording, or one that dwarfs the others and would
    leave a fold's bank too small, which would inflate the threshold).
    """
    counts = [int(c) for c in window_counts]
    n_windows = sum(counts)
    if sum(1 for c in counts if c > 0) >= settings.folds:
        folds = clip_folds(counts, settings.folds)
        largest = int(np.bincount(folds, minlength=settings.folds).max())
        if largest <= MAX_FOLD_IMBALANCE * n_windows / settings.folds:
            return folds, np.ones(n_windows, dtype=bool), "clips"
        _LOGGER.info(
            "clip lengths too uneven for whole-clip folds (largest fold %d of %d windows); "
            "using contiguous stretches",
            largest,
            n_windows,
        )
    folds = contiguous_folds(n_windows, settings.folds)
    clip_ids = np.repeat(np.arange(len(counts)), counts)
    mask = overlap_free_mask(folds, clip_ids, settings.window_samples, settings.hop_samples)
    return folds, mask, "contiguous"


def window_groups(
    window_counts: Sequence[int], scheme: str, n_folds: int
) -> tuple[np.ndarray, np.ndarray]:
    """(group, position) int64 per window, for the bank's rho exclusion.

    position = window index within its clip. group = the clip index for whole-clip folds; for
    contiguous folds (`scheme` "contiguous", `n_folds` folds), one group per (clip, stretch)
    pair in timeline order, with STRETCHES_PER_FOLD stretches nested in each fold, so that a
    single long recording is split into independent stretches. (The one overlapping pair at a
    stretch boundary then counts as independent: a negligible leak.)
    """
    counts = np.asarray([int(c) for c in window_counts], dtype=np.int64)
    clip_ids = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    positions = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    if scheme == "clips" or clip_ids.size == 0:
        return clip_ids, positions
    # floor(i * S * F / n) // S == floor(i * F / n): every stretch lies inside one fold.
    stretches = contiguous_folds(clip_ids.size, STRETCHES_PER_FOLD * n_folds)
    # A new group wherever the clip or the stretch changes along the timeline.
    change = np.ones(clip_ids.size, dtype=bool)
    change[1:] = (clip_ids[1:] != clip_ids[:-1]) | (stretches[1:] != stretches[:-1])
    return np.cumsum(change) - 1, positions


def bank_for(
    embeddings: np.ndarray,
    settings: CalibrationSettings,
    *,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
) -> MemoryBank:
    """A MemoryBank with `settings`' k and rho scope (no exclusion without groups)."""
    return MemoryBank(
        embeddings,
        k=settings.k,
        labels=labels,
        groups=groups,
        positions=positions,
        exclusion_windows=settings.exclusion_windows if groups is not None else NO_EXCLUSION,
    )


def heldout_scores(
    embeddings: np.ndarray,
    folds: np.ndarray,
    settings: CalibrationSettings,
    *,
    score_mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """Scores float32 of the windows where `score_mask` is true (all when None), in window order,
    each against a bank (own rho, with `settings.rho_scope` applied through `groups` and
    `positions` when given) of the windows of all OTHER folds."""
    folds = np.asarray(folds)
    if folds.shape != (embeddings.shape[0],):
        raise ValueError(f"folds has shape {folds.shape}, expected ({embeddings.shape[0]},)")
    mask = np.ones(folds.shape[0], dtype=bool) if score_mask is None else np.asarray(score_mask)
    out = np.full(folds.shape[0], np.nan, dtype=np.float32)
    for fold in np.unique(folds):
        in_fold = folds == fold
        held = in_fold & mask
        if not held.any():
            continue
        n_bank = int(np.count_nonzero(~in_fold))
        if n_bank <= settings.k:
            raise CalibrationError(
                f"fold {fold} leaves {n_bank} bank windows, too few for k={settings.k}; "
                "give more audio or fewer folds"
            )
        try:
            bank = bank_for(
                embeddings[~in_fold],
                settings,
                groups=None if groups is None else np.asarray(groups)[~in_fold],
                positions=None if positions is None else np.asarray(positions)[~in_fold],
            )
        except ValueError as exc:
            raise CalibrationError(
                f"fold {fold}: {exc} (rho_scope {settings.rho_scope!r})"
            ) from exc
        out[held] = bank.score(embeddings[held], settings.scoring)
    return out[mask]


def fit_gamma(scores: np.ndarray) -> tuple[float, float, float] | None:
    """(shape, loc, scale) of a gamma fitted to `scores`, or None when the fit is not usable.

    The location is fixed (not fitted) just below min(0, lowest score): a free 3-parameter
    fit is unstable (it can put loc above the data or diverge for shape < 1), while the fixed
    location gives a well-posed 2-parameter MLE that also admits the negative scores of the
    difference method and exact-zero scores of duplicate windows.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size < MIN_GAMMA_SCORES or not np.all(np.isfinite(s)):
        return None
    spread = float(s.max() - s.min())
    if spread <= _TINY_RANGE:
        return None
    loc = min(0.0, float(s.min())) - GAMMA_LOC_MARGIN * spread
    try:
        shape, _, scale = stats.gamma.fit(s, floc=loc)
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        _LOGGER.warning("gamma fit of %d held-out scores failed: %s", s.size, exc)
        return None
    if not (np.isfinite(shape) and np.isfinite(scale) and shape > 0 and scale > 0):
        return None
    return float(shape), float(loc), float(scale)


def fit_threshold(scores: np.ndarray, method: str, percentile: float) -> float:
    """Threshold with `percentile` of the normal `scores` under it ("gamma" or "quantile");
    gamma falls back to the empirical quantile when the fit is not usable."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise CalibrationError("no finite held-out scores to set a threshold from")
    if method not in THRESHOLD_METHODS:
        raise CalibrationError(f"threshold_method {method!r} is not one of {THRESHOLD_METHODS}")
    if method == "gamma":
        params = fit_gamma(s)
        if params is not None:
            shape, loc, scale = params
            value = float(stats.gamma.ppf(percentile, shape, loc=loc, scale=scale))
            if np.isfinite(value):
                return value
        _LOGGER.warning(
            "gamma fit unusable for %d held-out scores; using the empirical quantile", s.size
        )
    return float(np.quantile(s, percentile))


def normal_score_stats(scores: np.ndarray) -> dict[str, Any]:
    """JSON-ready statistics of held-out normal window scores."""
    s = np.asarray(scores, dtype=np.float64)
    gamma = fit_gamma(s)
    return {
        "n": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std()),
        "min": float(s.min()),
        "max": float(s.max()),
        "median": float(np.median(s)),
        "quantiles": {str(q): float(np.quantile(s, q)) for q in STAT_QUANTILES},
        "gamma": None if gamma is None else {"shape": gamma[0], "loc": gamma[1], "scale": gamma[2]},
    }


# ---------------------------------------------------------------------------------------------
# Audio checks and embedding


def _check_clip(clip: Clip) -> np.ndarray:
    x = np.asarray(clip.samples)
    if x.ndim != 1:
        raise CalibrationError(f"clip {clip.name}: expected 1-D samples, got shape {x.shape}")
    if x.size == 0:
        raise CalibrationError(f"clip {clip.name}: no samples")
    x = x.astype(np.float32, copy=False)
    n_bad = int(np.count_nonzero(~np.isfinite(x)))
    if n_bad:
        raise CalibrationError(f"clip {clip.name}: {n_bad} samples are NaN or inf")
    clipped = float(np.count_nonzero(np.abs(x) >= CLIPPING_LEVEL)) / x.size
    if clipped > MAX_CLIPPED_FRACTION:
        raise CalibrationError(
            f"clip {clip.name}: {100 * clipped:.1f} % of samples are clipped "
            f"(|x| >= {CLIPPING_LEVEL}; at most {100 * MAX_CLIPPED_FRACTION:.0f} % allowed); "
            "lower the input gain"
        )
    return x


def _rms_dbfs(sum_squares: float, n: int) -> float:
    rms = math.sqrt(sum_squares / max(1, n))
    return -math.inf if rms == 0.0 else 20.0 * math.log10(rms)


def _too_little_audio(n_windows: int, settings: CalibrationSettings) -> CalibrationError:
    need = settings.min_windows
    seconds = (settings.window_samples + (need - 1) * settings.hop_samples) / SAMPLE_RATE_HZ
    return CalibrationError(
        f"too little audio: {n_windows} windows, need at least {need} "
        f"(= {seconds:g} s of audio at hop {settings.hop_seconds:g} s)"
    )


def _check_encoder(encoder: EmbeddingModel, settings: CalibrationSettings) -> None:
    info = encoder.info
    if info.sample_rate != SAMPLE_RATE_HZ:
        raise CalibrationError(
            f"model {info.name} ({info.path}) expects {info.sample_rate} Hz, calibration audio "
            f"is {SAMPLE_RATE_HZ} Hz"
        )
    if info.window_samples > 0 and info.window_samples != settings.window_samples:
        raise CalibrationError(
            f"model {info.name} ({info.path}) takes windows of {info.window_samples} samples, "
            f"settings ask for {settings.window_samples}"
        )


def calibrate(
    clips: Sequence[Clip],
    encoder: EmbeddingModel,
    settings: CalibrationSettings,
    *,
    progress: bool = True,
    sources: Sequence[str] | None = None,
) -> Bundle:
    """Build a bundle from normal clips (16 kHz float32): bank of all windows, threshold from
    held-out windows. `sources` (e.g. file paths) default to the clip names."""
    settings.check()
    _check_encoder(encoder, settings)
    if not clips:
        raise CalibrationError("no calibration clips given")
    checked = [_check_clip(clip) for clip in clips]
    # float32 dot (no float64 copy of hours of audio): ample precision for a level check.
    sum_squares = sum(float(np.dot(x, x)) for x in checked)
    n_samples = sum(x.size for x in checked)
    level = _rms_dbfs(sum_squares, n_samples)
    if level < SILENCE_DBFS:
        raise CalibrationError(
            f"calibration audio is silent: RMS level {level:.1f} dBFS over {len(clips)} clips "
            f"({n_samples / SAMPLE_RATE_HZ:g} s) is below {SILENCE_DBFS:g} dBFS; check the "
            "microphone and input gain"
        )
    counts = [window_count(x.size, settings.window_samples, settings.hop_samples) for x in checked]
    for clip, count in zip(clips, counts, strict=True):
        if count == 0:
            _LOGGER.warning(
                "clip %s is shorter than one window (%d samples); skipped",
                clip.name,
                settings.window_samples,
            )
    n_windows = sum(counts)
    if n_windows < max(settings.min_windows, settings.k + 1):
        raise _too_little_audio(n_windows, settings)

    embeddings = _embed_all(checked, counts, encoder, settings, progress)
    folds, mask, scheme = assign_folds(counts, settings)
    groups, positions = window_groups(counts, scheme, settings.folds)
    scores = heldout_scores(
        embeddings, folds, settings, score_mask=mask, groups=groups, positions=positions
    )
    threshold = fit_threshold(scores, settings.threshold_method, settings.threshold_percentile)
    normal_stats = normal_score_stats(scores)
    normal_stats.update(
        {
            "fold_scheme": scheme,
            "folds": settings.folds,
            "windows_left_out": int(np.count_nonzero(~mask)),
        }
    )
    _LOGGER.info(
        "calibrated on %d windows from %d clips (%s folds): threshold %.4g (%s, %.4g)",
        n_windows,
        len(clips),
        scheme,
        threshold,
        settings.threshold_method,
        settings.threshold_percentile,
    )
    labels: list[str] | None = None
    if any(clip.label is not None for clip in clips):
        labels = [
            clip.label or ""
            for clip, count in zip(clips, counts, strict=True)
            for _ in range(count)
        ]
    try:
        bank = bank_for(embeddings, settings, groups=groups, positions=positions, labels=labels)
    except ValueError as exc:
        raise CalibrationError(f"{exc} (rho_scope {settings.rho_scope!r})") from exc
    n_duplicates = int(np.count_nonzero(bank.rho < RHO_FLOOR))
    if n_duplicates:
        # Exact repeats (looped files, digital silence) make rho_K zero, which inflates the
        # density score of anything near them: worth knowing about.
        _LOGGER.warning(
            "%d of %d calibration windows have exact duplicates within k=%d; looped or "
            "silent material?",
            n_duplicates,
            n_windows,
            settings.k,
        )
    return Bundle(
        embeddings=bank.embeddings,
        rho=bank.rho,
        labels=labels,
        groups=groups,
        positions=positions,
        rho_scope=settings.rho_scope,
        exclusion_windows=bank.exclusion_windows,
        k=settings.k,
        method=settings.scoring,
        threshold=threshold,
        threshold_method=settings.threshold_method,
        threshold_percentile=settings.threshold_percentile,
        normal_stats=normal_stats,
        model=encoder.info,
        window_samples=settings.window_samples,
        hop_samples=settings.hop_samples,
        sample_rate=SAMPLE_RATE_HZ,
        sources=list(sources) if sources is not None else [clip.name for clip in clips],
    )


def _embed_all(
    signals: Sequence[np.ndarray],
    counts: Sequence[int],
    encoder: EmbeddingModel,
    settings: CalibrationSettings,
    progress: bool,
) -> np.ndarray:
    parts: list[np.ndarray] = []
    with tqdm(
        total=sum(counts),
        unit="window",
        desc="embedding",
        file=sys.stderr,
        disable=None if progress else True,  # None: shown on a terminal only, not in logs
    ) as bar:
        for x, count in zip(signals, counts, strict=True):
            if count == 0:
                continue
            try:
                parts.append(
                    embed_recording(
                        encoder,
                        x,
                        settings.window_samples,
                        settings.hop_samples,
                        on_batch=bar.update,
                    )
                )
            except ValueError as exc:
                raise CalibrationError(str(exc)) from exc
    return np.concatenate(parts, axis=0)
