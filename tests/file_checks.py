"""Checks of what a written file holds, beyond its existence: ``from file_checks import png_size, read_csv``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def png_size(path: str | Path, min_side: int = 50, max_side: int = 20_000) -> tuple[int, int]:
    """Decode a PNG fully (PIL) and check that its size is plausible for a figure; returns ``(width, height)``."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decodes every pixel: a truncated file fails here
        assert im.format == "PNG", f"{path}: {im.format}, not a PNG"
        assert min(im.size) >= min_side and max(im.size) <= max_side, f"{path}: implausible size {im.size}"
        return im.size


def read_csv(path: str | Path, columns=(), rows: int | None = None, **kwargs) -> pd.DataFrame:
    """Read a CSV and check it has at least ``columns`` and, when given, exactly ``rows`` rows."""
    frame = pd.read_csv(path, **kwargs)
    missing = set(columns) - set(frame.columns)
    assert not missing, f"{path}: missing column(s) {sorted(missing)}; has {list(frame.columns)}"
    if rows is not None:
        assert len(frame) == rows, f"{path}: {len(frame)} rows, expected {rows}"
    return frame


def read_json(path: str | Path, keys=()) -> dict:
    """Read a JSON object and check it has at least ``keys``."""
    obj = json.loads(Path(path).read_text())
    assert isinstance(obj, dict), f"{path}: not a JSON object"
    missing = set(keys) - set(obj)
    assert not missing, f"{path}: missing key(s) {sorted(missing)}; has {sorted(obj)}"
    return obj
