"""Nearest neighbours of a collection: exact cosine k-NN in blocks, precision@k, and the page's compact vectors.

Neighbours are exact (L2-normalised embeddings, float32 matmul in blocks of query rows, top-k with a sampled
threshold before the sort). :func:`project` and :func:`quantize` give the 64-d int8 vectors the page uses for
similarity distributions; :func:`approx_error` measures what that approximation costs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import DataError

BLOCK = 1024  # query rows per similarity block (BLOCK x N float32 scores in memory at once)
PCA_DIM = 64


def normalize(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def knn(unit: np.ndarray, k: int, *, block: int = BLOCK, sample: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k nearest neighbours of every row among the other rows.

    Args:
        unit: ``[n, d]`` unit-norm rows.
        k: neighbours per row (capped at ``n - 1``).
        block: query rows per matmul block (memory: ``block * n`` float32).
        sample: columns used to find a safe per-row threshold before the exact top-k (see :func:`_top_k`).

    Returns:
        ``(ids [n, k] int32, scores [n, k] float32)``, most similar first; a row is never its own neighbour.
    """
    n = unit.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        raise DataError(f"nearest neighbours need at least 2 items; the collection has {n}.")
    ids = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = unit[start:stop] @ unit.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        ids[start:stop], scores[start:stop] = _top_k(sims, k, sample)
    return ids, scores


def _top_k(sims: np.ndarray, k: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per row, sorted. For wide rows, the k-th largest value of every ``stride``-th column is a
    lower bound of the row's k-th largest, so only values above it are sorted (about ``k * stride`` per row
    instead of a full ``argpartition`` of ``n``), which is several times faster and gives the same result."""
    b, n = sims.shape
    stride = n // sample if sample > 2 * k else 1
    if stride < 2:
        part = np.argpartition(sims, n - k, axis=1)[:, n - k:]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -top), axis=1) if b else np.empty((0, k), int)
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
    sub = sims[:, ::stride]
    m = sub.shape[1]
    threshold = np.partition(sub, m - k, axis=1)[:, m - k]  # >= k finite values in sub: at most one -inf (self)
    rows, cols = np.nonzero(sims >= threshold[:, None])
    vals = sims[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    take = np.searchsorted(rows, np.arange(b))[:, None] + np.arange(k)
    return cols[take], vals[take]


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
    d = unit.shape[1]
    if dim >= d:
        return np.eye(d, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = unit if len(unit) <= sample else unit[rng.choice(len(unit), sample, replace=False)]
    gram = rows.T.astype(np.float64) @ rows
    vals, vecs = np.linalg.eigh(gram)
    return vecs[:, np.argsort(vals)[::-1][:dim]].astype(np.float32)


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows with one float32 scale each: ``x ~= q * scale[:, None]``."""
    peak = np.abs(x).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def approx_error(unit: np.ndarray, q: np.ndarray, scale: np.ndarray, *, queries: int = 200,
                 seed: int = 0) -> dict:
    """How far the page's approximate cosines are from the exact ones, over sampled queries x all items."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(unit), min(queries, len(unit)), replace=False)
    deq = q.astype(np.float32) * scale[:, None]
    exact = unit[pick] @ unit.T
    approx = deq[pick] @ deq.T
    keep = np.ones(exact.shape, bool)
    keep[np.arange(len(pick)), pick] = False  # the page leaves the query out of its own distribution
    exact, approx = exact[keep].reshape(len(pick), -1), approx[keep].reshape(len(pick), -1)
    diff = np.abs(exact - approx)
    corr = float(np.mean([np.corrcoef(e, a)[0, 1] for e, a in zip(exact, approx)])) if unit.shape[0] > 2 else 1.0
    return {"queries": int(len(pick)), "mean_abs_error": float(diff.mean()), "p99_abs_error":
            float(np.quantile(diff, 0.99)), "max_abs_error": float(diff.max()), "mean_pearson_r": corr}

