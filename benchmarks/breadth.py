"""Detection breadth (issue 8): `edge-asd evaluate` on each breadth set, per configuration, with
paired bootstrap intervals of the difference to `logmel-stats`.

    PYTHONPATH=. python benchmarks/breadth.py devsets/breadth --out runs/breadth \\
        --markdown runs/breadth/table.md

ROOT holds the sets of benchmarks/make_breadth_sets.py (valves, weak, bearings, bearings-hard,
fan); every set is evaluated by the real command line (`python -m edge_asd evaluate SET --out ...
--model M`), one run per configuration: the default model `yamnet-denoise`, the bundled
`logmel-stats`, and `yamnet-denoise --views auto` when this checkout's `edge-asd evaluate
--help` offers `--views` (the first two then run with `--views embedding`: the embedding
alone, as before views existed; `--per-view` adds the default model with each feature view
beside its embedding, `--views embedding,VIEW`). A run with the same arguments on an
unchanged set (same manifest.json) is reused (`--fresh` recomputes). Each section's official-
style score (harmonic mean of AUC source, AUC target when the section has target normals, and
pAUC) and each set's (over all its sections) are compared with `logmel-stats` by
`edge_asd.offline.metrics.paired_bootstrap` (test clips resampled, the same draw for both
runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import edge_asd
from edge_asd.detection.vocabulary import EMBEDDING_VIEW, FEATURE_VIEWS
from edge_asd.offline.comparison import paired_scores, read_results
from edge_asd.offline.metrics import (
    BOOTSTRAP_ROUNDS,
    BootstrapDifference,
    harmonic_mean,
    paired_bootstrap,
)

_LOGGER = logging.getLogger("breadth")

BASELINE: Final = "logmel-stats"
SET_ORDER: Final = ("valves", "weak", "bearings", "bearings-hard", "fan")
ALL: Final = "all"
"""The group of every section of a set (its official score)."""
VIEWS_OPTION: Final = "--views"
EVALUATE: Final = (sys.executable, "-m", "edge_asd", "evaluate")
PACKAGE_PARENT: Final = Path(edge_asd.__file__).resolve().parent.parent
"""Put first on the child's path, so `edge-asd evaluate` runs the edge_asd this script imports."""
STAMP_FILE: Final = "stamp.json"
"""The arguments and set manifest a run was made with, kept next to its results.json."""


@dataclass(frozen=True)
class Configuration:
    """One way of running `edge-asd evaluate`."""

    label: str
    args: tuple[str, ...]


def lists_option(help_text: str, option: str) -> bool:
    """Whether a command's --help text lists `option` (usage lines bracket options:
    "[--views VIEWS]", so a whole-word match, not a split on spaces)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


def _child_env() -> dict[str, str]:
    paths = [str(PACKAGE_PARENT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def evaluate_supports(option: str) -> bool:
    """Whether this checkout's `edge-asd evaluate --help` lists `option`."""
    result = subprocess.run(
        [*EVALUATE, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=_child_env(),
    )
    return lists_option(result.stdout, option)


def per_view_configurations() -> list[Configuration]:
    """The default model with each feature view alone beside its embedding (a table per view)."""
    return [
        Configuration(
            f"yamnet-denoise + {name}",
            ("--model", "yamnet-denoise", VIEWS_OPTION, f"{EMBEDDING_VIEW},{name}"),
        )
        for name in FEATURE_VIEWS
    ]


def configurations(*, views: bool) -> list[Configuration]:
    # Where evaluate has --views the plain rows ask for the embedding alone explicitly (also
    # calibrate's default), so they stay the figures measured before views existed whatever
    # the default becomes.
    plain: tuple[str, ...] = (VIEWS_OPTION, "embedding") if views else ()
    configs = [
        Configuration("yamnet-denoise", ("--model", "yamnet-denoise", *plain)),
        Configuration(BASELINE, ("--model", BASELINE, *plain)),
    ]
    if views:
        configs.append(
            Configuration(
                "yamnet-denoise views auto", ("--model", "yamnet-denoise", VIEWS_OPTION, "auto")
            )
        )
    return configs


def find_sets(root: Path) -> list[Path]:
    """The set folders under ROOT (those with section folders), known ones first."""
    found = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*/train")))
    if not found:
        raise SystemExit(f"{root}: no sets (folders of sections with train/ and test/)")
    order = {name: i for i, name in enumerate(SET_ORDER)}
    return sorted(found, key=lambda p: (order.get(p.name, len(order)), p.name))


def _stamp(set_dir: Path, command: Sequence[str]) -> dict[str, Any]:
    """What makes a run reusable: its arguments (not the interpreter) and the set's manifest."""
    manifest = set_dir / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    return {"command": list(command[1:]), "manifest_sha256": digest}


def run_evaluate(set_dir: Path, run_dir: Path, config: Configuration, *, fresh: bool) -> None:
    """`edge-asd evaluate` of one set with one configuration, unless the same run is saved (same
    arguments, same set manifest)."""
    command = [*EVALUATE, str(set_dir), "--out", str(run_dir), *config.args]
    stamp = _stamp(set_dir, command)
    saved = run_dir / STAMP_FILE
    if (
        not fresh
        and saved.is_file()
        and (run_dir / "results.json").is_file()
        and json.loads(saved.read_text(encoding="utf-8")) == stamp
    ):
        _LOGGER.info("reusing %s", run_dir)
        return
    _LOGGER.info("evaluating %s with %s", set_dir.name, config.label)
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=_child_env())
    if result.returncode != 0:
        raise SystemExit(
            f"edge-asd evaluate failed ({result.returncode}) on {set_dir} with {config.label}:\n"
            + result.stderr[-4000:]
        )
    saved.write_text(json.dumps(stamp) + "\n", encoding="utf-8")


def compare(
    run_dirs: Mapping[str, Path], *, rounds: int, seed: int
) -> dict[str, dict[str, BootstrapDifference]]:
    """label -> group (each section, and ALL) -> difference to BASELINE with its interval."""
    out: dict[str, dict[str, BootstrapDifference]] = {}
    for label, run_dir in run_dirs.items():
        if label == BASELINE:
            continue
        sections = paired_scores(run_dir, run_dirs[BASELINE])
        groups = {name: [name] for name in sections} | {ALL: sorted(sections)}
        out[label] = paired_bootstrap(sections, groups, rounds=rounds, seed=seed)
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _diff(d: BootstrapDifference) -> str:
    text = f"{100 * d.difference:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
    # Bold where the interval excludes zero: a difference the resampling does not explain.
    return f"**{text}**" if d.low > 0 or d.high < 0 else text


def section_score(section: Mapping[str, Any]) -> float:
    """The section's official-style score: harmonic mean of the AUCs it has and its pAUC."""
    return harmonic_mean(
        section[k] for k in ("auc_source", "auc_target", "pauc") if section[k] is not None
    )


def markdown(
    set_name: str,
    results: Mapping[str, Mapping[str, Any]],
    diffs: Mapping[str, Mapping[str, BootstrapDifference]],
) -> str:
    """Two tables for one set: scores and differences to BASELINE; AUCs per section."""
    labels = list(results)
    others = [label for label in labels if label != BASELINE]
    header = (
        f"| {set_name}: section | "
        + " | ".join(labels)
        + " | "
        + " | ".join(f"{o} - {BASELINE} [95 %]" for o in others)
        + " |"
    )
    lines = [header, "|---" * (1 + len(labels) + len(others)) + "|"]
    any_result = next(iter(results.values()))
    for name in any_result["sections"]:
        scores = " | ".join(_pct(section_score(results[lb]["sections"][name])) for lb in labels)
        ds = " | ".join(_diff(diffs[o][name]) for o in others)
        lines.append(f"| {name} | {scores} | {ds} |")
    scores = " | ".join(f"**{_pct(results[lb]['official_score'])}**" for lb in labels)
    ds = " | ".join(_diff(diffs[o][ALL]) for o in others)
    lines.append(f"| **official score (all sections)** | {scores} | {ds} |")
    lines += [
        "",
        f"| {set_name}: section | test clips (src normal / tgt normal / anomalous) | "
        + " | ".join(f"{lb}: AUC src / AUC tgt / pAUC; FA/h, caught" for lb in labels)
        + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for name, sec in any_result["sections"].items():
        counts = (
            f"{sec['n_test_source_normal']} / {sec['n_test_target_normal']} / "
            f"{sec['n_test_anomaly']} (train {sec['n_train_clips']})"
        )
        cells = []
        for lb in labels:
            s = results[lb]["sections"][name]
            op = s.get("operating_point") or {}
            fa = op.get("false_alarms_per_hour")
            cells.append(
                f"{_pct(s['auc_source'])} / {_pct(s['auc_target'])} / {_pct(s['pauc'])}; "
                f"{'-' if fa is None else f'{fa:.0f}'}, {_pct(op.get('anomalous_clips_caught'))} %"
            )
        lines.append(f"| {name} | {counts} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="benchmarks/make_breadth_sets.py output")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    parser.add_argument("--sets", default=None, help="comma-separated subset of the sets")
    parser.add_argument(
        "--no-views", action="store_true", help="leave out --views auto even where it exists"
    )
    parser.add_argument(
        "--per-view",
        action="store_true",
        help="also run the default model with each feature view alone beside its embedding",
    )
    parser.add_argument("--rounds", type=int, default=BOOTSTRAP_ROUNDS, help="bootstrap rounds")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--fresh", action="store_true", help="recompute every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    views = not args.no_views and evaluate_supports(VIEWS_OPTION)
    _LOGGER.info("edge-asd evaluate %s --views", "has" if views else "has no")
    configs = configurations(views=views)
    if args.per_view and views:
        configs += per_view_configurations()
    sets = find_sets(args.root)
    if args.sets:
        wanted = {s.strip() for s in args.sets.split(",") if s.strip()}
        missing = wanted - {p.name for p in sets}
        if missing:
            parser.error(f"--sets: {sorted(missing)} not under {args.root}")
        sets = [p for p in sets if p.name in wanted]
    parts = []
    for set_dir in sets:
        run_dirs = {c.label: args.out / set_dir.name / c.label.replace(" ", "-") for c in configs}
        for config in configs:
            run_evaluate(set_dir, run_dirs[config.label], config, fresh=args.fresh)
        results = {label: read_results(d) for label, d in run_dirs.items()}
        diffs = compare(run_dirs, rounds=args.rounds, seed=args.seed)
        parts.append(f"#### {set_dir.name}\n\n" + markdown(set_dir.name, results, diffs))
    text = "\n".join(parts)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
