"""The encoder experiment of docs/results.md: every encoder x scoring on a dev set, table + plot.

    PYTHONPATH=. python benchmarks/results.py devsets/dev --out runs/results \\
        --encoder logmel-stats=logmel-stats --encoder teacher=yamnet-port \\
        --encoder denoise=runs/denoise/export/denoise-int8.onnx ... \\
        --markdown runs/results/table.md --plot docs/results.png

For each `--encoder LABEL=MODEL` (a bundled model name or an ONNX path) and each scoring variant
it runs `edge_asd.offline.evaluation.evaluate` (the same code as `edge-asd evaluate`) and keeps
`OUT/<label>/<variant>/results.json`; a run whose results.json names the same model sha256 and
scoring is reused (`--fresh` recomputes). Condition groups (clean, stationary, nonstationary,
mismatched) are scored like the official score: the harmonic mean of every section's source
AUC, target AUC and pAUC in the group. The operating point (method.md section 5) is averaged
over the group's sections: false alarms per hour of normal audio and the share of anomalous
clips with an alarm.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from edge_asd.model.encoder import Encoder
from edge_asd.model.registry import resolve_model
from edge_asd.offline.comparison import paired_scores
from edge_asd.offline.evaluation import evaluate
from edge_asd.offline.metrics import BOOTSTRAP_ROUNDS, harmonic_mean
from edge_asd.offline.metrics import paired_bootstrap as metrics_paired_bootstrap

GROUPS: Final = ("clean", "stationary", "nonstationary", "mismatched")
NOISY_GROUPS: Final = ("stationary", "nonstationary", "mismatched")


@dataclass(frozen=True)
class Variant:
    """One scoring setting of the memory bank."""

    key: str
    label: str
    method: str
    k: int
    rho_scope: str


VARIANTS: Final = (
    Variant("raw", "raw kNN", "raw", 1, "all"),
    Variant("density", "density k=1 (default)", "density", 1, "all"),
    Variant("density16", "density k=16 other_groups", "density", 16, "other_groups"),
)


def group_of(section: str) -> str:
    return section.split("_snr")[0]


def summarise(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per group (and 'all', 'noisy'): official-style score, mean FA/h, mean share caught."""
    sections: Mapping[str, Any] = results["sections"]
    members: dict[str, list[str]] = {g: [] for g in (*GROUPS, "noisy", "all")}
    for name in sections:
        group = group_of(name)
        members.setdefault(group, []).append(name)
        members["all"].append(name)
        if group in NOISY_GROUPS:
            members["noisy"].append(name)
    out: dict[str, dict[str, float]] = {}
    for group, names in members.items():
        if not names:
            continue
        values = [sections[n][key] for n in names for key in ("auc_source", "auc_target", "pauc")]
        points = [sections[n]["operating_point"] for n in names]
        out[group] = {
            "score": harmonic_mean(values),
            "fa_per_hour": float(np.mean([p["false_alarms_per_hour"] for p in points])),
            "caught": float(np.mean([p["anomalous_clips_caught"] for p in points])),
        }
    return out


def _reusable(path: Path, sha: str, variant: Variant) -> bool:
    if not path.is_file():
        return False
    saved = json.loads(path.read_text(encoding="utf-8"))
    scoring = saved.get("scoring", {})
    return bool(
        saved.get("model", {}).get("sha256") == sha
        and scoring.get("method") == variant.method
        and scoring.get("k") == variant.k
        and scoring.get("rho_scope") == variant.rho_scope
    )


def run_all(
    root: Path, out: Path, encoders: Sequence[tuple[str, str]], *, fresh: bool, threads: int
) -> dict[str, dict[str, Any]]:
    """results[label][variant.key] = the results dict of that run."""
    table: dict[str, dict[str, Any]] = {}
    for label, model in encoders:
        encoder = Encoder(resolve_model(model), intra_op_threads=threads)
        table[label] = {}
        for variant in VARIANTS:
            run_dir = out / label / variant.key
            saved = run_dir / "results.json"
            if fresh or not _reusable(saved, encoder.info.sha256, variant):
                logging.info("evaluating %s with %s", label, variant.label)
                evaluate(
                    root,
                    run_dir,
                    encoder,
                    method=variant.method,
                    k=variant.k,
                    rho_scope=variant.rho_scope,
                    progress=False,
                )
            table[label][variant.key] = json.loads(saved.read_text(encoding="utf-8"))
    return table


def markdown(table: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| encoder | scoring | official score | clean | stationary | nonstationary | mismatched "
        "| noisy (all 12) | FA/h clean | FA/h noisy | caught clean | caught noisy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in table.items():
        for variant in VARIANTS:
            s = summarise(runs[variant.key])
            scores = " | ".join(f"{100 * s[g]['score']:.2f}" for g in (*GROUPS, "noisy"))
            lines.append(
                f"| {label} | {variant.label} | **{100 * s['all']['score']:.2f}** | {scores} | "
                f"{s['clean']['fa_per_hour']:.0f} | {s['noisy']['fa_per_hour']:.0f} | "
                f"{100 * s['clean']['caught']:.0f} % | {100 * s['noisy']['caught']:.0f} % |"
            )
    model_lines = ["", "Models (sha256 of the ONNX file):", ""]
    for label, runs in table.items():
        model = next(iter(runs.values()))["model"]
        model_lines.append(
            f"- {label}: `{model['name']}` {model['version']}, `{model['sha256'][:12]}`"
        )
    return "\n".join(lines + model_lines) + "\n"


def plot(table: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Score per condition group under density k=1 and raw scoring; operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = plt.get_cmap("tab10")
    x = np.arange(len(GROUPS))
    for ax, variant, title in (
        (axes[0], "density", "density-normalised kNN (k=1, default)"),
        (axes[1], "raw", "raw kNN distance"),
    ):
        for i, (label, runs) in enumerate(table.items()):
            s = summarise(runs[variant])
            ax.plot(
                x, [100 * s[g]["score"] for g in GROUPS], marker="o", color=colours(i), label=label
            )
        ax.set_xticks(x, list(GROUPS))
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("official score over the group's sections (%)")
    low = min(min(ax.get_ylim()[0] for ax in axes[:2]), 100)
    for ax in axes[:2]:
        ax.set_ylim(low, 100)
    axes[0].legend(fontsize=8)
    right = axes[2]
    for i, (label, runs) in enumerate(table.items()):
        for variant, marker in (("density", "o"), ("raw", "s"), ("density16", "^")):
            s = summarise(runs[variant])
            right.scatter(
                s["noisy"]["fa_per_hour"],
                100 * s["noisy"]["caught"],
                marker=marker,
                color=colours(i),
                s=60,
                label=label if variant == "density" else None,
            )
    right.set_xlabel("false alarms per hour of normal audio (12 noisy sections, mean)")
    right.set_ylabel("anomalous clips caught (%)")
    right.set_title("operating point: o density k=1, s raw, ^ density k=16")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paired_bootstrap(
    out: Path,
    first: str,
    second: str,
    variant: str,
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per group: score(first) - score(second), and a 95 % interval from resampling the test
    clips of every section with replacement (normal and anomalous clips separately, the same
    draw for both encoders: a paired comparison on the same audio)."""
    sections = paired_scores(out / first / variant, out / second / variant)
    groups: dict[str, list[str]] = {}
    for name in sections:
        group = group_of(name)
        for key in {group, "all"} | ({"noisy"} if group in NOISY_GROUPS else set()):
            groups.setdefault(key, []).append(name)
    result = metrics_paired_bootstrap(sections, groups, rounds=rounds, seed=seed)
    return {g: r.to_dict() for g, r in result.items()}


def _encoder_arg(text: str) -> tuple[str, str]:
    label, sep, model = text.partition("=")
    if not sep or not label or not model:
        raise argparse.ArgumentTypeError(f"expected LABEL=MODEL, got {text!r}")
    return label, model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="dev set (benchmarks/make_devset.py)")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument(
        "--encoder", type=_encoder_arg, action="append", required=True, help="LABEL=MODEL"
    )
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    parser.add_argument("--fresh", action="store_true", help="recompute every run")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="paired bootstrap of score(A) - score(B) per group (density k=1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    table = run_all(args.root, args.out, args.encoder, fresh=args.fresh, threads=args.threads)
    text = markdown(table)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    if args.plot:
        plot(table, args.plot)
    for first, second in args.compare:
        result = paired_bootstrap(args.out, first, second, "density")
        print(f"\n{first} - {second}, density k=1, official-score points, 95 % paired bootstrap:")
        for group in (*GROUPS, "noisy", "all"):
            r = result[group]
            print(
                f"  {group:14s} {100 * r['difference']:+6.2f}  "
                f"[{100 * r['low']:+6.2f}, {100 * r['high']:+6.2f}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
