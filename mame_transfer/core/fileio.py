"""Small file helpers: outputs are written whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

# Suffix of a folder being written (a training run, a feature store): renamed away only when complete.
PARTIAL = ".partial"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Works for files and directories: whatever the block writes at the yielded path replaces ``path``
    atomically (``os.replace``), so a crash never leaves a half-written output at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and target.is_dir():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def markdown_table(frame, *, float_format: str = "{:.4f}", nan: str = "–",
                   column_formats: dict[str, str] | None = None) -> str:
    """A DataFrame as a GitHub Markdown table.

    Args:
        float_format: format of float cells.
        nan: text of NaN / None cells.
        column_formats: float format per column-name suffix (e.g. ``{"_s": "{:.2f}"}`` for seconds).
    """
    import math

    import numpy as np

    cols = [str(c) for c in frame.columns]
    formats = [next((f for suffix, f in (column_formats or {}).items() if c.endswith(suffix)), float_format)
               for c in cols]

    def cell(value, fmt: str) -> str:
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
            return nan
        if isinstance(value, (float, np.floating)):
            return fmt.format(value)
        return str(value).replace("|", "/")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v, f) for v, f in zip(row, formats)) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
