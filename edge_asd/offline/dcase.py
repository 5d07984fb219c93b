"""The DCASE Task 2 dataset layout: sections, their normal train clips and labelled test clips.

Layout (DCASE 2023/2025 development sets)::

    ROOT/<section>/train/section_00_{source|target}_train_normal_NNNN_<attributes>.wav
    ROOT/<section>/test/section_00_{source|target}_test_{normal|anomaly}_NNNN_<attributes>.wav

DCASE 2020 names (`normal_id_00_NNNNNNNN.wav`, `anomaly_id_00_...`) are read as source-only,
with one section per machine ID (`<folder>_id_00`, ...) when a folder holds several.
ROOT may also be one section itself (it holds `train/` and `test/`).

Read by `evaluation` (`edge-asd evaluate`), the pretraining's dev-set validation and the
benchmarks, so every one of them sees the same sections, labels and domains. Only file names
are read here, never audio.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edge_asd.offline.metrics import SOURCE, TARGET

_LOGGER = logging.getLogger(__name__)

TRAIN_DIR: Final = "train"
TEST_DIR: Final = "test"
WAV_GLOB: Final = "*.wav"
SCORE_CSV_TEMPLATE: Final = "anomaly_score_{section}_section_{number}_test.csv"
SCORE_CSV_2020_TEMPLATE: Final = "anomaly_score_{section}_id_{machine_id}.csv"

_DCASE2023_TEST = re.compile(
    r"section_(?P<number>\d+)_(?P<domain>source|target)_test_(?P<label>normal|anomaly)_"
)
_DCASE2020_TEST = re.compile(r"^(?P<label>normal|anomaly)_id_(?P<number>\d+)_")
_TARGET_TOKEN = re.compile(r"(^|_)target(_|$)")

LAYOUT_HELP: Final = (
    "expected ROOT/<section>/train/*.wav (normal clips; 'source' or 'target' in the name) and "
    "ROOT/<section>/test/section_00_{source|target}_test_{normal|anomaly}_NNNN*.wav "
    "(or DCASE 2020 names normal_id_00_*.wav / anomaly_id_00_*.wav)"
)


class EvaluationError(Exception):
    """The evaluation root or a section does not follow the layout (or a section cannot be
    evaluated); the message says where."""


@dataclass(frozen=True)
class LabelledClip:
    """One labelled test clip."""

    path: Path
    domain: str
    """"source" or "target"."""
    is_anomaly: bool


@dataclass(frozen=True)
class TrainClip:
    path: Path
    domain: str


@dataclass(frozen=True)
class Section:
    """One machine type / condition: its normal train clips and labelled test clips."""

    name: str
    number: str
    """The two-digit section number in the file names ("00"); the machine ID for DCASE 2020."""
    csv_name: str
    """The score file's name, as the challenge's submission format names it."""
    train: list[TrainClip]
    test: list[LabelledClip]
    unlabelled: list[Path] = field(default_factory=list)


def parse_test_name(filename: str) -> tuple[str, bool, str] | None:
    """(domain, is_anomaly, section number) from a test file name, or None if unlabelled.

    DCASE 2020 names give the machine ID as the number (source domain only).
    """
    match = _DCASE2023_TEST.search(filename)
    if match:
        return match["domain"], match["label"] == "anomaly", match["number"]
    match = _DCASE2020_TEST.search(filename)
    if match:
        return SOURCE, match["label"] == "anomaly", match["number"]
    return None


def train_domain(filename: str) -> str:
    """ "target" when the name has a `target` token, else "source" (DCASE 2020 is source-only)."""
    return TARGET if _TARGET_TOKEN.search(Path(filename).stem) else SOURCE


def _section_from_dir(path: Path, name: str) -> list[Section]:
    """The section(s) of one folder: one for DCASE 2023 names, one per machine ID for 2020."""
    train_files = sorted((path / TRAIN_DIR).glob(WAV_GLOB))
    test_files = sorted((path / TEST_DIR).glob(WAV_GLOB))
    if not train_files:
        raise EvaluationError(f"{path / TRAIN_DIR}: no .wav files; {LAYOUT_HELP}")
    if not test_files:
        raise EvaluationError(f"{path / TEST_DIR}: no .wav files; {LAYOUT_HELP}")
    test: list[LabelledClip] = []
    unlabelled: list[Path] = []
    numbers: set[str] = set()
    for wav in test_files:
        parsed = parse_test_name(wav.name)
        if parsed is None:
            unlabelled.append(wav)
            continue
        domain, is_anomaly, number = parsed
        numbers.add(number)
        test.append(LabelledClip(wav, domain, is_anomaly))
    if unlabelled:
        _LOGGER.warning(
            "%s: %d test files have no normal/anomaly label in their name (e.g. %s); skipped",
            path / TEST_DIR,
            len(unlabelled),
            unlabelled[0].name,
        )
    if not test:
        raise EvaluationError(
            f"{path / TEST_DIR}: none of the {len(test_files)} .wav files has a label in its "
            f"name; {LAYOUT_HELP}"
        )
    train = [TrainClip(wav, train_domain(wav.name)) for wav in train_files]
    if all(_DCASE2020_TEST.search(c.path.name) for c in test):
        return _split_machine_ids(path, name, train, test, unlabelled)
    number = min(numbers)
    if len(numbers) > 1:
        _LOGGER.warning("%s: several section numbers %s; using %s", path, sorted(numbers), number)
    csv_name = SCORE_CSV_TEMPLATE.format(section=name, number=number)
    return [Section(name, number, csv_name, train, test, unlabelled)]


def _split_machine_ids(
    path: Path,
    name: str,
    train: list[TrainClip],
    test: list[LabelledClip],
    unlabelled: list[Path],
) -> list[Section]:
    """DCASE 2020: one bank and one set of metrics per machine ID, as that challenge scored."""
    by_id: dict[str, list[LabelledClip]] = {}
    for clip in test:
        match = _DCASE2020_TEST.search(clip.path.name)
        assert match is not None  # checked by the caller
        by_id.setdefault(match["number"], []).append(clip)
    if len(by_id) == 1:
        (machine_id,) = by_id
        csv_name = SCORE_CSV_2020_TEMPLATE.format(section=name, machine_id=machine_id)
        return [Section(name, machine_id, csv_name, train, test, unlabelled)]
    sections = []
    for machine_id, clips in sorted(by_id.items()):
        id_train = [c for c in train if f"_id_{machine_id}_" in c.path.name]
        if not id_train:
            raise EvaluationError(
                f"{path / TRAIN_DIR}: no train files for machine ID {machine_id} "
                f"(expected names like normal_id_{machine_id}_00000000.wav)"
            )
        sections.append(
            Section(
                f"{name}_id_{machine_id}",
                machine_id,
                SCORE_CSV_2020_TEMPLATE.format(section=name, machine_id=machine_id),
                id_train,
                clips,
                unlabelled,
            )
        )
    return sections


def discover_sections(root: Path | str) -> list[Section]:
    """Sections under ROOT (sorted by name); EvaluationError naming ROOT when none is there."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise EvaluationError(f"{root_path}: not a directory; {LAYOUT_HELP}")
    if (root_path / TRAIN_DIR).is_dir() and (root_path / TEST_DIR).is_dir():
        return _section_from_dir(root_path, root_path.resolve().name)
    candidates = sorted(
        p for p in root_path.iterdir() if (p / TRAIN_DIR).is_dir() and (p / TEST_DIR).is_dir()
    )
    if not candidates:
        raise EvaluationError(
            f"{root_path}: no section folders with train/ and test/; {LAYOUT_HELP}"
        )
    return [section for p in candidates for section in _section_from_dir(p, p.name)]


__all__ = [
    "LAYOUT_HELP",
    "EvaluationError",
    "LabelledClip",
    "Section",
    "TrainClip",
    "discover_sections",
    "parse_test_name",
    "train_domain",
]
