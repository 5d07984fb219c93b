"""Training data for pretraining: the recipe, fixed segments, and on-the-fly mixtures.

What happens where (and why the teacher targets stay valid):

- A *segment* is fixed: (file sha256, offset, length, speed factor, EQ tilt). The teacher sees
  exactly that segment, so its outputs are computed once and cached (`teacher.TeacherCache`).
  Speed and EQ perturbation are part of the segment (a few deterministic variants per offset),
  i.e. they happen BEFORE the teacher: the target is the teacher's view of the perturbed audio,
  so a machine that runs 3 % faster is not silently taught to look like the nominal one.
- "Random crops" are random choices among segments on a dense grid of offsets (`hop_seconds`),
  so every crop the student sees has an exact teacher target.
- Mixing happens AFTER the teacher: m = c + g * n with g chosen for an SNR drawn per example.
  The retain target lambda * T(c) + (1 - lambda) * T(n) is defined on the sources, whatever the
  SNR (docs/method.md, section 2), so g needs no teacher call. The overall gain of m (and a
  uniform rescale that prevents clipping) changes neither the SNR nor the sources: the student
  is taught to be robust to the microphone's gain setting, which calibration cannot undo.
- Clean examples (m = c, no noise) are part of every batch: their target is T(c) itself.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_asd.config import ScoreMethod
from edge_asd.constants import SAMPLE_RATE_HZ
from edge_asd.detection.methods import DEFAULT_SCORE_METHOD

_LOGGER = logging.getLogger(__name__)

AUDIO_SUFFIXES: Final = (".wav",)
DEFAULT_SEGMENT_SECONDS: Final = 1.0
DEFAULT_SEGMENT_HOP_SECONDS: Final = 0.25
_SHA_CHUNK_BYTES: Final = 1 << 20
_POWER_FLOOR: Final = 1e-12
"""Mean-square units; a segment quieter than this counts as silent (no SNR can be set)."""
PEAK_LIMIT: Final = 0.99
"""A mixture whose peak exceeds this is rescaled as a whole (SNR unchanged) instead of clipped."""
_EQ_PIVOT_HZ: Final = 1000.0
"""The EQ tilt is +-tilt dB per octave away from this frequency (0 dB at the pivot)."""
_EQ_MIN_HZ: Final = 50.0
_SEED_MODULUS: Final = 2**63

AudioReader = Callable[[Path], np.ndarray]
"""Reads a whole file as float32 mono at 16 kHz (resampled); default `edge_asd.audio.files`."""


class RecipeError(ValueError):
    """A recipe file is missing, is not valid YAML, or has a bad key (the message names it)."""


# --------------------------------------------------------------------------- recipe models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """One directory of training audio."""

    path: str = Field(description="Directory, relative to the recipe's base directory.")
    labels: Literal["subfolder", "stem", "csv"] = Field(
        "subfolder",
        description="Label of a file: its first sub-folder under `path`, its file stem, or `csv`.",
    )
    label: str | None = Field(
        None, description="Label of files directly in `path` (default: the directory name)."
    )
    csv: str | None = Field(None, description="CSV with columns `file,label` (labels: csv).")
    span: tuple[float, float] = Field(
        (0.0, 1.0),
        description=(
            "Part of every file that is used, as fractions of its duration: [0, 0.5] is the "
            "first half (keeps the material a dev set tests on out of training)."
        ),
    )

    @model_validator(mode="after")
    def _csv_given(self) -> SourceSpec:
        if self.labels == "csv" and not self.csv:
            raise ValueError("labels: csv needs a `csv` file")
        return self

    @model_validator(mode="after")
    def _span_valid(self) -> SourceSpec:
        start, end = self.span
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"span must satisfy 0 <= start < end <= 1, got {list(self.span)}")
        return self


class DataSpec(_Strict):
    clean: list[SourceSpec] = Field(min_length=1, description="Clean machine audio.")
    noise: list[SourceSpec] = Field(min_length=1, description="Noise audio.")
    segment_seconds: float = Field(
        DEFAULT_SEGMENT_SECONDS, gt=0, description="Segment length; the student's window."
    )
    hop_seconds: float = Field(
        DEFAULT_SEGMENT_HOP_SECONDS, gt=0, description="Grid of segment offsets (random crops)."
    )
    holdout_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of clean FILES held out for validation."
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Clean file stems never trained on (they join the held-out files).",
    )
    label_tags: dict[str, list[str | int]] = Field(
        default_factory=dict,
        description="Dataset label -> teacher class names (from the class map) or indices.",
    )


class MixingSpec(_Strict):
    snr_db: tuple[float, float] = Field((-10.0, 10.0), description="SNR range, dB (uniform).")
    clean_fraction: float = Field(
        0.25, ge=0, le=1, description="Share of each batch that is clean (at least one example)."
    )
    gain_db: tuple[float, float] = Field((-6.0, 6.0), description="Overall gain of m, dB.")
    perturb_variants: int = Field(
        0, ge=0, description="Extra speed/EQ variants per clean segment (teacher-labelled)."
    )
    speed: tuple[float, float] = Field((0.97, 1.03), description="Speed factor range.")
    eq_tilt_db_per_octave: tuple[float, float] = Field(
        (-1.5, 1.5), description="Spectral tilt range, dB per octave around 1 kHz."
    )

    @field_validator("snr_db", "gain_db", "speed", "eq_tilt_db_per_octave")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"low {value[0]} > high {value[1]}")
        return value

    @field_validator("speed")
    @classmethod
    def _positive_speed(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError("speed factors must be > 0")
        return value


class TeacherSpec(_Strict):
    kind: Literal["yamnet_tflite", "yamnet_port", "onnx"] = "yamnet_tflite"
    path: str = Field(description="Teacher model file (.tflite or .onnx).")
    class_map: str | None = Field(None, description="CSV of class names (index,mid,name).")
    cache_dir: str = Field("build/teacher-cache", description="Where teacher outputs are kept.")
    embedding_layer: str | None = Field(
        None,
        description=(
            "kind: yamnet_port only: the port layer whose pooled output is the target embedding "
            "(default: final). Set it to the student's `embedding_layer` to align that layer "
            "with the same layer of the teacher (no projection head; the student starts on it)."
        ),
    )

    @model_validator(mode="after")
    def _layer_needs_port(self) -> TeacherSpec:
        if self.embedding_layer is not None and self.kind != "yamnet_port":
            raise ValueError("embedding_layer is only available with kind: yamnet_port")
        return self


class StudentSpec(_Strict):
    kind: Literal["yamnet", "compact"] = "yamnet"
    tflite: str | None = Field(None, description="YAMNet weights for kind: yamnet.")
    embedding_layer: str | None = Field(None, description="YAMNet port layer read as embedding.")
    embedding_dim: int = Field(128, gt=0, description="kind: compact only.")
    width: int = Field(32, gt=0, description="kind: compact only: channels of the first block.")


class ObjectiveSpec(_Strict):
    name: Literal["retain", "denoise", "tagging"] = "retain"
    alpha: float = Field(1.0, ge=0, description="Weight of the mixture alignment term.")
    beta: float = Field(1.0, ge=0, description="Weight of the clean-audio retention term.")
    mix_lambda: float = Field(0.5, ge=0, le=1, description="lambda of the convex target.")
    distance: Literal["cosine", "mse"] = "cosine"


class OptimSpec(_Strict):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, gt=0)
    epochs: int = Field(5, gt=0)
    steps_per_epoch: int | None = Field(
        None, gt=0, description="Default: one pass over the clean training segments."
    )
    grad_clip_norm: float | None = Field(1.0, gt=0)
    freeze_prefixes: list[str] = Field(
        default_factory=list, description="Parameter-name prefixes kept frozen (early blocks)."
    )
    warmup_steps: int = Field(0, ge=0)


class ValidationSpec(_Strict):
    devset: str | None = Field(None, description="DCASE-layout dev set (benchmarks/make_devset).")
    window_seconds: float = Field(1.0, gt=0)
    hop_seconds: float = Field(0.5, gt=0)
    score_method: ScoreMethod = DEFAULT_SCORE_METHOD
    k: int = Field(1, ge=1)
    max_train_clips: int | None = Field(None, gt=0, description="Per section; bank size cap.")
    sections: list[str] | None = Field(None, description="Dev-set sections to score (all).")
    exclude_devset_test: bool = Field(
        True,
        description="Never train on the recordings the dev set tests on (its manifest.json "
        "split.test_recordings); they join the held-out files.",
    )
    holdout_batches: int = Field(4, ge=0, description="Mixture batches for the held-out loss.")


class Recipe(_Strict):
    seed: int = 0
    data: DataSpec
    mixing: MixingSpec = MixingSpec()
    teacher: TeacherSpec
    student: StudentSpec = StudentSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    optim: OptimSpec = OptimSpec()
    validation: ValidationSpec = ValidationSpec()
    base_dir: str = Field(".", description="Relative paths are resolved against this.")

    def resolve(self, path: str | None) -> Path | None:
        """`path` made absolute against `base_dir`."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def segment_samples(self) -> int:
        return round(self.data.segment_seconds * SAMPLE_RATE_HZ)


def load_recipe(
    path: Path, *, base_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> Recipe:
    """Read a YAML recipe; `overrides` maps dotted keys (`optim.epochs`) to values."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping, got {type(raw).__name__}")
    return recipe_from_dict(raw, base_dir=base_dir, overrides=overrides, source=str(path))


def parse_layer(layer: str | int | None) -> int | Literal["final"]:
    """A recipe's layer name ('final', '8', 8, None) as the YAMNet port takes it."""
    if layer is None or layer == "final":
        return "final"
    if isinstance(layer, int):
        return layer
    if layer.isdigit():
        return int(layer)
    raise RecipeError(f"embedding_layer: expected 'final' or a layer number, got {layer!r}")


def recipe_from_dict(
    raw: dict[str, Any],
    *,
    base_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "<recipe>",
) -> Recipe:
    """Validate a recipe mapping (see `load_recipe`)."""
    data = _deep_copy(raw)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    if base_dir is not None:
        data["base_dir"] = str(base_dir)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise RecipeError(f"{source}: {problems}") from exc


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def recipe_digest(recipe: Recipe) -> str:
    """Stable hash of everything that changes training (checkpoints refuse a different recipe)."""
    payload = recipe.model_dump(mode="json", exclude={"base_dir"})
    return hashlib.sha256(yaml.safe_dump(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- files and segments


@dataclass(frozen=True)
class AudioFile:
    """One source file, loaded at 16 kHz."""

    path: Path
    label: str
    sha256: str
    samples: np.ndarray
    """float32 [n] at 16 kHz."""


@dataclass(frozen=True)
class Segment:
    """A fixed piece of one file; the teacher's outputs for it are cacheable."""

    file_index: int
    offset: int
    """Samples at 16 kHz from the start of the (resampled) file."""
    length: int
    """Samples at 16 kHz after perturbation (what the student and teacher see)."""
    speed: float = 1.0
    eq_tilt_db: float = 0.0
    """dB per octave around 1 kHz."""

    def variant_tag(self) -> str:
        """Part of the cache key: the perturbation applied before the teacher."""
        return f"s{self.speed:.6f}_t{self.eq_tilt_db:+.6f}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_SHA_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _default_reader(path: Path) -> np.ndarray:
    from edge_asd.audio.files import read_wav

    return read_wav(path, target_rate=SAMPLE_RATE_HZ)


def list_labelled_files(spec: SourceSpec, root: Path) -> list[tuple[Path, str]]:
    """(file, label) for every audio file under `root`, sorted by path (deterministic)."""
    if not root.is_dir():
        raise RecipeError(f"{root}: data directory does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise RecipeError(f"{root}: no {'/'.join(AUDIO_SUFFIXES)} files")
    default_label = spec.label or root.name
    if spec.labels == "csv":
        table = _read_label_csv(root, spec)
        missing = [str(p.relative_to(root)) for p in files if _csv_key(p, root) not in table]
        if missing:
            raise RecipeError(f"{spec.csv}: no label for {len(missing)} files, e.g. {missing[0]}")
        return [(p, table[_csv_key(p, root)]) for p in files]
    if spec.labels == "stem":
        return [(p, p.stem) for p in files]
    out = []
    for p in files:
        parts = p.relative_to(root).parts
        out.append((p, parts[0] if len(parts) > 1 else default_label))
    return out


def _csv_key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_label_csv(root: Path, spec: SourceSpec) -> dict[str, str]:
    assert spec.csv is not None
    csv_path = Path(spec.csv)
    if not csv_path.is_absolute():
        csv_path = root / csv_path
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise RecipeError(f"{csv_path}: cannot read label CSV: {exc}") from exc
    if not rows or "file" not in rows[0] or "label" not in rows[0]:
        raise RecipeError(f"{csv_path}: label CSV needs a header with columns file,label")
    return {row["file"]: row["label"] for row in rows}


def load_files(
    specs: Sequence[SourceSpec], recipe: Recipe, reader: AudioReader | None = None
) -> list[AudioFile]:
    """Every file of `specs`, resampled to 16 kHz and kept in memory."""
    read = reader or _default_reader
    out: list[AudioFile] = []
    for spec in specs:
        root = recipe.resolve(spec.path)
        assert root is not None
        for path, label in list_labelled_files(spec, root):
            samples = np.asarray(read(path), dtype=np.float32)
            if samples.ndim != 1 or samples.size == 0:
                raise RecipeError(f"{path}: expected non-empty mono audio")
            sha = file_sha256(path)
            if spec.span != (0.0, 1.0):
                start, end = (round(f * samples.size) for f in spec.span)
                samples = samples[start:end]
                if samples.size == 0:
                    raise RecipeError(f"{path}: span {list(spec.span)} leaves no audio")
                # Cached teacher outputs are keyed by file hash + offset: a span shifts offsets.
                sha = hashlib.sha256(
                    f"{sha}|span={spec.span[0]},{spec.span[1]}".encode()
                ).hexdigest()
            out.append(AudioFile(path, label, sha, samples))
    return out


def segment_grid(
    files: Sequence[AudioFile], file_indices: Sequence[int], length: int, hop: int
) -> list[Segment]:
    """Unperturbed segments at offsets 0, hop, 2 hop, ... of each file (short files: one,
    zero-padded)."""
    out: list[Segment] = []
    for index in file_indices:
        n = files[index].samples.size
        last = max(0, n - length)
        offsets = list(range(0, last + 1, hop))
        out.extend(Segment(index, offset, length) for offset in offsets)
    return out


def perturbed_variants(segment: Segment, count: int, mixing: MixingSpec, sha: str) -> list[Segment]:
    """`count` deterministic speed/EQ variants of `segment` (seeded by file and offset)."""
    rng = np.random.default_rng(_stable_seed("perturb", sha, segment.offset, segment.length))
    out = []
    for _ in range(count):
        speed = float(rng.uniform(*mixing.speed))
        tilt = float(rng.uniform(*mixing.eq_tilt_db_per_octave))
        out.append(
            Segment(segment.file_index, segment.offset, segment.length, round(speed, 6), tilt)
        )
    return out


def _stable_seed(*parts: object) -> int:
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % _SEED_MODULUS


def render_segment(files: Sequence[AudioFile], segment: Segment) -> np.ndarray:
    """The float32 [length] audio of `segment`, perturbation applied, zero-padded at the end."""
    samples = files[segment.file_index].samples
    span = math.ceil(segment.length * segment.speed)
    piece = samples[segment.offset : segment.offset + span]
    if piece.size < span:
        piece = np.pad(piece, (0, span - piece.size))
    out = piece.astype(np.float32)
    if segment.speed != 1.0:
        # Reading `span` samples and playing them in `length` is a speed change (pitch follows,
        # as with a motor running faster); linear interpolation is enough for +-5 %.
        positions = np.arange(segment.length, dtype=np.float64) * segment.speed
        out = np.interp(positions, np.arange(span), out).astype(np.float32)
    if segment.eq_tilt_db != 0.0:
        out = apply_tilt(out, segment.eq_tilt_db)
    return out[: segment.length]


def apply_tilt(x: np.ndarray, tilt_db_per_octave: float) -> np.ndarray:
    """Spectral tilt: gain tilt * log2(f / 1 kHz) dB (a mild microphone/room colouring)."""
    spectrum = np.fft.rfft(x.astype(np.float64))
    freqs = np.fft.rfftfreq(x.size, d=1.0 / SAMPLE_RATE_HZ)
    octaves = np.log2(np.maximum(freqs, _EQ_MIN_HZ) / _EQ_PIVOT_HZ)
    spectrum *= 10.0 ** (tilt_db_per_octave * octaves / 20.0)
    return np.fft.irfft(spectrum, n=x.size).astype(np.float32)


# --------------------------------------------------------------------------- mixing


def mean_power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """10 log10(P_clean / P_noise) of two equal-length signals, dB."""
    return 10.0 * math.log10(
        max(mean_power(clean), _POWER_FLOOR) / max(mean_power(noise), _POWER_FLOOR)
    )


def noise_gain(clean: np.ndarray, noise: np.ndarray, target_snr_db: float) -> float:
    """g such that snr_db(clean, g * noise) == target_snr_db (0 when either is silent)."""
    p_clean, p_noise = mean_power(clean), mean_power(noise)
    if p_clean < _POWER_FLOOR or p_noise < _POWER_FLOOR:
        return 0.0
    return math.sqrt(p_clean / (p_noise * 10.0 ** (target_snr_db / 10.0)))


@dataclass(frozen=True)
class MixParams:
    """How one training example is formed from its sources."""

    noise_index: int
    """Index into the noise segments; -1 for a clean example."""
    snr_db: float
    gain_db: float


def mix(clean: np.ndarray, noise: np.ndarray | None, params: MixParams) -> np.ndarray:
    """m = gain * (c + g n), rescaled as a whole if its peak would exceed `PEAK_LIMIT`."""
    m = clean.astype(np.float64)
    if noise is not None and params.noise_index >= 0:
        m = m + noise_gain(clean, noise, params.snr_db) * noise.astype(np.float64)
    m *= 10.0 ** (params.gain_db / 20.0)
    peak = float(np.max(np.abs(m))) if m.size else 0.0
    if peak > PEAK_LIMIT:
        m *= PEAK_LIMIT / peak
    return m.astype(np.float32)


# --------------------------------------------------------------------------- the data set


@dataclass(frozen=True)
class Corpus:
    """Files and fixed segments of one run; what the teacher cache is filled from."""

    clean_files: list[AudioFile]
    noise_files: list[AudioFile]
    train_segments: list[list[Segment]]
    """Per training item: the unperturbed segment followed by its perturbed variants."""
    holdout_segments: list[Segment]
    noise_segments: list[Segment]
    holdout_files: list[int]

    def all_clean_segments(self) -> list[Segment]:
        return [s for group in self.train_segments for s in group] + self.holdout_segments


def devset_test_recordings(recipe: Recipe) -> list[str]:
    """Stems of the recordings the dev set tests on (from its manifest.json), if any."""
    if not (recipe.validation.devset and recipe.validation.exclude_devset_test):
        return []
    root = recipe.resolve(recipe.validation.devset)
    assert root is not None
    manifest = root / "manifest.json"
    if not manifest.is_file():
        _LOGGER.warning("%s: no manifest; cannot keep its test recordings out", manifest)
        return []
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return [str(x) for x in data["split"]["test_recordings"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecipeError(f"{manifest}: no split.test_recordings list: {exc}") from exc


def build_corpus(recipe: Recipe, reader: AudioReader | None = None) -> Corpus:
    """Load the recipe's files and cut them into fixed segments.

    Held out (never trained on): a seeded `holdout_fraction` of the clean files, the files named
    in `data.exclude`, and the recordings the dev set tests on.
    """
    clean = load_files(recipe.data.clean, recipe, reader)
    noise = load_files(recipe.data.noise, recipe, reader)
    length = recipe.segment_samples
    hop = max(1, round(recipe.data.hop_seconds * SAMPLE_RATE_HZ))
    excluded = set(recipe.data.exclude) | set(devset_test_recordings(recipe))
    forced = [i for i, f in enumerate(clean) if f.path.stem in excluded]
    rest = [i for i in range(len(clean)) if i not in set(forced)]
    sampled = choose_holdout([clean[i] for i in rest], recipe.data.holdout_fraction, recipe.seed)
    holdout = sorted(forced + [rest[i] for i in sampled])
    train_idx = [i for i in range(len(clean)) if i not in set(holdout)]
    if not train_idx:
        raise RecipeError("data.holdout_fraction leaves no clean file for training")
    groups = []
    for seg in segment_grid(clean, train_idx, length, hop):
        sha = clean[seg.file_index].sha256
        groups.append(
            [seg, *perturbed_variants(seg, recipe.mixing.perturb_variants, recipe.mixing, sha)]
        )
    _LOGGER.info(
        "corpus: %d clean files (%d held out), %d noise files, %d training segments x %d variants",
        len(clean),
        len(holdout),
        len(noise),
        len(groups),
        1 + recipe.mixing.perturb_variants,
    )
    return Corpus(
        clean_files=clean,
        noise_files=noise,
        train_segments=groups,
        holdout_segments=segment_grid(clean, holdout, length, hop),
        noise_segments=segment_grid(noise, range(len(noise)), length, hop),
        holdout_files=holdout,
    )


def choose_holdout(files: Sequence[AudioFile], fraction: float, seed: int) -> list[int]:
    """Indices of held-out clean files: a seeded choice, stable under file renames (by hash)."""
    count = round(fraction * len(files))
    if fraction > 0 and len(files) > 1:
        count = max(1, min(count, len(files) - 1))
    order = sorted(range(len(files)), key=lambda i: _stable_seed(seed, files[i].sha256))
    return sorted(order[:count])


def epoch_plan(
    n_items: int,
    n_variants: int,
    n_noise: int,
    mixing: MixingSpec,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    steps: int | None = None,
) -> list[list[tuple[int, int, MixParams]]]:
    """Batches of (item, variant, MixParams) for `epoch`, a pure function of its arguments.

    Deterministic data order is what makes `--resume` exact: nothing about the data stream
    needs saving beyond (seed, epoch, step). Each batch starts with its clean examples
    (`clean_fraction`, at least one); the rest are mixtures.
    """
    if n_noise <= 0:
        raise RecipeError("data.noise: no noise segments")
    rng = np.random.default_rng([seed, epoch])
    per_epoch = steps if steps is not None else max(1, math.ceil(n_items / batch_size))
    needed = per_epoch * batch_size
    order = np.concatenate([rng.permutation(n_items) for _ in range(math.ceil(needed / n_items))])[
        :needed
    ]
    n_clean = clean_count(batch_size, mixing.clean_fraction)
    batches = []
    for b in range(per_epoch):
        batch = []
        for j in range(batch_size):
            item = int(order[b * batch_size + j])
            variant = int(rng.integers(n_variants))
            snr = float(rng.uniform(*mixing.snr_db))
            gain = float(rng.uniform(*mixing.gain_db))
            noise_index = int(rng.integers(n_noise))
            if j < n_clean:
                noise_index = -1
            batch.append((item, variant, MixParams(noise_index, snr, gain)))
        batches.append(batch)
    return batches


def clean_count(batch_size: int, clean_fraction: float) -> int:
    """Clean examples per batch: round(fraction * B), at least one, at most B."""
    return min(batch_size, max(1, round(clean_fraction * batch_size)))


@dataclass
class Batch:
    """Numpy arrays of one batch (the trainer turns them into tensors)."""

    mixture: np.ndarray
    """float32 [B, S]."""
    clean_segments: list[Segment]
    noise_segments: list[Segment | None]
    is_clean: np.ndarray
    """bool [B]: no noise was added."""
    clean_labels: list[str]
    noise_labels: list[str | None]
    snr_db: np.ndarray
    """float32 [B], NaN for clean examples."""


def make_batch(
    corpus: Corpus,
    plan: Sequence[tuple[int, int, MixParams]],
    groups: Sequence[Sequence[Segment]] | None = None,
) -> Batch:
    """Render and mix the examples of one planned batch; items index `groups` (default: the
    training segments, each with its perturbed variants)."""
    groups = corpus.train_segments if groups is None else groups
    mixtures: list[np.ndarray] = []
    cleans: list[Segment] = []
    noises: list[Segment | None] = []
    flags: list[bool] = []
    clabels: list[str] = []
    nlabels: list[str | None] = []
    snrs: list[float] = []
    for item, variant, params in plan:
        group = groups[item]
        seg = group[variant % len(group)]
        c = render_segment(corpus.clean_files, seg)
        if params.noise_index >= 0:
            nseg = corpus.noise_segments[params.noise_index]
            n = render_segment(corpus.noise_files, nseg)
            noises.append(nseg)
            nlabels.append(corpus.noise_files[nseg.file_index].label)
            snrs.append(params.snr_db)
        else:
            n = None
            noises.append(None)
            nlabels.append(None)
            snrs.append(math.nan)
        mixtures.append(mix(c, n, params))
        cleans.append(seg)
        flags.append(params.noise_index < 0)
        clabels.append(corpus.clean_files[seg.file_index].label)
    return Batch(
        mixture=np.stack(mixtures),
        clean_segments=cleans,
        noise_segments=noises,
        is_clean=np.asarray(flags, dtype=bool),
        clean_labels=clabels,
        noise_labels=nlabels,
        snr_db=np.asarray(snrs, dtype=np.float32),
    )


def read_class_map(path: Path) -> list[str]:
    """Class display names from a YAMNet-style CSV (index,mid,display_name)."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read class map: {exc}") from exc
    if not rows or "display_name" not in rows[0]:
        raise RecipeError(f"{path}: class map needs a display_name column")
    return [row["display_name"] for row in rows]


def label_tag_indices(
    label_tags: dict[str, list[str | int]], class_names: Sequence[str] | None, num_classes: int
) -> dict[str, list[int]]:
    """Resolve `data.label_tags` to class indices; names need the teacher's class map."""
    lookup = {name: i for i, name in enumerate(class_names or [])}
    out: dict[str, list[int]] = {}
    for label, tags in label_tags.items():
        indices = []
        for tag in tags:
            if isinstance(tag, int):
                index = tag
            elif tag in lookup:
                index = lookup[tag]
            else:
                raise RecipeError(f"data.label_tags.{label}: unknown class {tag!r}")
            if not 0 <= index < num_classes:
                raise RecipeError(
                    f"data.label_tags.{label}: index {index} not in [0, {num_classes})"
                )
            indices.append(index)
        out[label] = indices
    return out


def hard_tags(
    labels: Sequence[str | None], mapping: dict[str, list[int]], num_classes: int
) -> np.ndarray:
    """float32 [B, C] multi-hot of each example's dataset label (zeros for None/unmapped)."""
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    for row, label in enumerate(labels):
        if label is not None:
            out[row, mapping.get(label, [])] = 1.0
    return out
