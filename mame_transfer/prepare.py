"""Write a resized copy of a MAMe dataset once: ``python -m mame_transfer.prepare``.

Decoding a full-resolution MAMe JPEG (median about 2667x2900 px) costs far more than classifying it at 224 px,
so training from the originals spends its time in the JPEG decoder every epoch. This step pays that cost once.

Examples::

    python -m mame_transfer.prepare --data /path/to/MAMe --size 256 --out /path/to/MAMe_256
    python -m mame_transfer.prepare --data /path/to/MAMe --size 512 --keep-aspect --out /path/to/MAMe_512va

Output geometry:

* default: every image becomes ``size x size`` (aspect ratio not kept), the fixed-shape 256x256 setting of the
  MAMe baselines;
* ``--keep-aspect``: the **shorter** side becomes ``size`` and the aspect ratio is kept (crop or pad later).

The output is a MAMe layout that :func:`mame_transfer.datasets.load_dataset` reads: the metadata CSVs are copied
unchanged (same rows, original ``Width``/``Height``), the images go to ``<out>/data_256/`` for ``--size 256`` and
``<out>/data/`` otherwise, under the same relative names. Images are resized in a process pool with a progress
bar; each output is written to a temporary file and renamed, so an interrupted run is resumed by running the
same command again (finished images are skipped). JPEGs are decoded with DCT-domain downscaling
(``PIL.Image.draft``: libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the target size) before the final
antialiased resize; ``--full-decode`` decodes at full resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from mame_transfer.core import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("prepare", __doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="source MAMe folder (CSV + data/ or data_256/)")
    parser.add_argument("--out", required=True, help="output folder (a MAMe layout)")
    parser.add_argument("--size", type=cli.positive_int, default=256, help="output side (square) or shorter side (--keep-aspect)")
    parser.add_argument("--keep-aspect", action="store_true", help="keep the aspect ratio: shorter side = --size")
    parser.add_argument("--images", default=None, help="source image folder, when not <data>/data or data_256")
    parser.add_argument("--full-decode", dest="draft", action="store_false",
                        help="decode every JPEG at full resolution before resizing (slower; by default libjpeg "
                             "decodes at 1/2, 1/4 or 1/8 scale, never below --size)")
    cli.hidden_alias(parser, "--no-draft", dest="draft", action="store_false")  # former name of --full-decode
    cli.add_jobs(parser, help="worker processes (default: all CPU cores)")
    cli.hidden_alias(parser, "--workers", dest="jobs", type=cli.positive_int)  # former name of --jobs
    parser.add_argument("--overwrite", action="store_true",
                        help="redo an --out folder prepared with other settings (--size, --keep-aspect, --full-decode)")
    cli.add_verbose(parser)
    cli.hidden_alias(parser, "--quiet", dest="verbose", action="store_const", const=0)  # former: no progress bar
    return parser


def _prepare(args) -> None:
    from mame_transfer.datasets.prepare import prepare

    result = prepare(args.data, args.out, args.size, keep_aspect=args.keep_aspect, draft=args.draft,
                     workers=args.jobs, images=args.images, progress=bool(args.verbose),
                     overwrite=args.overwrite)
    rate = result["written"] / result["seconds"] if result["seconds"] > 0 else 0.0
    print(json.dumps({"out": str(args.out), "written": result["written"], "skipped": result["skipped"],
                      "seconds": round(result["seconds"], 2), "images_per_second": round(rate, 1)}))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _prepare, argv, on_interrupt="rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
