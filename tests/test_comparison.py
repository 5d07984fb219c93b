"""Tests for edge_asd.offline.comparison: two runs' score CSVs paired by file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_asd.offline.comparison import paired_scores, read_clip_scores
from edge_asd.offline.dcase import EvaluationError

FILES = (
    "section_00_source_test_normal_0000_a.wav",
    "section_00_target_test_normal_0001_b.wav",
    "section_00_source_test_anomaly_0002_c.wav",
    "unlabelled.wav",
)


def _run(root: Path, scores: dict[str, float], section: str = "sec") -> Path:
    root.mkdir()
    csv_name = f"anomaly_score_{section}_section_00_test.csv"
    # Written in another order than sorted, as a run could.
    lines = [f"{name},{score}" for name, score in reversed(scores.items())]
    (root / csv_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = {"sections": {section: {"scores_csv": csv_name}}}
    (root / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return root


def test_paired_scores_line_up_by_file(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {f: float(i) for i, f in enumerate(FILES)})
    b = _run(tmp_path / "b", {f: 10.0 + i for i, f in enumerate(FILES)})
    assert read_clip_scores(a)["sec"][FILES[2]] == 2.0
    paired = paired_scores(a, b)["sec"]
    # Sorted by name, unlabelled files left out.
    assert list(paired.is_anomaly) == [True, False, False]
    assert list(paired.domains) == ["source", "source", "target"]
    assert list(paired.first) == [2.0, 0.0, 1.0]
    assert list(paired.second) == [12.0, 10.0, 11.0]


def test_runs_of_different_files_or_sections_are_refused(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {f: 0.0 for f in FILES})
    b = _run(tmp_path / "b", {f: 0.0 for f in FILES[:2]})
    c = _run(tmp_path / "c", {f: 0.0 for f in FILES}, section="other")
    with pytest.raises(EvaluationError, match="different test files"):
        paired_scores(a, b)
    with pytest.raises(EvaluationError, match="different sections"):
        paired_scores(a, c)
    with pytest.raises(EvaluationError, match=r"results\.json"):
        paired_scores(tmp_path / "missing", a)
