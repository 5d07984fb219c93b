"""Export a recipe's student BEFORE fine-tuning (the experiment's start point), like a checkpoint.

    PYTHONPATH=. python benchmarks/export_start_point.py --out runs/start/export \\
        [--recipe edge_asd/pretrain/recipes/default.yaml] [--name yamnet-start]

The default student is an exact copy of the teacher (the YAMNet port, centre crop, the recipe's
embedding layer); exporting it with the same calibration and parity windows as
`edge-asd pretrain export` isolates what fine-tuning changed (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_asd.pretrain.cli import DEFAULT_RECIPE, default_data_root
from edge_asd.pretrain.data import load_recipe
from edge_asd.pretrain.train import build_student, export_student

# Only the compact student uses these; the YAMNet port brings its own dimensions.
_TEACHER_DIM = 1024
_NUM_CLASSES = 521


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--name", default="yamnet-start")
    parser.add_argument("--version", default="0-start")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, base_dir=default_data_root())
    student = build_student(recipe, _TEACHER_DIM, _NUM_CLASSES).eval()
    report = export_student(student, recipe, args.out, name=args.name, version=args.version)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
