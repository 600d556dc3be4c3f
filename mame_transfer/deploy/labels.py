"""Predictions written to a CSV: streamed row by row, resumable, renamed into place only when complete.

While ``predict`` runs, rows go to ``FILE.partial`` (flushed after every batch) beside ``FILE.partial.json``, which
identifies the work (the run's model, the inputs' hash, the options). Rerunning the same command after an interrupt
(Ctrl-C, ``kill -9``) continues after the last complete row; ``FILE`` itself appears only when every input has its
row, so a file under the requested name is never a partial result.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import PARTIAL, write_json
from mame_transfer.deploy.classifier import ERRORS, PREDICTION, Classifier, result_columns
from mame_transfer.training import runs

KEY_SUFFIX = ".json"


def partial_files(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(FILE.partial, FILE.partial.json)``: the rows written so far and what they are the rows of."""
    partial = Path(out).with_name(Path(out).name + PARTIAL)
    return partial, partial.with_name(partial.name + KEY_SUFFIX)


def write_predictions(clf: Classifier, paths: Sequence[str], out: str | os.PathLike, *, top_k: int = 1,
                      tta: str = "none", batch_size: int | None = None, patch_scales: str | None = None,
                      patch_power: float | None = None, overwrite: bool = False, verbose: int = 1) -> dict:
    """Label ``paths`` with ``clf`` into the CSV ``out`` (columns :func:`~.classifier.result_columns`).

    Returns:
        ``{"out", "images", "labelled", "unreadable", "resumed_at", "classes"}`` (``classes``: images per predicted
        class).

    Raises:
        ConfigError: ``out`` exists (without ``overwrite``) or is a folder; bad ``top_k`` / ``tta``.
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the CSV file to write, e.g. {out / 'labels.csv'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    clf.check_options(top_k, tta)
    columns = result_columns(top_k)
    partial, key_file = partial_files(out)
    key = _work_key(clf, paths, columns, tta, patch_scales, patch_power)
    done, counts = _resume_point(partial, key_file, key, paths, columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    if done == 0:
        with open(partial, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(columns)
        write_json(key_file, key)
    flush_every = max(1, int(batch_size or clf.config.batch_size))
    bar = _progress(len(paths), done, verbose)
    with open(partial, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for n, (i, proba, error) in enumerate(clf.iter_proba(paths, start=done, tta=tta, batch_size=batch_size,
                                                             patch_scales=patch_scales, patch_power=patch_power)):
            row = clf.result_row(paths[i], proba, error, top_k)
            writer.writerow([_cell(row.get(c, "")) for c in columns])
            counts[row[PREDICTION] if not row[ERRORS] else ""] += 1
            bar.update(1)
            if (n + 1) % flush_every == 0:
                fh.flush()  # a kill loses at most the rows of one batch
        fh.flush()
        os.fsync(fh.fileno())
    bar.close()
    os.replace(partial, out)  # complete: only now does the file appear under its name
    key_file.unlink(missing_ok=True)
    unreadable = counts.pop("", 0)
    return {"out": out, "images": len(paths), "labelled": len(paths) - unreadable, "unreadable": unreadable,
            "resumed_at": done, "classes": dict(counts.most_common())}


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def _work_key(clf: Classifier, paths: Sequence[str], columns: list[str], tta: str, patch_scales, patch_power) -> dict:
    """What identifies the rows of a partial file: same model file, same inputs in the same order, same options."""
    model = (clf.run_dir / runs.MODEL) if clf.run_dir is not None else None
    stat = model.stat() if model is not None and model.is_file() else None
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.encode("utf-8", "surrogateescape") + b"\n")
    return {"run": str(clf.run_dir.resolve()) if clf.run_dir is not None else None,
            "model": [stat.st_size, stat.st_mtime_ns] if stat else None, "inputs": digest.hexdigest(),
            "images": len(paths), "columns": columns, "tta": tta, "patch_scales": patch_scales,
            "patch_power": patch_power}


def _resume_point(partial: Path, key_file: Path, key: dict, paths: Sequence[str],
                  columns: list[str]) -> tuple[int, Counter]:
    """Rows already in ``partial`` for this very work (0 when there is none or it belongs to other work)."""
    counts: Counter = Counter()
    if not partial.is_file() or not key_file.is_file():
        return 0, counts
    try:
        if json.loads(key_file.read_text()) != key:
            return 0, counts
    except (OSError, ValueError):
        return 0, counts
    data = partial.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]  # a row cut by a kill is dropped and written again
    if len(whole) != len(data):
        with open(partial, "r+b") as fh:
            fh.truncate(len(whole))
    rows = list(csv.reader(whole.decode("utf-8").splitlines()))
    if not rows or rows[0] != columns or len(rows) - 1 > len(paths):
        return 0, counts
    done = len(rows) - 1
    if done and rows[-1][0] != paths[done - 1]:
        return 0, counts
    error_at, prediction_at = columns.index(ERRORS), columns.index(PREDICTION)
    for row in rows[1:]:
        counts[row[prediction_at] if not row[error_at] else ""] += 1
    return done, counts


def _progress(total: int, initial: int, verbose: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="predict", unit="img", disable=not verbose, file=sys.stderr)

