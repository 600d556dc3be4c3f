"""What the explorer computes from neighbours and vectors: precision@k and the page's compact vectors.

The neighbours themselves are :mod:`mame_transfer.knn` (exact, or approximate for large collections).
:func:`project` and :func:`quantize` give the 64-d int8 vectors the page uses for similarity distributions;
:func:`approx_error` measures what that approximation costs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.knn.approx import principal_directions
from mame_transfer.knn.exact import BLOCK, knn, normalize

__all__ = ["BLOCK", "PCA_DIM", "knn", "normalize", "precision_at_k", "project", "quantize", "approx_error"]

PCA_DIM = 64


def precision_at_k(labels: Sequence, ids: np.ndarray, ks: Sequence[int], classes: Sequence[str],
                   valid: np.ndarray | None = None) -> pd.DataFrame:
    """Per-class mean share of an item's first k neighbours that carry its label.

    Args:
        labels: label of each item (neighbour ids index it).
        ids: ``[n, K]`` neighbour ids (``-1`` = no neighbour).
        ks: cut-offs, each ``<= K``.
        classes: class order of the table.
        valid: boolean mask of the items to score (default all).

    Returns:
        Columns ``n`` and ``P@k`` per cut-off, one row per class with items, plus a final ``all`` row
        (mean over items, not over classes).
    """
    labels = np.asarray(labels, dtype=object)
    valid = np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool)
    same = (labels[np.clip(ids, 0, None)] == labels[:, None]) & (ids >= 0)
    rows = {}
    for name in list(classes) + ["all"]:
        mask = valid & (labels == name) if name != "all" else valid
        if not mask.any():
            continue
        row = {"n": int(mask.sum())}
        for kk in ks:
            row[f"P@{kk}"] = float(same[mask, :kk].mean())
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "class"
    return table


def project(unit: np.ndarray, dim: int = PCA_DIM, *, sample: int = 20000, seed: int = 0) -> np.ndarray:
    """Uncentred principal directions ``[d, dim]`` of unit rows (truncated SVD: keeps dot products best)."""
    return principal_directions(unit, dim, sample=sample, seed=seed)


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows with one float32 scale each: ``x ~= q * scale[:, None]``."""
    peak = np.abs(x).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def approx_error(unit: np.ndarray, q: np.ndarray, scale: np.ndarray, *, queries: int = 200, columns: int = 50000,
                 seed: int = 0) -> dict:
    """How far the page's approximate cosines are from the exact ones, over sampled queries x (sampled) items.

    ``columns`` items at most (all when the collection is smaller) keep the check's memory bounded at any size.
    """
    rng = np.random.default_rng(seed)
    n = len(unit)
    pick = rng.choice(n, min(queries, n), replace=False)
    cols = np.arange(n) if n <= columns else np.sort(rng.choice(n, columns, replace=False))

    def deq(rows):
        return q[rows].astype(np.float32) * scale[rows, None]

    exact = unit[pick].astype(np.float32) @ unit[cols].astype(np.float32).T
    approx = deq(pick) @ deq(cols).T
    keep = cols[None, :] != pick[:, None]  # the page leaves the query out of its own distribution
    width = int(keep.sum(axis=1).min())
    exact = np.stack([e[m][:width] for e, m in zip(exact, keep)])
    approx = np.stack([a[m][:width] for a, m in zip(approx, keep)])
    diff = np.abs(exact - approx)
    corr = float(np.mean([np.corrcoef(e, a)[0, 1] for e, a in zip(exact, approx)])) if width > 1 else 1.0
    return {"queries": int(len(pick)), "items": int(len(cols)), "mean_abs_error": float(diff.mean()),
            "p99_abs_error": float(np.quantile(diff, 0.99)), "max_abs_error": float(diff.max()),
            "mean_pearson_r": corr}
