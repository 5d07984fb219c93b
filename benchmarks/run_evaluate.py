"""Evaluate an encoder + memory bank on a DCASE-layout ROOT and print the table.

    PYTHONPATH=. python benchmarks/run_evaluate.py devsets/dev --out runs/eval-density

Stand-in for `edge-asd evaluate ROOT --out DIR [--model M] [--scoring ...] [--k K]` until the CLI
is wired; calls the same `edge_asd.evaluation.evaluate` and `format_table`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_asd.encoder import Encoder, resolve_model
from edge_asd.evaluation import evaluate, format_table
from edge_asd.memory_bank import SCORE_METHODS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="bundled model name or ONNX path")
    parser.add_argument("--scoring", choices=SCORE_METHODS, default="density")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--aggregate", choices=("mean", "max"), default="mean")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    encoder = Encoder(resolve_model(args.model), intra_op_threads=args.threads)
    results = evaluate(
        args.root,
        args.out,
        encoder,
        method=args.scoring,
        k=args.k,
        aggregate=args.aggregate,
        progress=not args.no_progress,
    )
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
