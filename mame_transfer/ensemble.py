"""Average the predicted probabilities of several runs: ``python -m mame_transfer.ensemble RUN RUN ...``.

Each member's scores are reported beside the ensemble's (Gonthier et al. 2020); ``--weighted`` weights a member by
its val top-1, which makes val scores optimistic: report ``--split test`` when the set has one. The library is
:mod:`mame_transfer.training.evaluation`.

Examples::

    python -m mame_transfer.ensemble saved_models/a saved_models/b --split val --out ensembles/ab
    python -m mame_transfer.ensemble saved_models/a saved_models/b saved_models/c --weighted --split test

Writes to ``--out`` (atomically): ``ensemble_<split>.csv`` and ``.md`` (one row per member plus the ensemble),
``metrics.json`` (full metrics of every member and of the ensemble), and the ensemble's
``predictions_<split>.csv``, ``classification_report_<split>.txt`` and ``confusion_matrix_<split>.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.inference.tta import MODES as TTA_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("ensemble", __doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="finished run directories (saved_models/<run>), "
                                                               "same classes")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="split to score")
    parser.add_argument("--weighted", action="store_true", help="weight each member by its val top-1")
    parser.add_argument("--data", help="score every member on this dataset (same class names)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES, help="test-time augmentation")
    parser.add_argument("--batch-size", type=cli.positive_int, help="images per batch (default: each run's)")
    parser.add_argument("--out", help="output folder (default <parent of the first run>/ensemble-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier ensemble at --out")
    cli.add_jobs(parser)
    cli.add_verbose(parser)
    return parser


def _ensemble(args) -> None:
    from mame_transfer.training.evaluation import ensemble_runs

    out = args.out or Path(args.runs[0]).resolve().parent / f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}"
    frame, _ = ensemble_runs(args.runs, split=args.split, weighted=args.weighted, data_path=args.data, out=out,
                             batch_size=args.batch_size, tta=args.tta, overwrite=args.overwrite, verbose=args.verbose)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"written to {out}")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _ensemble, argv)


if __name__ == "__main__":
    sys.exit(main())
