"""Export a finished run as a self-contained model: ``python -m mame_transfer.export RUN --out DIR``.

Examples::

    python -m mame_transfer.export saved_models/media --out exported/media                    # SavedModel
    python -m mame_transfer.export saved_models/media --out exported/media_keras --format keras
    python -m mame_transfer.export saved_models/media --out exported/media_tflite --format tflite --quantize float16

``savedmodel`` (default): DIR is a SavedModel whose ``serving_default`` signature takes a batch of encoded images
(``tf.string``, JPEG/PNG/WebP of any size) and returns ``probabilities``, ``classes`` (names, most probable first)
and ``scores``; decoding, resizing, preprocessing and class names are inside, so ``tf.saved_model.load(DIR)`` or
TensorFlow Serving is all a user needs. ``keras`` (DIR/model.keras) and ``tflite`` (DIR/model.tflite) take uint8
images of one fixed size (``--input-size``) with resize and preprocessing inside. Every export holds
``class_index.json`` and ``export.json``, and is checked against the run's own model on a few images before it is
written (the agreement is printed). The library behind it is :mod:`mame_transfer.deploy.export`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.deploy.export import FORMATS, QUANTIZE


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("export", __doc__.splitlines()[0].split(": ")[0] + ".")
    parser.add_argument("run", help="finished run directory (saved_models/<run>)")
    parser.add_argument("--out", required=True, help="folder to write (the SavedModel itself for savedmodel)")
    parser.add_argument("--format", default="savedmodel", choices=FORMATS,
                        help="savedmodel: encoded image bytes in; keras / tflite: uint8 pixels of one size in "
                             "(choices: %(choices)s; default savedmodel)")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE,
                        help="--format tflite: store the weights as float16 (half the size) (choices: %(choices)s; "
                             "default none)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="--format keras / tflite: side of the square uint8 input images, resized inside to the "
                             "run's size (default: the run's image size)")
    parser.add_argument("--verify-images", nargs="+", default=None, metavar="IMAGE",
                        help="image files to verify the export on (default: the run's val images, or generated "
                             "ones when its data are not on this machine)")
    parser.add_argument("--verify-count", type=int, default=8, help="images to verify on by default (default 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1),
                        help="1 prints what was exported and the verification, 0 only the output path (default 1)")
    return parser


def _export(args) -> None:
    from mame_transfer.deploy.export import export_run

    manifest = export_run(args.run, args.out, fmt=args.format, quantize=args.quantize, input_size=args.input_size,
                          verify=args.verify_images, n_verify=args.verify_count, overwrite=args.overwrite)
    check = manifest["verification"]
    if args.verbose:
        kind = manifest["format"] + (f" ({manifest['quantize']} weights)" if manifest["quantize"] != "none" else "")
        print(f"exported {manifest['arch']} run ({len(manifest['classes'])} classes) as {kind}")
        print(f"inputs: {'; '.join(f'{k}: {v}' for k, v in manifest['inputs'].items())}")
        print(f"verified on {check['source']}: top-1 agrees with the run's model on {check['top1_agree']}/"
              f"{check['images']}, max |probability difference| {check['max_abs_diff']:.2e}")
    print(args.out)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _export, argv)


if __name__ == "__main__":
    sys.exit(main())
