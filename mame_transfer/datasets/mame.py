"""The MAMe layout: ``MAMe_dataset.csv`` (+ ``MAMe_labels.csv``, ``MAMe_toy_dataset.csv``) and an image folder.

The CSV sits in the root or in ``MAMe_metadata/`` (or ``metadata/``); the images in ``data_256/`` or ``data/``.
Reading validates every row and collects every problem into one error naming the CSV lines; :func:`write_mame`
turns any :class:`~mame_transfer.datasets.tables.Dataset` into this layout (``python -m mame_transfer.data import``).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mame_transfer.core.errors import LIST_LIMIT, DataError, shorten_list
from mame_transfer.core.fileio import atomic_path, output_folder
from mame_transfer.datasets.images import check_images
from mame_transfer.datasets.tables import (
    COLUMNS,
    DATASET_CSV,
    IMAGE_DIRS,
    IMAGE_EXTENSIONS,
    LABELS_CSV,
    LAYOUTS_HELP,
    METADATA_DIRS,
    SUBSETS,
    TOY_CSV,
    Dataset,
    check_classes_trained,
    class_name,
)


def read_mame(
    root: str | os.PathLike,
    *,
    toy: bool = False,
    images: str | os.PathLike | None = None,
    check_files: bool = True,
) -> Dataset:
    """Read and validate a MAMe-layout dataset.

    Args:
        root: the MAMe root, its metadata folder, or the dataset CSV itself.
        toy: read ``MAMe_toy_dataset.csv`` instead of ``MAMe_dataset.csv``.
        images: image folder; default ``data_256/`` or ``data/`` under the root.
        check_files: check that every image exists and is complete (header + end marker, no full decode).

    Raises:
        DataError: naming the CSV, the offending lines and values, and the fix.
    """
    csv_path, meta_dir, root = _find_csv(Path(root), toy)
    frame = _read_csv(csv_path)
    classes = _read_labels(meta_dir / LABELS_CSV) if (meta_dir / LABELS_CSV).is_file() else None
    table, classes = _validate_rows(frame, csv_path, classes, meta_dir / LABELS_CSV)
    check_classes_trained(table, classes, csv_path)

    image_root = _find_image_dir(root, meta_dir, images, csv_path, required=check_files)
    table.insert(1, "path", [os.path.join(image_root, name) for name in table["image"]])
    if check_files:
        _check_table_files(table, csv_path, image_root)
    return Dataset(table, classes, root=root, layout="mame", image_root=image_root, source=csv_path)


def _find_csv(path: Path, toy: bool) -> tuple[Path, Path, Path]:
    """Locate (csv file, metadata folder, dataset root) from a root, metadata folder or CSV path."""
    path = Path(os.path.abspath(path))
    name = TOY_CSV if toy else DATASET_CSV
    if path.is_file():
        csv_path = path
    else:
        candidates = [path / name, *(path / d / name for d in METADATA_DIRS)]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise DataError(
                f"No {name} in {path}: looked for {', '.join(str(c) for c in candidates)}. {LAYOUTS_HELP}"
                + (" (toy=True reads MAMe_toy_dataset.csv.)" if toy else "")
            )
        csv_path = found[0]
    meta_dir = csv_path.parent
    root = meta_dir.parent if meta_dir.name in METADATA_DIRS else meta_dir
    return csv_path, meta_dir, root


def _find_image_dir(
    root: Path, meta_dir: Path, images: str | os.PathLike | None, csv_path: Path, *, required: bool
) -> Path:
    if images is not None:
        image_dir = Path(os.path.abspath(images))
        if required and not image_dir.is_dir():
            raise DataError(
                f"Image folder {image_dir} (images=) does not exist; it should hold the files of {csv_path}."
            )
        return image_dir
    candidates = [root / d for d in IMAGE_DIRS]
    if meta_dir != root:
        candidates += [meta_dir / d for d in IMAGE_DIRS]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if required:
        raise DataError(
            f"No image folder for {csv_path}: looked for {', '.join(str(c) for c in candidates)}. Put the images "
            "in one of them, pass images=/--images, or check_files=False/--no-files to read the metadata only."
        )
    # Metadata-only reading (e.g. the real MAMe CSV without its images): paths point where images would be.
    return candidates[0]


def _read_csv(csv_path: Path) -> pd.DataFrame:
    try:
        # Everything as text: instance IDs like "29.100.60" must not become floats, and bad numbers are reported
        # by row instead of failing the whole parse.
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{csv_path} is empty; expected the header {','.join(COLUMNS)} and one row per image."
        ) from None
    except UnicodeDecodeError:
        raise DataError(not_utf8(csv_path)) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{csv_path} is not a readable CSV file: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {', '.join(repr(c) for c in missing)}. Expected the MAMe header "
            f"{','.join(COLUMNS)} (found: {','.join(frame.columns)})."
        )
    return frame


def not_utf8(path: Path) -> str:
    """The message for a text file that is not UTF-8: where the first bad byte is, and how to fix it."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
        return f"{path} is not UTF-8 text. Save the file as UTF-8."
    except UnicodeDecodeError as exc:
        start = exc.start
    line = data[:start].count(b"\n") + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    text = data.splitlines()[line - 1].decode("cp1252", errors="replace")
    return (f"{path} line {line} is not UTF-8 text (byte 0x{data[start:start + 1].hex()} at column {column}; read "
            f"as Windows-1252 the line is {text!r}). Save the file as UTF-8 (a spreadsheet's 'CSV UTF-8', or "
            f"iconv -f WINDOWS-1252 -t UTF-8).")


def _read_labels(labels_path: Path) -> list[str]:
    """Read ``MAMe_labels.csv`` (no header; ``index,name``) into names ordered by index (NFC-normalised)."""
    try:
        text = labels_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(not_utf8(labels_path)) from None
    entries: dict[int, str] = {}
    for line, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row or not "".join(row).strip():
            continue
        try:
            index, name = int(row[0]), class_name(",".join(row[1:]))
        except (ValueError, IndexError):
            raise DataError(
                f"{labels_path} line {line}: expected 'index,name' (no header), got {','.join(row)!r}."
            ) from None
        if not name or index in entries or name in entries.values():
            raise DataError(f"{labels_path} line {line}: empty or duplicate label entry {','.join(row)!r}.")
        entries[index] = name
    if sorted(entries) != list(range(len(entries))) or not entries:
        raise DataError(
            f"{labels_path}: label indices must be 0..n-1 without gaps; found {sorted(entries)[:LIST_LIMIT]}..."
        )
    return [entries[i] for i in range(len(entries))]


def _validate_rows(
    frame: pd.DataFrame, csv_path: Path, classes: list[str] | None, labels_path: Path
) -> tuple[pd.DataFrame, list[str]]:
    """Check every row of a MAMe CSV; collect all problems into one DataError."""
    lines = np.arange(len(frame)) + 2  # CSV line numbers: the header is line 1
    problems: list[str] = []

    def bad(mask: np.ndarray, values: pd.Series, what: str, fix: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            items = [f"line {n} ({v!r})" for n, v in zip(lines[mask], values[mask])]
            problems.append(f"{mask.sum()} row(s) {what}: {shorten_list(items)}. {fix}")

    image = frame["Image file"].str.strip()
    label = frame["Medium"].map(class_name)
    subset = frame["Subset"].str.strip()

    bad(image.eq("").to_numpy(), image, "with an empty 'Image file'", "Give each row its image file name.")
    ext_ok = image.str.lower().str.endswith(IMAGE_EXTENSIONS)
    bad((~ext_ok & image.ne("")).to_numpy(), image, "with an unsupported image extension",
        f"Image files must end in {', '.join(IMAGE_EXTENSIONS)}.")
    bad(image.duplicated(keep=False).to_numpy() & image.ne("").to_numpy(), image, "naming the same image file",
        "Each image must appear once; remove the duplicate rows.")
    bad(image.map(_leaves_folder).to_numpy(), image, "whose 'Image file' leaves the image folder",
        "Image files are paths relative to the image folder, without '..', a drive or a leading '/'.")
    bad(~subset.isin(SUBSETS).to_numpy(), frame["Subset"], "with an unknown Subset",
        f"Subset must be one of {', '.join(SUBSETS)}.")
    bad(label.eq("").to_numpy(), frame["Medium"], "with an empty Medium (label)", "Give each row its class name.")
    if classes is None:
        classes = sorted(set(label) - {""})
    else:
        unknown = ~label.isin(classes).to_numpy() & label.ne("").to_numpy()
        bad(unknown, frame["Medium"], f"with a Medium not listed in {labels_path}",
            f"Use one of the listed classes ({shorten_list(classes, limit=5)}) or add it to {labels_path.name}.")

    numbers = {}
    for column in ("Width", "Height"):
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        bad(~(values > 0).to_numpy(), frame[column], f"with a missing, non-numeric or non-positive {column}",
            f"{column} must be the image's size in pixels (a positive number).")
        numbers[column] = values.astype(float)
    if problems:
        raise DataError(f"{csv_path}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))

    width, height = numbers["Width"], numbers["Height"]
    # Derived columns are recomputed where absent, so hand-made CSVs may leave them empty.
    product = pd.to_numeric(frame["Product size"].str.strip(), errors="coerce").fillna(width * height)
    aspect = pd.to_numeric(frame["Aspect ratio"].str.strip(), errors="coerce").fillna((width / height).round(4))
    index = {c: i for i, c in enumerate(classes)}
    table = pd.DataFrame(
        {
            "image": image.to_numpy(),
            "label": label.to_numpy(),
            "label_index": label.map(index).astype("int64").to_numpy(),
            "subset": subset.to_numpy(),
            "museum": frame["Museum"].str.strip().to_numpy(),
            "instance_id": frame["Museum-based instance ID"].str.strip().to_numpy(),
            "width": width.to_numpy(),
            "height": height.to_numpy(),
            "product_size": product.astype(float).to_numpy(),
            "aspect_ratio": aspect.astype(float).to_numpy(),
        }
    )
    return table, list(classes)


def _leaves_folder(name: str) -> bool:
    """Whether a relative image path could point outside its folder (``../x``, ``/x``, ``C:x``, ``\\\\host``)."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or bool(re.match(r"[A-Za-z]:", posix)) or ".." in posix.split("/") \
        or os.path.isabs(name)


def _check_table_files(table: pd.DataFrame, csv_path: Path, image_root: Path) -> None:
    """One DataError listing every missing and every bad image of a MAMe table."""
    exists = np.array([os.path.isfile(p) for p in table["path"]], dtype=bool)
    lines = np.arange(len(table)) + 2
    sections = []
    if not exists.all():
        items = [f"line {n} ({img!r})" for n, img in zip(lines[~exists], table["image"][~exists])]
        sections.append(
            f"{(~exists).sum()} image file(s) missing from {image_root}: {shorten_list(items)}. "
            "Put them there, pass images=/--images with the right folder, or remove those rows."
        )
    present = table.loc[exists, "path"].tolist()
    bad = check_images(present)
    if bad:
        line_of = dict(zip(table["path"], lines))
        items = [f"line {line_of[p]} ({os.path.relpath(p, image_root)!r}: {reason})" for p, reason in bad]
        sections.append(f"{len(bad)} image file(s) unreadable or corrupt: {shorten_list(items)}. Replace or remove them.")
    if sections:
        raise DataError(f"{csv_path}: " + "\n  ".join(sections))


IMPORT_KIND = "mame-import"  # the owner kind of a folder written by write_mame


def write_mame(dataset: Dataset, out: str | os.PathLike, *, copy_images: bool = False, overwrite: bool = False) -> Path:
    """Write ``dataset`` in the MAMe layout: ``out/MAMe_metadata/{MAMe_dataset,MAMe_labels}.csv`` + ``out/data``.

    ``out/data`` is a symlink to the source image folder, or a copy of the listed images with ``copy_images``.
    The whole folder is written atomically; an earlier import at ``out`` is replaced only with ``overwrite``, any
    other non-empty folder is refused.
    """
    out = Path(os.path.abspath(out))
    with output_folder(out, IMPORT_KIND, overwrite=overwrite, what="MAMe import", command="data import",
                       legacy=lambda p: (p / "MAMe_metadata" / DATASET_CSV).is_file()) as existed:
        return _write_mame(dataset, out, copy_images=copy_images, replace=existed)


def _write_mame(dataset: Dataset, out: Path, *, copy_images: bool, replace: bool) -> Path:
    table = dataset.table
    paths = [os.path.abspath(p) for p in table["path"]]
    image_root = Path(os.path.abspath(dataset.image_root)) if dataset.image_root else None
    if image_root is None or not all(_is_under(p, image_root) for p in paths):
        image_root = Path(os.path.commonpath([os.path.dirname(p) for p in paths]))
    if _is_under(str(out), image_root):
        raise DataError(f"--out {out} lies inside the image folder {image_root}; choose a folder outside it.")
    rel = [Path(p).relative_to(image_root).as_posix() for p in paths]
    frame = pd.DataFrame(
        {
            "Image file": rel,
            "Medium": table["label"].to_numpy(),
            "Museum": table["museum"].to_numpy(),
            "Museum-based instance ID": table["instance_id"].to_numpy(),
            "Subset": table["subset"].to_numpy(),
            "Width": table["width"].astype(float).to_numpy(),
            "Height": table["height"].astype(float).to_numpy(),
            "Product size": table["product_size"].astype(float).to_numpy(),
            "Aspect ratio": table["aspect_ratio"].astype(float).to_numpy(),
        },
        columns=COLUMNS,
    )
    with atomic_path(out, kind=IMPORT_KIND, replace=replace) as tmp:
        meta = tmp / "MAMe_metadata"
        meta.mkdir(parents=True)
        frame.to_csv(meta / DATASET_CSV, index=False)
        with open(meta / LABELS_CSV, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(enumerate(dataset.classes))
        if copy_images:
            for src, name in zip(paths, rel):
                dst = tmp / "data" / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        else:
            os.symlink(image_root, tmp / "data", target_is_directory=True)
    return out


def _is_under(path: str, folder: Path) -> bool:
    try:
        return os.path.commonpath([path, str(folder)]) == str(folder)
    except ValueError:  # different drives on Windows
        return False
