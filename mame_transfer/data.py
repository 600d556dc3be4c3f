"""Datasets: read the MAMe layout and class-per-folder image sets into one table, validate them, feed tf.data.

On-disk layouts understood by every ``--data``:

* **MAMe**: a root folder holding ``MAMe_dataset.csv`` (and optionally ``MAMe_toy_dataset.csv`` and
  ``MAMe_labels.csv``) directly or in ``MAMe_metadata/`` (or ``metadata/``), with the images in ``data_256/`` or
  ``data/`` under the root.
* **folders**: ``<root>/<split>/<class>/*.jpg`` with ``split`` among ``train``, ``val``, ``test``.
* **flat class folders**: ``<root>/<class>/*.jpg``, split on reading (stratified, seeded).
* **split list**: a CSV with columns ``file, label, subset`` (every run records its own as ``splits.csv``).

All become a :class:`Dataset`: one ``pandas.DataFrame`` with a row per image plus the ordered class list.
``python -m mame_transfer.data import`` turns a split class-per-folder set into the MAMe layout, ``split`` does the
same for flat class folders (stratified, seeded split), ``check`` validates any layout.

TensorFlow is imported lazily (inside the pipeline functions) so that reading and validating tables, and the
CLI, stay fast and usable from modules that never touch TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.core.errors import DataError
from mame_transfer.datasets.folders import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, read_flat, read_folders
from mame_transfer.datasets.layouts import detect_layout, load_dataset
from mame_transfer.datasets.mame import write_mame
from mame_transfer.datasets.tables import UNKNOWN_MUSEUM


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("data", __doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="turn a split class-per-folder set (or a split list) into the MAMe layout")
    imp.add_argument("root", help="folder with train/<class>/*.jpg, val/<class>/..., [test/<class>/...], or a "
                                  "split list CSV (file,label,subset)")
    imp.add_argument("--out", required=True, help="output folder (MAMe layout)")
    imp.add_argument("--museum", default=None, help=f"value of the Museum column (default {UNKNOWN_MUSEUM!r})")
    imp.add_argument("--copy", action="store_true", help="copy the images instead of linking the source folder")
    imp.add_argument("--overwrite", action="store_true", help="replace an earlier import at --out")
    spl = commands.add_parser("split", help="split flat class folders (<root>/<class>/*) into train/val/test and "
                                            "write the MAMe layout (a CSV + a link to the images)")
    spl.add_argument("root", help="folder with <class>/*.jpg (also .png, .tif, .webp)")
    spl.add_argument("--out", required=True, help="output folder (MAMe layout)")
    spl.add_argument("--val-fraction", type=cli.finite_float, default=VAL_FRACTION,
                     help=f"share of each class held out for validation (default {VAL_FRACTION})")
    spl.add_argument("--test-fraction", type=cli.finite_float, default=TEST_FRACTION,
                     help=f"share of each class held out for testing; 0 = no test split (default {TEST_FRACTION})")
    spl.add_argument("--split-seed", type=int, default=SPLIT_SEED, help=f"seed of the split (default {SPLIT_SEED})")
    spl.add_argument("--museum", default=None, help=f"value of the Museum column (default {UNKNOWN_MUSEUM!r})")
    spl.add_argument("--copy", action="store_true", help="copy the images instead of linking the source folder")
    spl.add_argument("--overwrite", action="store_true", help="replace an earlier split at --out")
    chk = commands.add_parser("check", help="validate a dataset and print rows per split and class")
    chk.add_argument("path", help="MAMe root / metadata folder / CSV, class-per-folder root, or split list CSV")
    chk.add_argument("--toy", action="store_true", help="read MAMe_toy_dataset.csv")
    chk.add_argument("--images", default=None, help="image folder of a MAMe layout (default data_256/ or data/)")
    chk.add_argument("--no-files", action="store_true", help="check the metadata only, not the image files")
    chk.add_argument("--require", default="train,val", help="comma-separated splits that must be present")
    return parser


def _data(args) -> None:
    if args.command == "import":
        layout = detect_layout(args.root)
        if layout == "list":
            dataset = load_dataset(args.root, museum=args.museum, require=())
        elif layout == "flat":
            raise DataError(f"{args.root} holds flat class folders, not yet split: use `mame-data split` for it.")
        else:
            dataset = read_folders(args.root, museum=args.museum)
        out = write_mame(dataset, args.out, copy_images=args.copy, overwrite=args.overwrite)
        print(f"Imported {len(dataset.table)} images, {dataset.num_classes} classes from {dataset.root} -> {out}")
    elif args.command == "split":
        if detect_layout(args.root) != "flat":
            raise DataError(f"{args.root} is not flat class folders (<root>/<class>/*.jpg) but the "
                            f"{detect_layout(args.root)!r} layout, which carries its split already"
                            + ("; use `mame-data import` for it." if detect_layout(args.root) == "folders" else "."))
        dataset = read_flat(args.root, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                            seed=args.split_seed, museum=args.museum)
        out = write_mame(dataset, args.out, copy_images=args.copy, overwrite=args.overwrite)
        print(f"Split {len(dataset.table)} images, {dataset.num_classes} classes of {dataset.root} (val "
              f"{args.val_fraction}, test {args.test_fraction}, seed {args.split_seed}) -> {out}")
    else:
        require = tuple(s.strip() for s in args.require.split(",") if s.strip())
        dataset = load_dataset(args.path, toy=args.toy, images=args.images, check_files=not args.no_files,
                               require=require)
        files = "metadata only" if args.no_files else "all image files readable"
        print(f"OK: {dataset.source} ({dataset.layout} layout, {len(dataset.table)} images, "
              f"{dataset.num_classes} classes, {files})")
    print(dataset.summary().to_string())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mame_transfer.data {import,split,check} ...``; returns the exit status."""
    return cli.run(build_parser(), _data, argv)


if __name__ == "__main__":
    sys.exit(main())
