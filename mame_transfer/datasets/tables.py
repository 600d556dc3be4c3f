"""The one table every image set becomes: a row per image (file, path, label, subset, museum, sizes) + classes.

The on-disk layouts (:mod:`.mame`, :mod:`.folders`) are read into a :class:`Dataset`; :mod:`.layouts` tells them
apart. Column names of the MAMe CSV and of the table live here, so both readers and the writer agree on them.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mame_transfer.core.errors import DataError

COLUMNS = [
    "Image file",
    "Medium",
    "Museum",
    "Museum-based instance ID",
    "Subset",
    "Width",
    "Height",
    "Product size",
    "Aspect ratio",
]

SUBSETS = ("train", "val", "test")
DATASET_CSV = "MAMe_dataset.csv"
TOY_CSV = "MAMe_toy_dataset.csv"
LABELS_CSV = "MAMe_labels.csv"
METADATA_DIRS = ("MAMe_metadata", "metadata")

# data_256 first: it is the release's 256 px copy, the one meant for training.
IMAGE_DIRS = ("data_256", "data")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
EXTENSIONS_TEXT = "/".join(IMAGE_EXTENSIONS)  # for messages: .jpg/.jpeg/.png/...

TABLE_COLUMNS = [
    "image",
    "path",
    "label",
    "label_index",
    "subset",
    "museum",
    "instance_id",
    "width",
    "height",
    "product_size",
    "aspect_ratio",
]

UNKNOWN_MUSEUM = "unknown"

LAYOUTS_HELP = (
    "Expected the MAMe layout (ROOT/MAMe_metadata/MAMe_dataset.csv [+ MAMe_labels.csv], or the CSV "
    "directly in ROOT, with images in ROOT/data_256/ or ROOT/data/), a class-per-folder layout split into "
    "ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg [, ROOT/test/<class>/*.jpg], flat class folders "
    "ROOT/<class>/*.jpg (split by --val-fraction/--test-fraction/--split-seed), or a split list CSV with "
    "columns file,label,subset (e.g. a run's splits.csv)."
)


def class_name(text) -> str:
    """A class name as the package keys it: NFC-normalised Unicode, surrounding whitespace stripped.

    ``Café`` typed with a precomposed é (macOS folder names use the decomposed form) and ``"Woven fabric "`` with the
    real CSV's trailing space each stay one class.
    """
    return unicodedata.normalize("NFC", str(text)).strip()


def check_classes_trained(table: pd.DataFrame, classes: list[str], source) -> None:
    """Every class with val or test rows must have train rows (else it is an output nothing taught).

    Raises:
        DataError: naming the classes and where their rows are.
    """
    if "train" not in set(table["subset"]):
        return  # an evaluation-only set (e.g. ``evaluate --data``) has nothing to learn from
    trained = set(table.loc[table["subset"] == "train", "label"])
    untrained = [c for c in classes if c not in trained and (table["label"] == c).any()]
    if untrained:
        where = {c: sorted(set(table.loc[table["label"] == c, "subset"])) for c in untrained}
        raise DataError(f"{source}: {len(untrained)} class(es) have val/test images but no train image: "
                        f"{'; '.join(f'{c!r} (in {chr(44).join(w)})' for c, w in where.items())}. Add train images "
                        f"for them or remove their rows.")


@dataclass
class Dataset:
    """One image set as a table.

    Attributes:
        table: one row per image; columns ``TABLE_COLUMNS`` (``label`` is whitespace-stripped, ``path`` absolute).
        classes: ordered class names; ``label_index`` indexes this list.
        root: the dataset root folder.
        layout: ``"mame"`` or ``"folders"``.
        image_root: the folder the ``image`` column is relative to (used by :func:`write_mame`).
        source: the CSV file or folder the table was read from (named in error messages).
    """

    table: pd.DataFrame
    classes: list[str]
    root: Path | None = None
    layout: str = "mame"
    image_root: Path | None = None
    source: Path | None = None

    def split(self, subset: str) -> pd.DataFrame:
        """Rows of one subset (``train``, ``val`` or ``test``) with a fresh 0..n-1 index."""
        if subset not in SUBSETS:
            raise DataError(f"Unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}.")
        rows = self.table[self.table["subset"] == subset]
        if rows.empty:
            raise DataError(
                f"No {subset!r} rows in {self.source or self.root or 'the dataset'}; available subsets: "
                f"{', '.join(self.subsets) or 'none'}."
            )
        return rows.reset_index(drop=True)

    @property
    def class_index(self) -> dict[str, int]:
        """Class name -> label index."""
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def subsets(self) -> list[str]:
        """Subsets present in the table, in ``SUBSETS`` order."""
        present = set(self.table["subset"])
        return [s for s in SUBSETS if s in present]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> pd.DataFrame:
        """Rows per class (index) and subset (columns), with totals."""
        counts = pd.crosstab(self.table["label"], self.table["subset"])
        counts = counts.reindex(index=self.classes, columns=self.subsets, fill_value=0)
        counts["total"] = counts.sum(axis=1)
        counts.loc["total"] = counts.sum(axis=0)
        counts.index.name = "class"
        counts.columns.name = None
        return counts


def content_hash(table: pd.DataFrame) -> str:
    """sha256 over every row's image, label and subset and its file's size and mtime: the identity of a data set.

    Two tables hash alike only when they list the same files, unchanged on disk, with the same labels and splits;
    a resumed run or search compares it to refuse continuing on other data.
    """
    h = hashlib.sha256()
    cols = [table[c].astype(str).tolist() for c in ("image", "label", "subset", "path")]
    for image, label, subset, path in sorted(zip(*cols)):
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}\t{int(st.st_mtime)}"
        except OSError:
            stamp = "-\t-"
        h.update(f"{image}\t{label}\t{subset}\t{stamp}\n".encode())
    return h.hexdigest()
