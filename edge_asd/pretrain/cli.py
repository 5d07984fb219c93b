"""`edge-asd pretrain ...`: train, export, cache-teacher, verify-teacher.

`edge_asd.cli` lists `pretrain` with a placeholder and hands everything after it to `main` here,
so the runtime CLI imports this package only for `edge-asd pretrain`. This module still imports
no torch (or anything that does) at module level, so that `--help` and argument errors work
without the train extra: handlers import what they need and return an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from edge_asd.constants import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

NEEDS_TRAIN_EXTRA: Final = (
    "edge-asd pretrain needs the training extra: pip install 'edge-asd[train]'"
)
RECIPES_DIR: Final = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE: Final = RECIPES_DIR / "default.yaml"
DEFAULT_CALIBRATION_WINDOWS: Final = 64
VERIFY_TONE_HZ: Final = 440.0
VERIFY_TONE_AMPLITUDE: Final = 0.3
VERIFY_TOP_CLASSES: Final = 5
_SCORE_TOLERANCE: Final = 1e-5


def main(argv: Sequence[str] | None = None, *, log_level: str | None = None) -> int:
    """`edge-asd pretrain ARGS...` with ARGS = `argv` (default: the command line's arguments);
    returns the exit code. Usage errors exit with 2, as for every sub-command."""
    parser = argparse.ArgumentParser(prog="edge-asd")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["pretrain", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=log_level or logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("edge-asd pretrain: interrupted", file=sys.stderr)
        return EXIT_FAILURE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `pretrain` and its sub-commands; each sets `handler` (Namespace -> exit code)."""
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain the embedding encoder (needs the train extra)",
        description="Fine-tune the encoder with the retain objective, cache teacher outputs, "
        "export to ONNX (fp32 + int8) with a parity report.",
    )
    sub = parser.add_subparsers(dest="pretrain_command", metavar="ACTION", required=True)

    tr = sub.add_parser("train", help="train or resume per a recipe")
    _recipe_args(tr)
    tr.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, log)")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    tr.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if any")
    tr.add_argument("--epochs", type=_positive_int, default=None, help="override optim.epochs")
    tr.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    tr.set_defaults(handler=_cmd_train)

    ex = sub.add_parser("export", help="export a checkpoint: fp32 + int8 ONNX + parity JSON")
    ex.add_argument("--checkpoint", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True, help="output directory")
    ex.add_argument("--name", default="edge-asd-student", help="model name (metadata)")
    ex.add_argument("--version", default="1", help="model version (metadata)")
    ex.add_argument("--layer", default=None, help="YAMNet port: embedding layer ('final' or 1..14)")
    ex.add_argument(
        "--calibration-windows",
        type=_positive_int,
        default=DEFAULT_CALIBRATION_WINDOWS,
        help="windows of the recipe's clean audio used to calibrate int8",
    )
    ex.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    ex.set_defaults(handler=_cmd_export)

    ca = sub.add_parser("cache-teacher", help="compute the teacher's outputs for all segments")
    _recipe_args(ca)
    ca.set_defaults(handler=_cmd_cache_teacher)

    ve = sub.add_parser("verify-teacher", help="load the teacher and check its outputs")
    _recipe_args(ve)
    ve.set_defaults(handler=_cmd_verify_teacher)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _override(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{key}: value is not valid YAML: {exc}") from None


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        type=Path,
        default=DEFAULT_RECIPE,
        help="YAML recipe (default: the committed one)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="base of the recipe's relative paths (default: the repository root, else cwd)",
    )
    parser.add_argument("--clean", type=Path, action="append", help="clean audio dir (replaces)")
    parser.add_argument("--noise", type=Path, action="append", help="noise audio dir (replaces)")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher model file")
    parser.add_argument("--devset", type=Path, default=None, help="DCASE-layout dev set")
    parser.add_argument("--cache-dir", type=Path, default=None, help="teacher cache directory")
    parser.add_argument(
        "--objective",
        choices=("retain", "denoise", "tagging"),
        default=None,
        help="override objective.name (the experiment's variants of one recipe)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=_override,
        action="append",
        default=[],
        help="override one recipe key, e.g. --set optim.lr=1e-4 (VALUE is read as YAML)",
    )


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        print(NEEDS_TRAIN_EXTRA, file=sys.stderr)
        return False
    return True


def default_data_root() -> Path:
    """The source checkout's root when running from one (recipes point at ../shared), else cwd."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").is_file() else Path.cwd()


def _load_recipe(args: argparse.Namespace) -> Any:
    from edge_asd.pretrain.data import load_recipe

    overrides: dict[str, Any] = {}
    if args.clean:
        overrides["data.clean"] = [{"path": str(p.resolve())} for p in args.clean]
    if args.noise:
        overrides["data.noise"] = [{"path": str(p.resolve()), "labels": "stem"} for p in args.noise]
    if args.teacher:
        overrides["teacher.path"] = str(args.teacher.resolve())
    if args.devset:
        overrides["validation.devset"] = str(args.devset.resolve())
    if args.cache_dir:
        overrides["teacher.cache_dir"] = str(args.cache_dir.resolve())
    if args.objective:
        overrides["objective.name"] = args.objective
    overrides.update(dict(args.overrides))
    base = (args.data_root or default_data_root()).resolve()
    return load_recipe(args.recipe, base_dir=base, overrides=overrides)


def _quiet_info() -> None:
    # The top-level CLI logs at WARNING by default; training progress is worth showing.
    logging.getLogger("edge_asd.pretrain").setLevel(logging.INFO)


def _errors() -> tuple[type[Exception], ...]:
    from edge_asd.pretrain.data import RecipeError
    from edge_asd.pretrain.teacher import TeacherError

    return (RecipeError, TeacherError, FileNotFoundError)


def _cmd_train(args: argparse.Namespace) -> int:
    if not _have_torch():
        return EXIT_USAGE
    import torch

    from edge_asd.pretrain.train import train

    _quiet_info()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        recipe = _load_recipe(args)
        result = train(
            recipe,
            args.out,
            resume=args.resume,
            device=args.device,
            epochs=args.epochs,
            progress=not args.no_progress and sys.stderr.isatty(),  # bars on a terminal only
        )
    except _errors() as exc:
        print(f"edge-asd pretrain train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK  # under torchrun only rank 0 reports
    summary = {
        "out": str(result.out_dir),
        "epochs_done": result.epochs_done,
        "steps": result.steps_done,
        "seconds": round(result.seconds, 1),
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "last_epoch": {k: v for k, v in result.history[-1].items() if k != "dev_sections"}
        if result.history
        else None,
    }
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    if not _have_torch():
        return EXIT_USAGE
    import torch

    from edge_asd.pretrain.export import ExportError
    from edge_asd.pretrain.train import export_checkpoint

    _quiet_info()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = export_checkpoint(
            args.checkpoint,
            args.out,
            name=args.name,
            version=args.version,
            layer=args.layer,
            calibration_windows=args.calibration_windows,
        )
    except _errors() as exc:
        print(f"edge-asd pretrain export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExportError as exc:
        # ParityError included: the report was written next to the models.
        print(f"edge-asd pretrain export: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(report, indent=2, default=str))
    return EXIT_OK


def _cmd_cache_teacher(args: argparse.Namespace) -> int:
    if not _have_torch():
        return EXIT_USAGE
    from edge_asd.pretrain.data import build_corpus
    from edge_asd.pretrain.teacher import TeacherCache, make_teacher
    from edge_asd.pretrain.train import teacher_targets

    _quiet_info()
    try:
        recipe = _load_recipe(args)
        teacher = make_teacher(
            recipe.teacher.kind,
            recipe.resolve(recipe.teacher.path),
            embedding_layer=recipe.teacher.embedding_layer,
        )
        cache = TeacherCache(recipe.resolve(recipe.teacher.cache_dir), teacher)
        corpus = build_corpus(recipe)
        teacher_targets(corpus, cache, progress=True)
    except _errors() as exc:
        print(f"edge-asd pretrain cache-teacher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        json.dumps(
            {"cache": str(cache.directory), "teacher": teacher.cache_id, "computed": cache.computed}
        )
    )
    return EXIT_OK


def _cmd_verify_teacher(args: argparse.Namespace) -> int:
    if not _have_torch():
        return EXIT_USAGE
    import numpy as np

    from edge_asd.pretrain.data import read_class_map
    from edge_asd.pretrain.teacher import make_teacher

    try:
        recipe = _load_recipe(args)
        teacher = make_teacher(
            recipe.teacher.kind,
            recipe.resolve(recipe.teacher.path),
            embedding_layer=recipe.teacher.embedding_layer,
        )
        names = (
            read_class_map(recipe.resolve(recipe.teacher.class_map))
            if recipe.teacher.class_map
            else None
        )
    except _errors() as exc:
        print(f"edge-asd pretrain verify-teacher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    t = np.arange(recipe.segment_samples) / SAMPLE_RATE_HZ
    tone = (VERIFY_TONE_AMPLITUDE * np.sin(2 * np.pi * VERIFY_TONE_HZ * t)).astype(np.float32)
    silence = np.zeros_like(tone)
    emb, scores = teacher.embed_and_scores(np.stack([tone, silence]))
    problems = []
    if emb.shape != (2, teacher.embedding_dim):
        problems.append(f"embedding shape {emb.shape}, expected (2, {teacher.embedding_dim})")
    if not (np.all(np.isfinite(emb)) and np.all(np.isfinite(scores))):
        problems.append("non-finite outputs")
    if scores.size and (scores.min() < -_SCORE_TOLERANCE or scores.max() > 1.0 + _SCORE_TOLERANCE):
        problems.append("scores outside [0, 1]")
    if names is not None and scores.shape[1] != len(names):
        problems.append(f"{scores.shape[1]} scores but {len(names)} class names")
    if np.allclose(emb[0], emb[1]):
        problems.append("a tone and silence give the same embedding")
    top: list[int] = (
        [int(i) for i in np.argsort(scores[0])[::-1][:VERIFY_TOP_CLASSES]] if scores.size else []
    )
    report = {
        "teacher": teacher.name,
        "cache_id": teacher.cache_id,
        "embedding_dim": teacher.embedding_dim,
        "num_classes": teacher.num_classes,
        "tone_top_classes": [
            {"index": int(i), "name": names[i] if names else None, "score": float(scores[0, i])}
            for i in top
        ],
        "problems": problems,
    }
    print(json.dumps(report, indent=2))
    return EXIT_FAILURE if problems else EXIT_OK
