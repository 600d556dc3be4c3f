"""Metrics, predictions and plots of a trained model on any split; ``python -m mame_transfer.evaluate RUN``.

A run directory holds ``metrics.json`` with one entry per evaluated split. Per split ``S`` it also holds
``predictions_S.csv``, ``classification_report_S.txt`` and ``confusion_matrix_S.png``; the unsuffixed
``predictions.csv``, ``classification_report.txt`` and ``confusion_matrix.png`` are those of the final split
(test when the dataset has one, else val).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.inference.tta import MODES as TTA_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("evaluate", __doc__.splitlines()[0])
    parser.add_argument("run", help="finished run directory (saved_models/<run>)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score")
    parser.add_argument("--data", help="evaluate on another dataset (same class names)")
    parser.add_argument("--toy", action=argparse.BooleanOptionalAction, default=None,
                        help="MAMe layout: read the toy CSV (default: as the run did)")
    parser.add_argument("--out", help="where to write (default: the run directory)")
    parser.add_argument("--batch-size", type=cli.positive_int, help="images per batch (default: the run's)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation: mirror-image averaging, or Oquab et al.'s multi-patch scoring")
    parser.add_argument("--patch-scales", default="1.0,0.7,0.5",
                        help="--tta patches: comma-separated sides as fractions of the short side")
    parser.add_argument("--patch-power", type=cli.finite_float, default=5.0,
                        help="--tta patches: k in mean over patches of y(C|P)^k")
    cli.add_jobs(parser)
    cli.add_verbose(parser)
    return parser


def _evaluate(args) -> None:
    from mame_transfer.inference.metrics import score_line
    from mame_transfer.training.evaluation import evaluate_run

    m = evaluate_run(args.run, split=args.split, data_path=args.data, toy=args.toy, out=args.out,
                     batch_size=args.batch_size, verbose=args.verbose, tta=args.tta,
                     patch_scales=args.patch_scales, patch_power=args.patch_power)
    key = args.split if args.tta == "none" else f"{args.split}_{args.tta}"
    print(f"{key}: {score_line(m)}" + (" ([low, high]: 95 % bootstrap intervals)" if "top1_ci" in m else ""))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
