"""Numeric columns from image metadata (sizes, aspect ratio, museum), the classifiers' non-image features."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import DataError, shorten_list


def metadata_features(table: pd.DataFrame, museums: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Numeric metadata per image: sizes and museum one-hot.

    Columns: ``width``, ``height``, ``product_size`` as ``log1p`` of the pixel counts (they span orders of
    magnitude), ``aspect_ratio`` as is, then ``museum=<name>`` one-hot. Pass the training split's museum list
    (second return value minus the size columns, or ``sorted(train.museum.unique())``) for val/test so the
    columns align; a museum outside the list gets all zeros.

    Returns:
        ``(float32 matrix of shape (len(table), 4 + len(museums)), column names)``.
    """
    sizes = table[["width", "height", "product_size", "aspect_ratio"]].to_numpy(dtype=float)
    bad = ~np.isfinite(sizes).all(axis=1) | (sizes < 0).any(axis=1)
    if bad.any():
        rows = [str(img) for img in table["image"].to_numpy()[bad]] if "image" in table else np.flatnonzero(bad)
        raise DataError(f"metadata_features: {bad.sum()} row(s) lack valid sizes: {shorten_list(list(rows))}.")
    if museums is None:
        museums = sorted(table["museum"].unique())
    museums = list(museums)
    numeric = np.column_stack([np.log1p(sizes[:, :3]), sizes[:, 3:]])
    onehot = (table["museum"].to_numpy()[:, None] == np.array(museums, dtype=object)[None, :]).astype(float)
    matrix = np.hstack([numeric, onehot]).astype(np.float32)
    return matrix, ["width", "height", "product_size", "aspect_ratio"] + [f"museum={m}" for m in museums]

