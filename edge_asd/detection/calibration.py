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
index in the clip; `rho_scope` (vocabulary.RhoScope) decides which same-group entries are kept
out of rho. The final bank and every held-out fold's bank follow the same rule.

What to do comes from the config's `calibration` section as it is (`config.CalibrationConfig`,
which also holds the defaults); how to cut the audio, from the model and machine (`Framing`).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import msgspec
import numpy as np
from scipy import stats
from tqdm import tqdm

from edge_asd.config import CalibrationConfig
from edge_asd.constants import (
    DEFAULT_HOP_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    SAMPLE_RATE_HZ,
    seconds_to_samples,
)
from edge_asd.detection.bundle import Bundle
from edge_asd.detection.environment import environment_profile
from edge_asd.detection.evidence import fit_evidence
from edge_asd.detection.explain import BandProfile, band_profile
from edge_asd.detection.fusion import (
    FeatureBank,
    FeatureScaler,
    ViewDecision,
    ViewSet,
    choose_views,
    dead_feature_reason,
    fuse,
    view_norms,
)
from edge_asd.detection.memory_bank import (
    NO_EXCLUSION,
    RHO_FLOOR,
    MemoryBank,
    exclusion_windows_for,
)
from edge_asd.detection.pipeline import EmbeddingModel, embed_recording
from edge_asd.detection.running import running_profile
from edge_asd.detection.views import (
    available_views,
    compute_views,
    concat_features,
    content_hz,
    content_reason,
)
from edge_asd.detection.vocabulary import (
    AUTO_VIEWS,
    EMBEDDING_VIEW,
    FEATURE_VIEWS,
    THRESHOLD_METHODS,
    VIEWS,
)
from edge_asd.detection.windowing import iter_window_batches, window_count
from edge_asd.model.contract import ModelInfo

_LOGGER = logging.getLogger(__name__)

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
PROFILE_MAX_SECONDS: Final = 600.0
"""Audio the band profile (what explains events) is measured on at most: ten minutes describe
a machine's spectrum well, and hours would only cost time and memory at calibration."""
STRETCHES_PER_FOLD: Final = 2
"""Groups per contiguous fold: with one group per fold, a held-out bank of 2 folds would hold a
single stretch, and rho_scope "other_groups" would find no other group in it."""


class CalibrationError(Exception):
    """Calibration audio or settings cannot give a usable bundle (message says why)."""


@dataclass(frozen=True)
class Framing:
    """How the audio is cut into windows. Not part of the `calibration` section: the model
    fixes the window and each machine's config sets window and hop, so it is passed next to
    the section rather than copied into it."""

    window_samples: int
    """Samples at 16 kHz."""
    hop_samples: int
    """Samples at 16 kHz."""

    def __post_init__(self) -> None:
        if self.window_samples <= 0 or self.hop_samples <= 0:
            raise CalibrationError(
                f"window_samples ({self.window_samples}) and hop_samples ({self.hop_samples}) "
                "must be positive"
            )

    @classmethod
    def from_seconds(
        cls,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        hop_seconds: float = DEFAULT_HOP_SECONDS,
    ) -> Framing:
        """Window and hop given in seconds (a machine's config, the CLI), rounded to samples."""
        return cls(seconds_to_samples(window_seconds), seconds_to_samples(hop_seconds))

    @property
    def window_seconds(self) -> float:
        return self.window_samples / SAMPLE_RATE_HZ

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / SAMPLE_RATE_HZ

    def exclusion_windows(self, rho_scope: str) -> int:
        """memory_bank exclusion_windows that implements `rho_scope` at this window and hop."""
        return exclusion_windows_for(rho_scope, self.window_samples, self.hop_samples)


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
    window_counts: Sequence[int], n_folds: int, framing: Framing
) -> tuple[np.ndarray, np.ndarray, str]:
    """(fold per window, held-out score mask, scheme name "clips" or "contiguous").

    Whole clips per fold when there are at least `n_folds` clips and the folds come out balanced;
    otherwise contiguous stretches (one long recording, or one that dwarfs the others and would
    leave a fold's bank too small, which would inflate the threshold).
    """
    counts = [int(c) for c in window_counts]
    n_windows = sum(counts)
    if sum(1 for c in counts if c > 0) >= n_folds:
        folds = clip_folds(counts, n_folds)
        largest = int(np.bincount(folds, minlength=n_folds).max())
        if largest <= MAX_FOLD_IMBALANCE * n_windows / n_folds:
            return folds, np.ones(n_windows, dtype=bool), "clips"
        _LOGGER.info(
            "clip lengths too uneven for whole-clip folds (largest fold %d of %d windows); "
            "using contiguous stretches",
            largest,
            n_windows,
        )
    folds = contiguous_folds(n_windows, n_folds)
    clip_ids = np.repeat(np.arange(len(counts)), counts)
    mask = overlap_free_mask(folds, clip_ids, framing.window_samples, framing.hop_samples)
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
    framing: Framing,
    config: CalibrationConfig,
    *,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
) -> MemoryBank:
    """A MemoryBank with `config`'s k and rho scope (no exclusion without groups)."""
    return MemoryBank(
        embeddings,
        k=config.k,
        labels=labels,
        groups=groups,
        positions=positions,
        exclusion_windows=(
            framing.exclusion_windows(config.rho_scope) if groups is not None else NO_EXCLUSION
        ),
    )


def heldout_scores(
    embeddings: np.ndarray,
    folds: np.ndarray,
    framing: Framing,
    config: CalibrationConfig,
    *,
    score_mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """Scores float32 of the windows where `score_mask` is true (all when None), in window order,
    each against a bank (own rho, with `config.rho_scope` applied through `groups` and
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
        if n_bank <= config.k:
            raise CalibrationError(
                f"fold {fold} leaves {n_bank} bank windows, too few for k={config.k}; "
                "give more audio or fewer folds"
            )
        try:
            bank = bank_for(
                embeddings[~in_fold],
                framing,
                config,
                groups=None if groups is None else np.asarray(groups)[~in_fold],
                positions=None if positions is None else np.asarray(positions)[~in_fold],
            )
        except ValueError as exc:
            raise CalibrationError(f"fold {fold}: {exc} (rho_scope {config.rho_scope!r})") from exc
        out[held] = bank.score(embeddings[held], config.scoring)
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


def check_clip(clip: Clip) -> np.ndarray:
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


def _too_little_audio(n_windows: int, need: int, framing: Framing) -> CalibrationError:
    seconds = (framing.window_samples + (need - 1) * framing.hop_samples) / SAMPLE_RATE_HZ
    return CalibrationError(
        f"too little audio: {n_windows} windows, need at least {need} "
        f"(= {seconds:g} s of audio at hop {framing.hop_seconds:g} s)"
    )


def _check_encoder(encoder: EmbeddingModel, framing: Framing) -> None:
    info = encoder.info
    if info.sample_rate != SAMPLE_RATE_HZ:
        raise CalibrationError(
            f"model {info.name} ({info.path}) expects {info.sample_rate} Hz, calibration audio "
            f"is {SAMPLE_RATE_HZ} Hz"
        )
    if info.window_samples > 0 and info.window_samples != framing.window_samples:
        raise CalibrationError(
            f"model {info.name} ({info.path}) takes windows of {info.window_samples} samples, "
            f"settings ask for {framing.window_samples}"
        )


@dataclass(frozen=True)
class FileCheck:
    """What calibration saw in one recording (the report's `files`)."""

    name: str
    seconds: float
    dbfs: float
    """RMS level."""
    peak_dbfs: float
    clipped_fraction: float
    silent: bool
    windows: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("dbfs", "peak_dbfs"):
            if not math.isfinite(data[key]):
                data[key] = None  # digital silence: JSON has no -inf
        return data


def file_check(clip: Clip, x: np.ndarray, windows: int) -> FileCheck:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    level = _rms_dbfs(float(np.dot(x, x)), x.size)
    return FileCheck(
        name=clip.name,
        seconds=x.size / SAMPLE_RATE_HZ,
        dbfs=level,
        peak_dbfs=-math.inf if peak == 0.0 else 20.0 * math.log10(peak),
        clipped_fraction=float(np.count_nonzero(np.abs(x) >= CLIPPING_LEVEL)) / max(1, x.size),
        silent=level < SILENCE_DBFS,
        windows=windows,
    )


@dataclass(frozen=True)
class EmbeddedAudio:
    """Calibration audio after the encoder: what a bundle is computed from, and what `learn`
    extends without the audio."""

    embeddings: np.ndarray
    """float32 [N, D], every window of every clip in time order."""
    counts: list[int]
    """Windows per clip (0 for a clip shorter than one window)."""
    levels: np.ndarray
    """float32 [N] RMS level of each window (dBFS)."""
    labels: list[str] | None = None
    """Domain / condition per window, when the clips had one."""
    views: dict[str, np.ndarray] | None = None
    """float32 [N, D_view] raw features of every window for each feature view that could be
    computed (views.compute_views); None: the embedding only."""
    content_hz: float | None = None
    """Highest frequency with content in the audio (views.content_hz); None: not checked."""


# ---------------------------------------------------------------------------------------------
# Views


VIEW_BATCH_WINDOWS: Final = 64
"""Windows per feature batch: bounds the STFT's temporaries (about 8 MB at 64 windows)."""
NEEDS_POSITIVE_SCORES: Final = ("density", "raw")
"""Scoring methods whose scores views can be fused on (fusion works on log scores)."""


def requested_views(config: CalibrationConfig) -> list[str]:
    """The views `config.views` asks for (auto: all of them), each once, in vocabulary order
    for auto and in the given order otherwise."""
    if config.views == AUTO_VIEWS:
        return list(VIEWS)
    return list(dict.fromkeys(config.views))


def view_features(
    signals: Sequence[np.ndarray], counts: Sequence[int], framing: Framing, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Raw features [N, D] of every window of every signal (in `embed_all`'s order) for each
    feature view in `names` that can be computed at this framing."""
    reasons = available_views(framing.window_samples, names)
    usable = [name for name in names if reasons[name] is None]
    if not usable:
        return {}
    parts = []
    for x, count in zip(signals, counts, strict=True):
        if count == 0:
            continue
        for batch in iter_window_batches(
            x, framing.window_samples, framing.hop_samples, VIEW_BATCH_WINDOWS
        ):
            parts.append(compute_views(batch, usable))
    return concat_features(parts, usable)


@dataclass(frozen=True)
class _ViewChoice:
    views: ViewSet | None
    """None: the embedding alone, unfused."""
    scores: np.ndarray
    """Held-out scores the threshold is fitted on (fused, or the embedding's)."""
    decisions: list[ViewDecision]


def _choose(
    audio: EmbeddedAudio,
    embedding_scores: np.ndarray,
    folds: np.ndarray,
    mask: np.ndarray,
    framing: Framing,
    config: CalibrationConfig,
    groups: np.ndarray,
    positions: np.ndarray,
) -> _ViewChoice:
    """Score each requested feature view held-out, choose the views, fuse."""
    names = requested_views(config)
    auto = config.views == AUTO_VIEWS
    wanted = [name for name in names if name in FEATURE_VIEWS]
    skipped: dict[str, str] = {}
    if wanted and config.scoring not in NEEDS_POSITIVE_SCORES:
        skipped = {
            name: f"{name}: views are fused on log scores; scoring {config.scoring!r} gives "
            f"signed scores (use one of {NEEDS_POSITIVE_SCORES}); skipped"
            for name in wanted
        }
        wanted = []
    for name, reason in available_views(framing.window_samples, wanted).items():
        if reason is None and audio.content_hz is not None:
            reason = content_reason(name, audio.content_hz)
        if reason is not None:
            skipped[name] = f"{name}: {reason}; skipped"
    heldout: dict[str, np.ndarray] = {}
    if EMBEDDING_VIEW in names:
        heldout[EMBEDDING_VIEW] = embedding_scores
    scalers: dict[str, FeatureScaler] = {}
    features = audio.views or {}
    for name in wanted:
        if name in skipped:
            continue
        if name not in features:
            skipped[name] = f"{name}: no features of this view were computed (no audio); skipped"
            continue
        scaler = FeatureScaler.fit(features[name])
        dead = dead_feature_reason(name, scaler)
        if dead is not None:
            skipped[name] = dead
            continue
        scalers[name] = scaler
        heldout[name] = heldout_scores(
            scaler.transform(features[name]),
            folds,
            framing,
            config,
            score_mask=mask,
            groups=groups,
            positions=positions,
        )
    if not heldout:
        raise CalibrationError(
            f"none of the views {names} can be computed: " + "; ".join(skipped.values())
        )
    decisions = choose_views(heldout, folds[mask], auto=auto, skipped=skipped)
    norms = view_norms(decisions)
    if not norms:
        raise CalibrationError("no view is usable: " + "; ".join(d.reason for d in decisions))
    if list(norms) == [EMBEDDING_VIEW]:
        return _ViewChoice(None, embedding_scores, decisions)
    banks = {}
    for name in norms:
        if name == EMBEDDING_VIEW:
            continue
        bank = bank_for(
            scalers[name].transform(features[name]),
            framing,
            config,
            groups=groups,
            positions=positions,
        )
        banks[name] = FeatureBank(features[name], bank.rho, scalers[name])
    view_set = ViewSet(norms, banks, k=config.k, method=config.scoring)
    return _ViewChoice(view_set, fuse(heldout, norms), decisions)


def calibrate(
    clips: Sequence[Clip],
    encoder: EmbeddingModel,
    framing: Framing,
    config: CalibrationConfig | None = None,
    *,
    off_clips: Sequence[Clip] = (),
    progress: bool = True,
    sources: Sequence[str] | None = None,
) -> Bundle:
    """Build a bundle from normal clips (16 kHz float32): bank of all windows, threshold and
    evidence decision from held-out windows, running-level profile, calibration report.
    `off_clips`: recordings of the stopped machine (the room without it), optional. `config`
    is the `calibration` section (its defaults when None), already validated; `sources` (e.g.
    file paths) default to the clip names."""
    if config is None:
        config = CalibrationConfig()
    _check_encoder(encoder, framing)
    if not clips:
        raise CalibrationError("no calibration clips given")
    checked = [check_clip(clip) for clip in clips]
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
    counts = [window_count(x.size, framing.window_samples, framing.hop_samples) for x in checked]
    for clip, count in zip(clips, counts, strict=True):
        if count == 0:
            _LOGGER.warning(
                "clip %s is shorter than one window (%d samples); skipped",
                clip.name,
                framing.window_samples,
            )
    n_windows = sum(counts)
    if n_windows < max(config.min_windows, config.k + 1):
        raise _too_little_audio(n_windows, config.min_windows, framing)
    files = [file_check(c, x, n) for c, x, n in zip(clips, checked, counts, strict=True)]
    embeddings, levels = embed_all(checked, counts, encoder, framing, progress)
    labels: list[str] | None = None
    if any(clip.label is not None for clip in clips):
        labels = [
            clip.label or ""
            for clip, count in zip(clips, counts, strict=True)
            for _ in range(count)
        ]
    wanted = [name for name in requested_views(config) if name in FEATURE_VIEWS]
    features = view_features(checked, counts, framing, wanted) if wanted else None
    audio = EmbeddedAudio(
        embeddings, counts, levels, labels, features, content_hz(checked) if wanted else None
    )
    off: EmbeddedAudio | None = None
    off_files: list[FileCheck] = []
    if off_clips:
        off_checked = [check_clip(clip) for clip in off_clips]
        off_counts = [
            window_count(x.size, framing.window_samples, framing.hop_samples) for x in off_checked
        ]
        off_files = [
            file_check(c, x, n) for c, x, n in zip(off_clips, off_checked, off_counts, strict=True)
        ]
        if sum(off_counts) == 0:
            raise CalibrationError(
                "the recordings of the stopped machine are shorter than a window"
            )
        off_emb, off_levels = embed_all(off_checked, off_counts, encoder, framing, progress)
        off = EmbeddedAudio(off_emb, off_counts, off_levels)
    bundle = build_bundle(
        audio,
        framing,
        config,
        model=encoder.info,
        sources=list(sources) if sources is not None else [clip.name for clip in clips],
        files=files,
        off=off,
        off_files=off_files,
    )
    bundle.band_profile = normal_band_profile(checked)
    try:
        bundle.environment = environment_profile(checked)
    except ValueError as exc:
        _LOGGER.warning("calibration: no environment profile (%s)", exc)
    return bundle


def normal_band_profile(clips: Sequence[np.ndarray]) -> BandProfile:
    """The band profile of normal audio: every clip concatenated, or, beyond
    `PROFILE_MAX_SECONDS`, an equal share of each clip from its middle (so every recording
    contributes in proportion to its length)."""
    total = sum(x.size for x in clips)
    limit = round(PROFILE_MAX_SECONDS * SAMPLE_RATE_HZ)
    parts = []
    for x in clips:
        take = x.size if total <= limit else max(1, x.size * limit // total)
        start = (x.size - take) // 2
        parts.append(np.asarray(x[start : start + take], dtype=np.float32))
    return band_profile(np.concatenate(parts), sample_rate=SAMPLE_RATE_HZ)


def _heldout_sequences(
    counts: Sequence[int], folds: np.ndarray, mask: np.ndarray, scores: np.ndarray
) -> tuple[list[np.ndarray], list[int]]:
    """Held-out scores cut into time-ordered runs (one clip, one fold, no left-out window), and
    the fold of each: the streams a detector would have seen."""
    clip_ids = np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=np.int64))
    index = np.full(mask.shape[0], -1, dtype=np.int64)
    index[mask] = np.arange(int(np.count_nonzero(mask)))
    sequences: list[np.ndarray] = []
    fold_of: list[int] = []
    start = None
    for i in range(mask.shape[0] + 1):
        boundary = (
            i == mask.shape[0]
            or not mask[i]
            or (start is not None and (clip_ids[i] != clip_ids[start] or folds[i] != folds[start]))
        )
        if boundary and start is not None:
            sequences.append(scores[index[start] : index[i - 1] + 1])
            fold_of.append(int(folds[start]))
            start = None
        if i < mask.shape[0] and mask[i] and start is None:
            start = i
    return sequences, fold_of


def _off_warnings(
    off: EmbeddedAudio, audio: EmbeddedAudio, bank: MemoryBank, heldout_raw_median: float
) -> list[str]:
    """Plain warnings when the 'stopped machine' recordings look like the running machine."""
    warnings = []
    running_low = float(np.quantile(audio.levels, 0.05))
    # `learn` passes the stored off windows without their levels: the level check ran then.
    off_level = float(np.median(off.levels)) if off.levels.size else -np.inf
    if off_level >= running_low - 3.0:
        warnings.append(
            f"the recordings of the stopped machine are at the running level ({off_level:.1f} "
            f"dBFS vs {running_low:.1f} dBFS for the quietest running windows): was the machine "
            "really off? Stops will then be told only by how they sound"
        )
    raw = bank.score(off.embeddings, "raw")
    close = float(np.mean(raw <= heldout_raw_median))
    if close > 0.5:
        warnings.append(
            f"{100 * close:.0f} % of the windows of the stopped machine sound like the running "
            "machine: they seem to contain machine sound; record the room with the machine off"
        )
    return warnings


def build_bundle(
    audio: EmbeddedAudio,
    framing: Framing,
    config: CalibrationConfig,
    *,
    model: ModelInfo,
    sources: Sequence[str],
    files: Sequence[FileCheck] = (),
    off: EmbeddedAudio | None = None,
    off_files: Sequence[FileCheck] = (),
    extra_warnings: Sequence[str] = (),
    min_windows: int | None = None,
) -> Bundle:
    """Everything calibration decides from embedded normal audio: bank, held-out threshold,
    evidence decision for the false-alarm budget, running profile and report. `min_windows`
    overrides the config's (the offline evaluation scores even tiny sections)."""
    counts = audio.counts
    n_windows = sum(counts)
    need = config.min_windows if min_windows is None else min_windows
    if n_windows < max(need, config.k + 1):
        raise _too_little_audio(n_windows, need, framing)
    embeddings = audio.embeddings
    folds, mask, scheme = assign_folds(counts, config.folds, framing)
    groups, positions = window_groups(counts, scheme, config.folds)
    scores = heldout_scores(
        embeddings, folds, framing, config, score_mask=mask, groups=groups, positions=positions
    )
    choice = _choose(audio, scores, folds, mask, framing, config, groups, positions)
    scores = choice.scores
    threshold = fit_threshold(scores, config.threshold_method, config.threshold_percentile)
    normal_stats = normal_score_stats(scores)
    normal_stats.update(
        {
            "fold_scheme": scheme,
            "folds": config.folds,
            "windows_left_out": int(np.count_nonzero(~mask)),
        }
    )
    sequences, fold_of = _heldout_sequences(counts, folds, mask, scores)
    try:
        fit = fit_evidence(
            sequences,
            fold_of,
            hop_seconds=framing.hop_seconds,
            window_seconds=framing.window_seconds,
            target_per_week=config.target_false_alarms_per_week,
            reference_quantile=config.reference_quantile,
            release_score=threshold,
        )
    except ValueError as exc:
        raise CalibrationError(f"evidence decision: {exc}") from exc
    profile = running_profile(audio.levels)
    _LOGGER.info(
        "calibrated on %d windows from %d clips (%s folds): threshold %.4g (%s, %.4g); "
        "evidence: reference %.4g, alarm level %.3g, expected %.3g false alarms "
        "per week",
        n_windows,
        sum(1 for c in counts if c),
        scheme,
        threshold,
        config.threshold_method,
        config.threshold_percentile,
        fit.settings.reference,
        fit.settings.alarm_level,
        fit.expected_false_alarms_per_week,
    )
    try:
        bank = bank_for(
            embeddings, framing, config, groups=groups, positions=positions, labels=audio.labels
        )
    except ValueError as exc:
        raise CalibrationError(f"{exc} (rho_scope {config.rho_scope!r})") from exc
    warnings = list(extra_warnings) + list(fit.warnings)
    warnings += [d.reason for d in choice.decisions if d.warning]
    n_duplicates = int(np.count_nonzero(bank.rho < RHO_FLOOR))
    if n_duplicates:
        # Exact repeats (looped files, digital silence) make rho_K zero, which inflates the
        # density score of anything near them: worth knowing about.
        warnings.append(
            f"{n_duplicates} of {n_windows} calibration windows have exact duplicates within "
            f"k={config.k}; looped or silent material?"
        )
    if off is not None:
        heldout_raw = heldout_scores(
            embeddings,
            folds,
            framing,
            msgspec.structs.replace(config, scoring="raw"),
            score_mask=mask,
            groups=groups,
            positions=positions,
        )
        warnings.extend(_off_warnings(off, audio, bank, float(np.median(heldout_raw))))
    for warning in warnings:
        _LOGGER.warning("calibration: %s", warning)
    report = {
        "report_version": 1,
        "model": model.to_dict(),
        "files": [f.to_dict() for f in files],
        "off_files": [f.to_dict() for f in off_files],
        "windows": {
            "total": n_windows,
            "heldout_scored": int(np.count_nonzero(mask)),
            "left_out": int(np.count_nonzero(~mask)),
            "fold_scheme": scheme,
            "folds": config.folds,
            "seconds": n_windows * framing.hop_seconds,
        },
        "threshold": {
            "window_threshold": threshold,
            "method": config.threshold_method,
            "percentile": config.threshold_percentile,
            "heldout_scores": normal_stats,
        },
        "decision": fit.to_dict(),
        "running_profile": profile.to_dict(),
        "views": {
            "requested": config.views,
            "scored_on": "embedding" if choice.views is None else "fused",
            "views": [d.to_dict() for d in choice.decisions],
        },
        "stopped_machine_recordings": None if off is None else int(off.embeddings.shape[0]),
        "warnings": warnings,
    }
    return Bundle(
        embeddings=bank.embeddings,
        rho=bank.rho,
        labels=audio.labels,
        groups=groups,
        positions=positions,
        rho_scope=config.rho_scope,
        exclusion_windows=bank.exclusion_windows,
        k=config.k,
        method=config.scoring,
        threshold=threshold,
        threshold_method=config.threshold_method,
        threshold_percentile=config.threshold_percentile,
        normal_stats=normal_stats,
        model=model,
        window_samples=framing.window_samples,
        hop_samples=framing.hop_samples,
        sample_rate=SAMPLE_RATE_HZ,
        sources=list(sources),
        evidence=fit.settings,
        running_profile=profile,
        off_embeddings=None if off is None else off.embeddings,
        levels=audio.levels,
        target_false_alarms_per_week=config.target_false_alarms_per_week,
        views=choice.views,
        report=report,
    )


def embed_all(
    signals: Sequence[np.ndarray],
    counts: Sequence[int],
    encoder: EmbeddingModel,
    framing: Framing,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    parts: list[np.ndarray] = []
    levels: list[float] = []
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
                        framing.window_samples,
                        framing.hop_samples,
                        on_batch=bar.update,
                        levels=levels,
                    )
                )
            except ValueError as exc:
                raise CalibrationError(str(exc)) from exc
    return np.concatenate(parts, axis=0), np.asarray(levels, dtype=np.float32)
