"""Which layout a dataset path holds, and reading it (:func:`load_dataset`, what every ``--data`` goes through).

Layouts: ``mame`` (CSV + image folder), ``folders`` (``<root>/<split>/<class>/*``), ``flat``
(``<root>/<class>/*``, split on reading) and ``list`` (a CSV of ``file, label, subset``, e.g. a run's
``splits.csv``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from mame_transfer.core.errors import LIST_LIMIT, DataError
from mame_transfer.datasets.folders import (
    SPLIT_SEED,
    TEST_FRACTION,
    VAL_FRACTION,
    is_split_list,
    looks_flat,
    read_flat,
    read_folders,
    read_split_list,
)
from mame_transfer.datasets.mame import read_mame
from mame_transfer.datasets.tables import (
    DATASET_CSV,
    LAYOUTS_HELP,
    METADATA_DIRS,
    SUBSETS,
    TOY_CSV,
    Dataset,
)


def detect_layout(path: str | os.PathLike) -> str:
    """Say which layout ``path`` holds: ``"mame"``, ``"folders"`` (split folders), ``"flat"`` or ``"list"``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Dataset path {path} does not exist. {LAYOUTS_HELP}")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "list" if is_split_list(path) else "mame"
        raise DataError(f"Dataset path {path} is a file, not a folder or a CSV. {LAYOUTS_HELP}")
    for folder in (path, *(path / d for d in METADATA_DIRS)):
        if (folder / DATASET_CSV).is_file() or (folder / TOY_CSV).is_file():
            return "mame"
    if any((path / s).is_dir() for s in SUBSETS):
        return "folders"
    if looks_flat(path):
        return "flat"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    found = ", ".join(entries[:LIST_LIMIT]) + (f" and {len(entries) - LIST_LIMIT} more" if len(entries) > LIST_LIMIT else "")
    raise DataError(f"{path} is neither dataset layout (it holds: {found or 'nothing'}). {LAYOUTS_HELP}")


def load_dataset(
    path: str | os.PathLike,
    *,
    toy: bool = False,
    images: str | os.PathLike | None = None,
    museum: str | None = None,
    check_files: bool = True,
    require: Iterable[str] | None = ("train", "val"),
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    split_seed: int = SPLIT_SEED,
) -> Dataset:
    """Read a dataset in any layout and check that the ``require``d subsets are present.

    Args:
        path: MAMe root (or its metadata folder, or a MAMe CSV file), class-per-folder root (split or flat), or a
            split list CSV.
        toy: MAMe layout only: read ``MAMe_toy_dataset.csv`` instead of ``MAMe_dataset.csv``.
        images: MAMe layout only: the image folder, when not ``data_256/`` or ``data/`` under the root.
        museum: folder and list layouts: value of the ``museum`` column (default ``"unknown"``).
        check_files: check that every image exists and is a complete, readable image.
        require: subsets that must have rows (``()`` or ``None`` for none).
        val_fraction, test_fraction, split_seed: flat class folders only: the stratified split (other layouts
            carry their split).
    """
    layout = detect_layout(path)
    if layout == "mame":
        if museum is not None:
            raise DataError(f"museum={museum!r} applies to class-per-folder sets; {path} is in the MAMe layout.")
        dataset = read_mame(path, toy=toy, images=images, check_files=check_files)
    else:
        if toy or images is not None:
            raise DataError(
                f"toy/images apply to the MAMe layout; {path} is a class-per-folder set or split list. "
                f"Received: toy={toy}, images={images}"
            )
        if layout == "flat":
            dataset = read_flat(path, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed,
                                museum=museum, check_files=check_files)
        elif layout == "list":
            dataset = read_split_list(path, museum=museum, check_files=check_files)
        else:
            dataset = read_folders(path, museum=museum, check_files=check_files)
    for subset in require or ():
        if subset not in SUBSETS:
            raise DataError(f"Unknown required subset {subset!r}; expected some of {', '.join(SUBSETS)}.")
        if subset not in dataset.subsets:
            where = {"mame": "the Subset column", "list": f"the subset column of {dataset.source}",
                     "flat": f"--{subset}-fraction above 0"}.get(dataset.layout,
                                                                 f"a {subset}/<class>/ folder under {dataset.root}")
            raise DataError(
                f"{dataset.source}: the required {subset!r} split is empty (present: "
                f"{', '.join(dataset.subsets) or 'none'}). Add {subset!r} rows via {where}, or pass "
                f"require={tuple(s for s in (require or ()) if s != subset)}."
            )
    return dataset
