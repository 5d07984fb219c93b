"""Calibration bundle: the memory bank, its threshold and everything needed to score with it.

On disk a bundle is a directory with two files:

- ``bank.npz``: ``embeddings`` float32 [N, D] (L2-normalised), ``rho`` float32 [N] and, when the
  calibration had them, ``labels`` (unicode [N]) and ``groups`` / ``positions`` (int64 [N]: the
  clip or stretch each window came from and its window index there, which decided the
  neighbours kept out of rho). Loaded with ``allow_pickle=False``.
- ``bundle.json``: every other field, human-readable, including ``rho_scope`` and
  ``exclusion_windows``, the calibrated sequential decision (``evidence``) and the running
  machine's level profile (``running_profile``) and the normal audio's 1/3-octave band profile
  (``band_profile``, explains events) and the band levels of every 10 s block of it
  (``environment``, tells a changed environment); ``off_embeddings`` in ``bank.npz`` holds the
  recordings of the stopped machine when calibration had them;
- ``report.json``: the calibration report (what was measured and decided, warnings).

Bundles written before the evidence decision, the running profile or the report existed still
load; without them the daemon falls back to the hysteresis on single windows and to the
digital-silence rule for stops.

Bundles written before groups existed (no ``has_groups`` key) still load, as format_version 1:
they read as rho_scope "all" without groups, which is what they were calibrated with. Scoring
never recomputes rho (the stored one is used), so their scores do not change.

Saving is crash-safe: both files are written and fsynced in a temporary directory next to the
target, which is then renamed into place. An existing bundle is first renamed aside and only
deleted after the new one is in place, so after a crash the target path holds either the old or
the new bundle, or (between the two renames) nothing, with the old one still next to it as
``.NAME.old-*``; never a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from edge_asd.detection.environment import EnvironmentProfile
from edge_asd.detection.evidence import EvidenceSettings
from edge_asd.detection.explain import BandProfile
from edge_asd.detection.fusion import FeatureBank, FeatureScaler, ViewNorm, ViewSet
from edge_asd.detection.memory_bank import NO_EXCLUSION, MemoryBank
from edge_asd.detection.methods import SCORE_METHODS
from edge_asd.detection.running import RunningProfile
from edge_asd.detection.vocabulary import RHO_SCOPES
from edge_asd.model.contract import ModelInfo

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
"""Groups and positions were added without a bump: their absence reads as the old behaviour."""
LEGACY_RHO_SCOPE: Final = "all"
"""rho_scope of a bundle that predates groups (rho over every other window)."""
BANK_FILE: Final = "bank.npz"
META_FILE: Final = "bundle.json"
REPORT_FILE: Final = "report.json"
BUNDLE_ID_HEX_CHARS: Final = 12
_SHA_SHOWN_CHARS: Final = 12
"""Hex characters of a model sha256 shown in error messages."""
_JSON_INDENT: Final = 2


class BundleError(Exception):
    """A bundle directory is missing, corrupt, of another format, or made for another model."""


def make_bundle_id(embeddings: np.ndarray, threshold: float, model_sha256: str) -> str:
    """Short stable id: first hex chars of sha256(embeddings bytes, threshold, model sha256)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    digest.update(repr(float(threshold)).encode())
    digest.update(model_sha256.encode())
    return digest.hexdigest()[:BUNDLE_ID_HEX_CHARS]


def utc_now_iso() -> str:
    """Current time as ISO 8601 UTC, seconds resolution."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(eq=False)
class Bundle:
    """A calibrated detector for one microphone / machine."""

    embeddings: np.ndarray
    """float32 [N, D], L2-normalised normal window embeddings."""
    rho: np.ndarray
    """float32 [N], local density rho_K of each entry (cosine-distance units)."""
    labels: list[str] | None
    """Optional domain / condition per entry; kept for inspection, never needed to score."""
    k: int
    method: str
    """Scoring method: density, difference or raw."""
    threshold: float
    """Window score above which a window counts as anomalous."""
    threshold_method: str
    """gamma or quantile."""
    threshold_percentile: float
    """Fraction of held-out normal windows under the threshold, e.g. 0.995."""
    normal_stats: dict[str, Any]
    """Held-out normal window score statistics (n, mean, std, quantiles, gamma parameters)."""
    model: ModelInfo
    window_samples: int
    hop_samples: int
    sample_rate: int
    """Hertz."""
    sources: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None
    """int64 [N] clip (or contiguous stretch) of each entry, or None (older bundles)."""
    positions: np.ndarray | None = None
    """int64 [N] window index of each entry within its clip, or None."""
    rho_scope: str = LEGACY_RHO_SCOPE
    """Which same-clip entries were kept out of rho (vocabulary.RhoScope)."""
    exclusion_windows: int = NO_EXCLUSION
    """Same-group entries closer than this many windows were not neighbours for rho."""
    evidence: EvidenceSettings | None = None
    """The calibrated sequential decision; None in bundles that predate it."""
    running_profile: RunningProfile | None = None
    """Level of the running machine, for telling it stopped; None in older bundles."""
    off_embeddings: np.ndarray | None = None
    """float32 [M, D] windows of the stopped machine (`calibrate --off-from-dir`), or None."""
    levels: np.ndarray | None = None
    """float32 [N] RMS level (dBFS) of each bank window, for `learn` to refit the running
    profile; None in older bundles."""
    target_false_alarms_per_week: float | None = None
    band_profile: BandProfile | None = None
    """1/3-octave levels of the normal audio, the reference that explains an event
    (`explain.explain`); None in older bundles (the daemon then uses the clip's pre-roll)."""
    environment: EnvironmentProfile | None = None
    """Band levels of each 10 s block of the normal audio: the conditions calibration heard
    (`detection.environment`); None in older bundles (no `environment_changed` then)."""
    views: ViewSet | None = None
    """The feature views fused with the embedding, their banks and normalisation; None: the
    embedding's score alone (older bundles, `views: [embedding]`, or what auto chose)."""
    report: dict[str, Any] | None = None
    """The calibration report (report.json)."""
    created: str = field(default_factory=utc_now_iso)
    """ISO 8601 UTC."""
    format_version: int = FORMAT_VERSION
    bundle_id: str = ""
    """Filled in from the content when left empty."""

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.rho = np.asarray(self.rho, dtype=np.float32)
        # numpy scalars (np.int64, np.float32) would not survive json.dump.
        self.k = int(self.k)
        self.threshold = float(self.threshold)
        self.threshold_percentile = float(self.threshold_percentile)
        self.window_samples = int(self.window_samples)
        self.hop_samples = int(self.hop_samples)
        self.sample_rate = int(self.sample_rate)
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=np.int64)
        if self.positions is not None:
            self.positions = np.asarray(self.positions, dtype=np.int64)
        if self.off_embeddings is not None:
            self.off_embeddings = np.asarray(self.off_embeddings, dtype=np.float32)
        if self.levels is not None:
            self.levels = np.asarray(self.levels, dtype=np.float32)
        self.rho_scope = str(self.rho_scope)
        self.exclusion_windows = int(self.exclusion_windows)
        if not self.bundle_id:
            self.bundle_id = make_bundle_id(self.embeddings, self.threshold, self.model.sha256)

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    def memory_bank(self) -> MemoryBank:
        """The bank with the stored rho (no recomputation)."""
        return MemoryBank(
            self.embeddings,
            k=self.k,
            labels=self.labels,
            rho=self.rho,
            groups=self.groups,
            positions=self.positions,
            exclusion_windows=self.exclusion_windows,
        )

    def off_bank(self) -> MemoryBank | None:
        """The stopped machine's windows as a bank (raw distances only), or None."""
        if self.off_embeddings is None or self.off_embeddings.shape[0] < 2:
            return None
        return MemoryBank(self.off_embeddings, k=1)

    def metadata(self) -> dict[str, Any]:
        """Everything except the arrays, as JSON-ready values."""
        return {
            "format_version": self.format_version,
            "bundle_id": self.bundle_id,
            "created": self.created,
            "model": self.model.to_dict(),
            "sample_rate": self.sample_rate,
            "window_samples": self.window_samples,
            "hop_samples": self.hop_samples,
            "k": self.k,
            "method": self.method,
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "threshold_percentile": self.threshold_percentile,
            "normal_stats": self.normal_stats,
            "n_entries": self.size,
            "embedding_dim": int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0,
            "has_labels": self.labels is not None,
            "has_groups": self.groups is not None,
            "rho_scope": self.rho_scope,
            "exclusion_windows": self.exclusion_windows,
            "sources": list(self.sources),
            "evidence": None if self.evidence is None else self.evidence.to_dict(),
            "running_profile": (
                None if self.running_profile is None else self.running_profile.to_dict()
            ),
            "has_off_embeddings": self.off_embeddings is not None,
            "has_levels": self.levels is not None,
            "target_false_alarms_per_week": self.target_false_alarms_per_week,
            "band_profile": None if self.band_profile is None else self.band_profile.to_dict(),
            "environment": None if self.environment is None else self.environment.to_dict(),
            "views": None if self.views is None else _views_meta(self.views),
        }


def _views_meta(views: ViewSet) -> dict[str, Any]:
    # `order` because bundle.json is written with sorted keys; fusion sums in this order.
    return {
        "order": views.names,
        "norms": {name: norm.to_dict() for name, norm in views.norms.items()},
        "scalers": {name: fb.scaler.to_dict() for name, fb in views.banks.items()},
    }


def _view_array(name: str, what: str) -> str:
    return f"view_{name}_{what}"


def _views_from(meta: dict[str, Any], npz: Any, k: int, method: str) -> ViewSet:
    norms = {name: ViewNorm.from_dict(meta["norms"][name]) for name in meta["order"]}
    banks = {
        name: FeatureBank(
            np.asarray(npz[_view_array(name, "features")], dtype=np.float32),
            np.asarray(npz[_view_array(name, "rho")], dtype=np.float32),
            FeatureScaler.from_dict(scaler),
        )
        for name, scaler in meta["scalers"].items()
    }
    return ViewSet(norms, banks, k=k, method=method)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_bundle(bundle: Bundle, out_dir: str | os.PathLike[str]) -> Path:
    """Write `bundle` to directory `out_dir` atomically (see the module docstring); returns it.

    Refuses to replace an existing path that is not a bundle directory, so a mistyped path never
    deletes user data.
    """
    target = Path(os.path.abspath(out_dir))  # "." or "x/" have no usable name otherwise
    if target.exists() and not (target.is_dir() and (target / META_FILE).is_file()):
        raise BundleError(
            f"cannot save bundle to {target}: it exists and is not a bundle directory"
        )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = parent / f".{target.name}.tmp-{token}"
    aside = parent / f".{target.name}.old-{token}"
    tmp.mkdir()
    try:
        arrays: dict[str, np.ndarray] = {"embeddings": bundle.embeddings, "rho": bundle.rho}
        if bundle.labels is not None:
            arrays["labels"] = np.asarray(bundle.labels, dtype=np.str_)
        if bundle.groups is not None and bundle.positions is not None:
            arrays["groups"] = bundle.groups
            arrays["positions"] = bundle.positions
        if bundle.off_embeddings is not None:
            arrays["off_embeddings"] = bundle.off_embeddings
        if bundle.levels is not None:
            arrays["levels"] = bundle.levels
        if bundle.views is not None:
            for name, fb in bundle.views.banks.items():
                arrays[_view_array(name, "features")] = fb.features
                arrays[_view_array(name, "rho")] = fb.rho
        with open(tmp / BANK_FILE, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(bundle.metadata(), fh, indent=_JSON_INDENT, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if bundle.report is not None:
            with open(tmp / REPORT_FILE, "w", encoding="utf-8") as fh:
                json.dump(bundle.report, fh, indent=_JSON_INDENT, allow_nan=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_path(tmp)
        if target.exists():
            os.rename(target, aside)
        os.rename(tmp, target)
        _fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not target.exists():
            os.rename(aside, target)
        raise
    if aside.exists():
        shutil.rmtree(aside, ignore_errors=True)
    _LOGGER.info("saved bundle %s (%d entries) to %s", bundle.bundle_id, bundle.size, target)
    return target


def _short(sha: str) -> str:
    return sha[:_SHA_SHOWN_CHARS] + "..."


def check_model(bundle: Bundle, model: ModelInfo, where: str) -> None:
    """Raise BundleError when `model` is not the encoder the bundle was calibrated with."""
    if model.sha256 != bundle.model.sha256:
        raise BundleError(
            f"bundle {where} was calibrated with model {bundle.model.name} "
            f"{bundle.model.version} (sha256 {_short(bundle.model.sha256)}) but the configured "
            f"model is {model.name} {model.version} (sha256 {_short(model.sha256)}); recalibrate"
        )


def _read_meta(directory: Path) -> dict[str, Any]:
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"bundle {directory}: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {directory}: {META_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"bundle {directory}: {META_FILE} is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {directory}: format_version {version!r} is not supported "
            f"(this edge-asd reads {FORMAT_VERSION}); recalibrate"
        )
    return meta


@dataclass(frozen=True)
class _BankArrays:
    embeddings: np.ndarray
    rho: np.ndarray
    labels: list[str] | None
    groups: np.ndarray | None
    positions: np.ndarray | None
    off_embeddings: np.ndarray | None
    levels: np.ndarray | None


def _read_bank(
    directory: Path,
    has_labels: bool,
    has_groups: bool,
    has_off: bool = False,
    has_levels: bool = False,
) -> _BankArrays:
    bank_path = directory / BANK_FILE
    if not bank_path.is_file():
        raise BundleError(f"bundle {directory}: {BANK_FILE} is missing")
    try:
        with np.load(bank_path, allow_pickle=False) as npz:
            embeddings = np.asarray(npz["embeddings"], dtype=np.float32)
            rho = np.asarray(npz["rho"], dtype=np.float32)
            labels = [str(x) for x in npz["labels"]] if has_labels else None
            groups = np.asarray(npz["groups"]) if has_groups else None
            positions = np.asarray(npz["positions"]) if has_groups else None
            off = np.asarray(npz["off_embeddings"], dtype=np.float32) if has_off else None
            levels = np.asarray(npz["levels"], dtype=np.float32) if has_levels else None
    except KeyError as exc:
        raise BundleError(f"bundle {directory}: {BANK_FILE} lacks array {exc}") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"bundle {directory}: {BANK_FILE} is corrupt ({exc})") from exc
    for name, arr in (("groups", groups), ("positions", positions)):
        if arr is not None and not np.issubdtype(arr.dtype, np.integer):
            raise BundleError(f"bundle {directory}: {name} in {BANK_FILE} are not integers")
    return _BankArrays(embeddings, rho, labels, groups, positions, off, levels)


def load_bundle(directory: str | os.PathLike[str], *, model: ModelInfo | None = None) -> Bundle:
    """Read and validate a bundle; with `model`, also check it is the calibrated encoder."""
    path = Path(directory)
    if not path.is_dir():
        hint = ""
        leftovers = sorted(Path(os.path.abspath(path)).parent.glob(f".{path.name}.old-*"))
        if leftovers:
            hint = f" (an interrupted save left the previous bundle at {leftovers[-1]})"
        raise BundleError(f"bundle {path}: directory does not exist{hint}")
    meta = _read_meta(path)
    try:
        info = ModelInfo.from_dict(meta["model"])
        has_labels = bool(meta["has_labels"])
        n_entries = int(meta["n_entries"])
        dim = int(meta["embedding_dim"])
        # Bundles from before groups existed lack these keys: the legacy behaviour.
        has_groups = bool(meta.get("has_groups", False))
        bank = _read_bank(
            path,
            has_labels,
            has_groups,
            bool(meta.get("has_off_embeddings")),
            bool(meta.get("has_levels")),
        )
        evidence = meta.get("evidence")
        profile = meta.get("running_profile")
        target = meta.get("target_false_alarms_per_week")
        bands = meta.get("band_profile")
        environment = meta.get("environment")
        views_meta = meta.get("views")
        # Bundles from before views (no key) score with the embedding alone, as they did.
        views = None if views_meta is None else _read_views(path, views_meta, meta)
        bundle = Bundle(
            embeddings=bank.embeddings,
            rho=bank.rho,
            labels=bank.labels,
            groups=bank.groups,
            positions=bank.positions,
            rho_scope=str(meta.get("rho_scope", LEGACY_RHO_SCOPE)),
            exclusion_windows=int(meta.get("exclusion_windows", NO_EXCLUSION)),
            k=int(meta["k"]),
            method=str(meta["method"]),
            threshold=float(meta["threshold"]),
            threshold_method=str(meta["threshold_method"]),
            threshold_percentile=float(meta["threshold_percentile"]),
            normal_stats=dict(meta["normal_stats"]),
            model=info,
            window_samples=int(meta["window_samples"]),
            hop_samples=int(meta["hop_samples"]),
            sample_rate=int(meta["sample_rate"]),
            sources=[str(s) for s in meta["sources"]],
            created=str(meta["created"]),
            format_version=int(meta["format_version"]),
            bundle_id=str(meta["bundle_id"]),
            evidence=None if evidence is None else EvidenceSettings.from_dict(evidence),
            running_profile=None if profile is None else RunningProfile.from_dict(profile),
            off_embeddings=bank.off_embeddings,
            levels=bank.levels,
            target_false_alarms_per_week=None if target is None else float(target),
            band_profile=None if bands is None else BandProfile.from_dict(bands),
            environment=None if environment is None else EnvironmentProfile.from_dict(environment),
            views=views,
            report=_read_report(path),
        )
    except KeyError as exc:
        raise BundleError(f"bundle {path}: {META_FILE} lacks key {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle {path}: {META_FILE} has a bad value ({exc})") from exc
    _validate(bundle, path, n_entries, dim)
    if model is not None:
        check_model(bundle, model, str(path))
    return bundle


def _read_views(directory: Path, views_meta: dict[str, Any], meta: dict[str, Any]) -> ViewSet:
    try:
        with np.load(directory / BANK_FILE, allow_pickle=False) as npz:
            return _views_from(views_meta, npz, int(meta["k"]), str(meta["method"]))
    except KeyError as exc:
        raise BundleError(f"bundle {directory}: views: {BANK_FILE} lacks array {exc}") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"bundle {directory}: views are unusable ({exc})") from exc


def _read_report(directory: Path) -> dict[str, Any] | None:
    """The calibration report, or None (older bundles; an unreadable report loses nothing)."""
    path = directory / REPORT_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _LOGGER.warning("bundle %s: %s is unreadable (%s); ignored", directory, REPORT_FILE, exc)
        return None
    return report if isinstance(report, dict) else None


def _validate(bundle: Bundle, path: Path, n_entries: int, dim: int) -> None:
    emb, rho = bundle.embeddings, bundle.rho
    if emb.ndim != 2 or emb.shape != (n_entries, dim):
        raise BundleError(
            f"bundle {path}: embeddings have shape {emb.shape}, {META_FILE} says "
            f"({n_entries}, {dim})"
        )
    if dim != bundle.model.embedding_dim:
        raise BundleError(
            f"bundle {path}: embedding dimension {dim} does not match the model's "
            f"{bundle.model.embedding_dim}"
        )
    if rho.shape != (n_entries,):
        raise BundleError(f"bundle {path}: rho has shape {rho.shape}, expected ({n_entries},)")
    if bundle.labels is not None and len(bundle.labels) != n_entries:
        raise BundleError(
            f"bundle {path}: {len(bundle.labels)} labels for {n_entries} bank entries"
        )
    for name, arr in (("groups", bundle.groups), ("positions", bundle.positions)):
        if arr is not None and arr.shape != (n_entries,):
            raise BundleError(
                f"bundle {path}: {name} has shape {arr.shape}, expected ({n_entries},)"
            )
    if bundle.rho_scope not in RHO_SCOPES:
        raise BundleError(f"bundle {path}: unknown rho_scope {bundle.rho_scope!r}")
    if bundle.exclusion_windows < 0:
        raise BundleError(
            f"bundle {path}: exclusion_windows {bundle.exclusion_windows} is negative"
        )
    if not (np.all(np.isfinite(emb)) and np.all(np.isfinite(rho)) and np.all(rho >= 0)):
        raise BundleError(f"bundle {path}: bank contains NaN, inf or negative rho")
    if bundle.method not in SCORE_METHODS:
        raise BundleError(f"bundle {path}: unknown scoring method {bundle.method!r}")
    if not 1 <= bundle.k < n_entries:
        raise BundleError(f"bundle {path}: k={bundle.k} is invalid for {n_entries} entries")
    if not (np.isfinite(bundle.threshold) and bundle.threshold > 0):
        raise BundleError(
            f"bundle {path}: threshold {bundle.threshold} is not a positive number; recalibrate"
        )
    if bundle.levels is not None and bundle.levels.shape != (n_entries,):
        raise BundleError(
            f"bundle {path}: levels has shape {bundle.levels.shape}, expected ({n_entries},)"
        )
    off = bundle.off_embeddings
    if off is not None and (off.ndim != 2 or off.shape[1] != dim or not np.all(np.isfinite(off))):
        raise BundleError(f"bundle {path}: off_embeddings have shape {off.shape} or bad values")
    expected_id = make_bundle_id(emb, bundle.threshold, bundle.model.sha256)
    if bundle.bundle_id != expected_id:
        raise BundleError(
            f"bundle {path}: {BANK_FILE} and {META_FILE} do not belong together "
            f"(bundle_id {bundle.bundle_id}, content gives {expected_id})"
        )
