"""The class-per-folder layout: ``<root>/<split>/<class>/*.{jpg,jpeg,png}`` with split in train, val, test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mame_transfer.core.errors import DataError, shorten_list
from mame_transfer.datasets.images import bad_files_message, probe_all
from mame_transfer.datasets.tables import (
    IMAGE_EXTENSIONS,
    LAYOUTS_HELP,
    SUBSETS,
    TABLE_COLUMNS,
    UNKNOWN_MUSEUM,
    Dataset,
    check_classes_trained,
    class_name,
)


def read_folders(
    root: str | os.PathLike,
    *,
    museum: str | None = None,
    check_files: bool = True,
) -> Dataset:
    """Read a class-per-folder set ``<root>/<split>/<class>/*.{jpg,jpeg,png}``.

    Width and height come from the image headers (read in threads); ``product_size = w * h`` and
    ``aspect_ratio = round(w / h, 4)`` as in MAMe; ``instance_id`` is the file stem.

    Raises:
        DataError: unknown split folders, images outside class folders, no images, bad image files.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist or is not a folder. {LAYOUTS_HELP}")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in dirs if p.name not in SUBSETS]
    if unknown:
        raise DataError(
            f"{root}: folder(s) {', '.join(repr(u) for u in unknown)} are not splits. A class-per-folder set holds "
            f"only {', '.join(SUBSETS)} folders, each with one folder per class (e.g. {root}/train/<class>/x.jpg); "
            "move the class folders into train/ (and val/, test/)."
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
            for file in sorted(entry.rglob("*")):
                # Non-image files (README, Thumbs.db) are skipped on purpose: only the listed extensions are data.
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS and not file.name.startswith("."):
                    records.append((file.relative_to(root).as_posix(), str(file), label, split_dir.name))
            if len(records) == found:
                empty.append(str(entry))
    if empty:
        raise DataError(f"{root}: {len(empty)} class folder(s) hold no .jpg/.jpeg/.png image: {shorten_list(empty)}. "
                        f"Each would be a class the model can never learn; add images or remove the folder(s).")
    if stray:
        raise DataError(
            f"{root}: {len(stray)} image(s) lie directly in a split folder instead of a class folder: "
            f"{shorten_list(stray)}. Move each into <split>/<class>/."
        )
    if not records:
        raise DataError(f"{root}: no .jpg/.jpeg/.png images found under {', '.join(SUBSETS)} class folders.")

    paths = [r[1] for r in records]
    probes = probe_all(paths)
    if check_files:
        bad = [(p, reason) for p, (_, reason) in zip(paths, probes) if reason]
        if bad:
            raise DataError(bad_files_message(root, bad) + " Remove or replace these files.")
    sizes = np.array([size if size else (np.nan, np.nan) for size, _ in probes], dtype=float)
    width, height = sizes[:, 0], sizes[:, 1]
    classes = sorted(classes)
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
    check_classes_trained(table, classes, root)
    return Dataset(table, classes, root=root, layout="folders", image_root=root, source=root)
