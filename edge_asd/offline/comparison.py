"""Two evaluation runs on the same dev set, side by side: their clip scores, paired by file.

Reads what `evaluation.evaluate` (`edge-asd evaluate`) writes: OUT/results.json and the
DCASE-style score CSV of every section. Labels and domains come from the test file names, as
`evaluate` read them. The bootstrap itself is `metrics.paired_bootstrap`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Final

from edge_asd.offline.dcase import EvaluationError, parse_test_name
from edge_asd.offline.metrics import PairedScores

RESULTS_FILE: Final = "results.json"


def read_results(run_dir: Path | str) -> dict[str, Any]:
    """The results.json of a run directory."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read the evaluation results ({exc})") from exc
    return results


def read_clip_scores(run_dir: Path | str) -> dict[str, dict[str, float]]:
    """section -> {test file name: clip score}, from the run's score CSVs."""
    run_path = Path(run_dir)
    out: dict[str, dict[str, float]] = {}
    for name, section in read_results(run_path)["sections"].items():
        path = run_path / section["scores_csv"]
        with path.open(newline="", encoding="utf-8") as handle:
            out[name] = {row[0]: float(row[1]) for row in csv.reader(handle) if row}
    return out


def paired_scores(first_dir: Path | str, second_dir: Path | str) -> dict[str, PairedScores]:
    """Every section's labelled test clips with both runs' scores, files in sorted order.

    EvaluationError when the runs did not score the same sections and files.
    """
    first = read_clip_scores(first_dir)
    second = read_clip_scores(second_dir)
    if set(first) != set(second):
        raise EvaluationError(
            f"{first_dir} and {second_dir} hold different sections: "
            f"{sorted(set(first) ^ set(second))}"
        )
    out: dict[str, PairedScores] = {}
    for name in sorted(first):
        if set(first[name]) != set(second[name]):
            raise EvaluationError(
                f"section {name}: {first_dir} and {second_dir} scored different test files"
            )
        files = sorted(f for f in first[name] if parse_test_name(f) is not None)
        parsed = [parse_test_name(f) for f in files]
        out[name] = PairedScores(
            is_anomaly=[p[1] for p in parsed if p],
            domains=[p[0] for p in parsed if p],
            first=[first[name][f] for f in files],
            second=[second[name][f] for f in files],
        )
    return out


__all__ = ["paired_scores", "read_clip_scores", "read_results"]
