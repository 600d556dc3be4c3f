"""Class-per-folder image sets, already split or not, and split lists.

* split folders: ``<root>/<split>/<class>/*`` with split in train, val, test (:func:`read_folders`);
* flat class folders: ``<root>/<class>/*``, split here into train/val/test, stratified by class and seeded
  (:func:`read_flat`, :func:`stratified_split`);
* a split list: a CSV with columns ``file, label, subset`` (:func:`read_split_list`), what every run records as
  its ``splits.csv`` (:func:`write_split_list`) so the same split can be reused with ``--data <run>/splits.csv``.

Images are ``.jpg``, ``.jpeg``, ``.png``, ``.tif``, ``.tiff`` or ``.webp`` (any case).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, DataError, shorten_list
from mame_transfer.core.fileio import write_text
from mame_transfer.datasets.images import bad_files_message, probe_all
from mame_transfer.datasets.tables import (
    EXTENSIONS_TEXT,
    IMAGE_DIRS,
    IMAGE_EXTENSIONS,
    LAYOUTS_HELP,
    METADATA_DIRS,
    SUBSETS,
    TABLE_COLUMNS,
    UNKNOWN_MUSEUM,
    Dataset,
    check_classes_trained,
    class_name,
)

SPLIT_LIST_COLUMNS = ("file", "label", "subset")
VAL_FRACTION, TEST_FRACTION, SPLIT_SEED = 0.15, 0.15, 0  # the defaults of --val-fraction etc.


def is_image_file(path: Path) -> bool:
    """An image by its extension (any case), not hidden (``.DS_Store``, ``._x.jpg`` from macOS)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    # Non-image files (README, Thumbs.db) are skipped on purpose: only the listed extensions are data.
    return [f for f in sorted(folder.rglob("*")) if f.is_file() and is_image_file(f)]


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folders(
    root: str | os.PathLike,
    *,
    museum: str | None = None,
    check_files: bool = True,
) -> Dataset:
    """Read a class-per-folder set ``<root>/<split>/<class>/*.{jpg,jpeg,png,tif,tiff,webp}``.

    Width and height come from the image headers (read in threads); ``product_size = w * h`` and
    ``aspect_ratio = round(w / h, 4)`` as in MAMe; ``instance_id`` is the file stem.

    Raises:
        DataError: unknown split folders, images outside class folders, no images, bad image files.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist or is not a folder. {LAYOUTS_HELP}")
    dirs = _class_dirs(root)
    unknown = [p.name for p in dirs if p.name not in SUBSETS]
    if unknown:
        raise DataError(
            f"{root}: folder(s) {', '.join(repr(u) for u in unknown)} are not splits. A class-per-folder set holds "
            f"either only {', '.join(SUBSETS)} folders, each with one folder per class (e.g. {root}/train/<class>/x.jpg), "
            f"or only class folders (flat: {root}/<class>/x.jpg, split by --val-fraction/--test-fraction); "
            "move the class folders into train/ (and val/, test/), or the split folders' contents up."
        )
    records, stray, empty, classes = [], [], [], set()
    for split_dir in (root / s for s in SUBSETS if (root / s).is_dir()):
        for entry in sorted(split_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_file():
                if entry.suffix.lower() in IMAGE_EXTENSIONS:
                    stray.append(str(entry))
                continue
            label = class_name(entry.name)  # "Café" typed two ways (NFC / NFD) is one class
            classes.add(label)
            found = len(records)
            for file in _images_under(entry):
                records.append((file.relative_to(root).as_posix(), str(file), label, split_dir.name))
            if len(records) == found:
                empty.append(str(entry))
    if empty:
        raise DataError(f"{root}: {len(empty)} class folder(s) hold no {EXTENSIONS_TEXT} image: {shorten_list(empty)}. "
                        f"Each would be a class the model can never learn; add images or remove the folder(s).")
    if stray:
        raise DataError(
            f"{root}: {len(stray)} image(s) lie directly in a split folder instead of a class folder: "
            f"{shorten_list(stray)}. Move each into <split>/<class>/."
        )
    if not records:
        raise DataError(f"{root}: no {EXTENSIONS_TEXT} images found under {', '.join(SUBSETS)} class folders.")
    return _dataset(records, sorted(classes), root, layout="folders", museum=museum, check_files=check_files)


def looks_flat(root: Path) -> bool:
    """Does a folder hold class folders directly (``<root>/<class>/*``), rather than splits or a MAMe release?"""
    names = {p.name for p in _class_dirs(root)}
    return bool(names) and not names & {*SUBSETS, *IMAGE_DIRS, *METADATA_DIRS}


def read_flat(
    root: str | os.PathLike,
    *,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
    museum: str | None = None,
    check_files: bool = True,
) -> Dataset:
    """Read flat class folders ``<root>/<class>/*`` and split them (see :func:`stratified_split`).

    The ``subset`` column holds the split; the same folder, fractions and seed always give the same split.

    Raises:
        DataError: images outside class folders, fewer than 2 classes, a class too small to split, bad images.
        ConfigError: fractions out of range.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist or is not a folder. {LAYOUTS_HELP}")
    stray = [str(p) for p in sorted(root.iterdir()) if p.is_file() and is_image_file(p)]
    if stray:
        raise DataError(f"{root}: {len(stray)} image(s) lie directly in the folder instead of a class folder: "
                        f"{shorten_list(stray)}. Flat class folders are {root}/<class>/<image>; move each image "
                        f"into its class folder.")
    files: dict[str, list[Path]] = {}
    for d in _class_dirs(root):  # "Café" typed two ways (NFC / NFD) is one class
        files.setdefault(class_name(d.name), []).extend(_images_under(d))
    if len(files) < 2:
        raise DataError(f"{root}: a classifier needs at least 2 class folders; found "
                        f"{', '.join(repr(c) for c in files) or 'none'}. {LAYOUTS_HELP}")
    labels = [c for c, found in files.items() for _ in found]
    paths = [p for found in files.values() for p in found]
    subsets = stratified_split(labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                               source=root, all_classes=list(files))
    records = [(p.relative_to(root).as_posix(), str(p), c, s) for p, c, s in zip(paths, labels, subsets)]
    return _dataset(records, sorted(files), root, layout="flat", museum=museum, check_files=check_files)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """``0 < val_fraction``, ``0 <= test_fraction`` and their sum below 1 (train keeps the rest)."""
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"--val-fraction must be in (0, 1), --test-fraction in [0, 1), and their sum below 1 (the rest is "
            f"train). Received: val_fraction={val_fraction}, test_fraction={test_fraction}")


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))  # half up, unlike Python's round (half to even)


def stratified_split(labels: Sequence[str], *, val_fraction: float = VAL_FRACTION,
                     test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED, source: str | Path = "",
                     all_classes: Sequence[str] | None = None) -> list[str]:
    """The subset (train, val, test) of every item, stratified by label and reproducible.

    Per class of ``n`` items, ``round(n * fraction)`` go to val and to test (at least one each when the fraction is
    above 0), the rest to train, in an order drawn from ``seed`` and the class name (so a class's split does not
    depend on the other classes). Items are taken in the order given (callers sort them).

    Raises:
        DataError: one message naming every class too small to give each split an item (``all_classes`` lists
            classes that may have no item at all).
    """
    check_fractions(val_fraction, test_fraction)
    labels = list(labels)
    by_class: dict[str, list[int]] = {c: [] for c in (all_classes or [])}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    plan, small = {}, []
    for label, rows in by_class.items():
        n = len(rows)
        n_val = max(1, _round(n * val_fraction))
        n_test = max(1, _round(n * test_fraction)) if test_fraction > 0 else 0
        if n - n_val - n_test < 1:
            small.append(f"{label!r} ({n} image{'s' if n != 1 else ''})")
        plan[label] = (rows, n_val, n_test)
    if small:
        need = 2 + (test_fraction > 0)
        splits = "train/val/test" if test_fraction > 0 else "train/val"
        raise DataError(
            f"{source}: {len(small)} class(es) too small to split into {splits} with --val-fraction {val_fraction} "
            f"--test-fraction {test_fraction}: {shorten_list(small)}. Each class needs at least {need} images (one "
            f"per split, more with larger fractions); add images, remove the class folder"
            + (", or pass --test-fraction 0 (no test split)." if test_fraction > 0 else ".")
        )
    subsets = [""] * len(labels)
    for label, (rows, n_val, n_test) in plan.items():
        rng = np.random.default_rng([int(seed), zlib.crc32(label.encode("utf-8"))])
        order = [rows[j] for j in rng.permutation(len(rows))]
        for k, row in enumerate(order):
            subsets[row] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return subsets


def is_split_list(path: str | os.PathLike) -> bool:
    """Is this CSV a split list (its header names ``file``, ``label`` and ``subset``)?"""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return False
    return set(SPLIT_LIST_COLUMNS) <= {h.strip().lower() for h in header}


def read_split_list(path: str | os.PathLike, *, museum: str | None = None, check_files: bool = True) -> Dataset:
    """Read a split list: a CSV with columns ``file, label, subset`` (others ignored), one row per image.

    Relative ``file`` paths are relative to the CSV's folder. Classes are the labels, sorted.

    Raises:
        DataError: one message naming the CSV lines of every bad row, and every missing or unreadable image.
    """
    path = Path(os.path.abspath(path))
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path} is not a readable split list CSV ({type(exc).__name__}: {exc})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in SPLIT_LIST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; a split list has the columns "
                        f"{','.join(SPLIT_LIST_COLUMNS)} (found: {','.join(frame.columns)}).")
    file, label, subset = (frame[c].str.strip() for c in SPLIT_LIST_COLUMNS)
    label = label.map(class_name)
    lines = np.arange(len(frame)) + 2  # the header is line 1
    problems = []
    for mask, values, what in (
        (file.eq(""), file, "with an empty file"),
        (label.eq(""), label, "with an empty label"),
        (~subset.isin(SUBSETS), subset, f"with a subset other than {', '.join(SUBSETS)}"),
        (file.duplicated(keep=False) & file.ne(""), file, "naming the same file"),
    ):
        mask = mask.to_numpy()
        if mask.any():
            items = [f"line {n} ({v!r})" for n, v in zip(lines[mask], values[mask])]
            problems.append(f"{mask.sum()} row(s) {what}: {shorten_list(items)}")
    if frame.empty:
        problems.append("no rows")
    if problems:
        raise DataError(f"{path}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    paths = [os.path.normpath(os.path.join(path.parent, f)) for f in file]
    if check_files:
        absent = [f"line {n} ({p})" for n, p in zip(lines, paths) if not os.path.isfile(p)]
        if absent:
            raise DataError(f"{path}: {len(absent)} listed image file(s) missing: {shorten_list(absent)}.")
    image_root = Path(os.path.commonpath([os.path.dirname(p) for p in paths]))
    records = [(Path(p).relative_to(image_root).as_posix(), p, c, s) for p, c, s in zip(paths, label, subset)]
    return _dataset(records, sorted(set(label)), image_root, layout="list", museum=museum, check_files=check_files,
                    source=path)


def write_split_list(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a split list (``file`` absolute, ``label``, ``subset``), atomically."""
    frame = pd.DataFrame({"file": [os.path.abspath(p) for p in dataset.table["path"]],
                          "label": dataset.table["label"].to_numpy(), "subset": dataset.table["subset"].to_numpy()},
                         columns=list(SPLIT_LIST_COLUMNS))
    return write_text(path, frame.to_csv(index=False))


def _dataset(records: list[tuple[str, str, str, str]], classes: list[str], root: Path, *, layout: str,
             museum: str | None, check_files: bool, source: Path | None = None) -> Dataset:
    """The Dataset of ``(image, path, label, subset)`` records, sizes read from the image headers."""
    paths = [r[1] for r in records]
    probes = probe_all(paths)
    if check_files:
        bad = [(p, reason) for p, (_, reason) in zip(paths, probes) if reason]
        if bad:
            raise DataError(bad_files_message(root, bad) + " Remove or replace these files.")
    sizes = np.array([size if size else (np.nan, np.nan) for size, _ in probes], dtype=float).reshape(-1, 2)
    width, height = sizes[:, 0], sizes[:, 1]
    index = {c: i for i, c in enumerate(classes)}
    table = pd.DataFrame(
        {
            "image": [r[0] for r in records],
            "path": paths,
            "label": [r[2] for r in records],
            "label_index": [index[r[2]] for r in records],
            "subset": [r[3] for r in records],
            "museum": museum if museum is not None else UNKNOWN_MUSEUM,
            "instance_id": [Path(r[1]).stem for r in records],
            "width": width,
            "height": height,
            "product_size": width * height,
            "aspect_ratio": np.round(width / height, 4),
        },
        columns=TABLE_COLUMNS,
    )
    check_classes_trained(table, classes, source or root)
    return Dataset(table, classes, root=root, layout=layout, image_root=root, source=source or root)
