"""Label new images with a finished run: ``python -m mame_transfer.predict RUN INPUT... --out FILE.csv``.

Examples::

    python -m mame_transfer.predict saved_models/media new_scans/ more.jpg list.csv --out labels.csv --top-k 3
    python -m mame_transfer.predict saved_models/media scans/ --out labels.csv --tta flip --batch-size 64

Inputs are image files (JPEG, PNG, TIFF, WebP), folders (searched recursively) and lists of paths: a CSV with a
``path`` (or ``file``) column, or a text file with one path per line. Output columns: ``path, prediction,
probability``, then ``top2, top2_probability, ...`` up to ``--top-k``, and ``errors`` (why a file could not be
labelled: missing, truncated, not an image; such files do not stop the run). Images stream through in input order:
memory stays flat however many there are. Rows are written to ``FILE.partial`` as they come; the CSV appears under
its name only when complete, and rerunning the same command after an interrupt resumes after the last row.
The library behind it is :mod:`mame_transfer.deploy`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.inference.tta import MODES as TTA_MODES

RESUME_HINT = "rerun the same command to resume after the last written row"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("predict", __doc__.splitlines()[0].split(": ")[0] + ".")
    parser.add_argument("run", help="finished run directory (saved_models/<run>)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image file, folder of images (recursive), or CSV / .txt list of image paths")
    parser.add_argument("--out", required=True, help="CSV file to write (one row per image, in input order)")
    parser.add_argument("--top-k", type=int, default=1,
                        help="classes per image, most probable first: adds top2, top2_probability, ... (default 1)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation, as in evaluate: mirror-image averaging, or multi-patch scoring "
                             "(choices: %(choices)s; default none)")
    parser.add_argument("--patch-scales", default=None,
                        help="--tta patches: patch sides as fractions of the short side (default: the run's)")
    parser.add_argument("--patch-power", type=float, default=None,
                        help="--tta patches: k in mean over patches of y(C|P)^k (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1),
                        help="1 shows a progress bar on stderr, 0 prints only the summary (default 1)")
    return parser


def _predict(args) -> None:
    from mame_transfer.deploy.classifier import check_run, load_classifier
    from mame_transfer.deploy.inputs import collect_inputs
    from mame_transfer.deploy.labels import write_predictions

    check_run(args.run)
    paths = collect_inputs(args.inputs)  # every input checked before the model is loaded
    clf = load_classifier(args.run)
    summary = write_predictions(clf, paths, args.out, top_k=args.top_k, tta=args.tta, batch_size=args.batch_size,
                                patch_scales=args.patch_scales, patch_power=args.patch_power,
                                overwrite=args.overwrite, verbose=args.verbose)
    resumed = f", resumed after row {summary['resumed_at']}" if summary["resumed_at"] else ""
    unreadable = (f"; {summary['unreadable']} unreadable (reasons in the errors column)"
                  if summary["unreadable"] else "")
    print(f"labelled {summary['labelled']} of {summary['images']} images{unreadable}{resumed} -> {summary['out']}")
    for name, count in summary["classes"].items():
        print(f"  {name}: {count}")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _predict, argv, on_interrupt=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
