"""What ``predict`` labels: image files, folders (recursive) and lists of paths (a CSV with a path column, or text).

Every input given on the command line is checked before any image is read, so a typo fails at once with one error
naming it; image files named inside a list that turn out to be missing or unreadable become rows of the result
with the reason in their ``errors`` column instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from mame_transfer.core.errors import DataError
from mame_transfer.datasets.folders import is_image_file
from mame_transfer.datasets.tables import EXTENSIONS_TEXT

LIST_EXTENSIONS = (".csv", ".txt", ".lst")
PATH_COLUMNS = ("path", "file", "filepath", "filename", "image")  # first one present is read, any case


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand the inputs into image paths, in order: a folder gives its images (sorted, recursive, hidden files
    skipped), a ``.csv`` / ``.txt`` / ``.lst`` file the paths it lists, anything else is taken as an image.

    Raises:
        DataError: an input does not exist, a folder holds no image, a list names no path, a CSV has no path
            column.
    """
    paths: list[str] = []
    given = [str(i) for i in inputs]
    if not given:
        raise DataError("no input given: pass image files, folders, or CSV / text lists of image paths")
    for item in given:
        path = Path(item)
        if not path.exists():
            raise DataError(f"input {item} does not exist (expected an image file, a folder of images, or a "
                            f"{'/'.join(LIST_EXTENSIONS)} list of image paths)")
        if path.is_dir():
            paths += images_in_folder(item)
        elif path.suffix.lower() in LIST_EXTENSIONS:
            paths += read_path_list(item)
        else:
            paths.append(item)
    return paths


def images_in_folder(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (any depth), sorted folder by folder; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, name) for name in sorted(filenames) if is_image_file(Path(name))]
    if not found:
        raise DataError(f"{folder}: no images ({EXTENSIONS_TEXT}) in this folder or its subfolders")
    return found


def read_path_list(file: str | os.PathLike) -> list[str]:
    """Paths listed in a CSV (its ``path`` column, or ``file``, ``filepath``, ``filename``, ``image``) or a text
    file (one per line; blank lines and ``#`` comments skipped). Relative paths are relative to the list's folder.
    """
    import pandas as pd

    file = Path(file)
    base = file.parent
    if file.suffix.lower() == ".csv":
        try:
            frame = pd.read_csv(file, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{file} is not a readable CSV ({type(exc).__name__}: {exc})") from None
        columns = {str(c).strip().lower(): c for c in frame.columns}
        column = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
        if column is None:
            raise DataError(f"{file}: no path column; name the column of image paths one of "
                            f"{', '.join(PATH_COLUMNS)} (found: {', '.join(map(str, frame.columns)) or 'none'})")
        entries = [v.strip() for v in frame[column]]
        entries = [v for v in entries if v]
    else:
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{file} is not a UTF-8 text list of paths ({exc})") from None
        entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise DataError(f"{file} lists no image paths")
    if str(base) in ("", "."):
        return entries
    return [os.path.join(base, e) if not os.path.isabs(e) else e for e in entries]
