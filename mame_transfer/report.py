"""One self-contained HTML page per run: ``python -m mame_transfer.report RUN``.

The page (``<run>/report.html`` by default) embeds every picture as base64, so it can be mailed or archived
alone: resolved config, metrics per split, per-class report, confusion matrices, training curves, Grad-CAM
samples, the most confident mistakes with thumbnails, and links to the analysis outputs under ``<run>/analysis``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.core import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("report", __doc__.splitlines()[0])
    parser.add_argument("run", help="run directory")
    parser.add_argument("--out", help="HTML file (default <run>/report.html)")
    parser.add_argument("--gradcam", type=cli.non_negative_int, default=8, help="Grad-CAM samples to embed (0 = none)")
    parser.add_argument("--mistakes", type=cli.non_negative_int, default=12, help="most confident mistakes to show")
    return parser


def _report(args) -> None:
    from mame_transfer.analysis.report import build_report

    print(build_report(args.run, out=args.out, gradcam=args.gradcam, mistakes=args.mistakes))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _report, argv)


if __name__ == "__main__":
    sys.exit(main())
