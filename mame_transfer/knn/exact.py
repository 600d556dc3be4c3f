"""Exact cosine nearest neighbours: float32 matmul in blocks, top-k with a sampled threshold before the sort.

Rows are L2-normalised embeddings (:func:`normalize`), so the dot product is the cosine. Inputs may be float16 to
halve the memory of a large collection; every block is computed in float32.
"""

from __future__ import annotations

import numpy as np

from mame_transfer.core.errors import DataError

BLOCK = 1024  # query rows per similarity block (BLOCK x N float32 scores in memory at once)
COLUMNS = 65536  # item columns per block of top_k (queries x COLUMNS float32 scores at once)


def normalize(emb: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as ``dtype``."""
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.where(norms > 0, norms, 1.0)).astype(dtype, copy=False)


MAX_SCORES = 2**28  # similarity scores held at once (1 GiB of float32): bounds the block for large collections


def knn(unit: np.ndarray, k: int, *, block: int = BLOCK, sample: int = 4096,
        rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k nearest neighbours of every row among the other rows.

    Args:
        unit: ``[n, d]`` unit-norm rows.
        k: neighbours per row (capped at ``n - 1``).
        block: query rows per matmul block (memory: ``block * n`` float32, at most :data:`MAX_SCORES`).
        sample: columns used to find a safe per-row threshold before the exact top-k (see :func:`_top_k`).
        rows: only the first ``rows`` rows (to time a sample of a large collection); default all.

    Returns:
        ``(ids [rows, k] int32, scores [rows, k] float32)``, most similar first; a row is never its own neighbour.
    """
    n = unit.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        raise DataError(f"nearest neighbours need at least 2 items; the collection has {n}.")
    rows = n if rows is None else min(int(rows), n)
    block = max(1, min(block, MAX_SCORES // n))
    ids = np.empty((rows, k), dtype=np.int32)
    scores = np.empty((rows, k), dtype=np.float32)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        if unit.dtype != np.float32:  # float16 storage: one float32 copy per block of columns
            sims = np.empty((stop - start, n), dtype=np.float32)
            queries = unit[start:stop].astype(np.float32)
            for c in range(0, n, COLUMNS):
                sims[:, c:c + COLUMNS] = queries @ unit[c:c + COLUMNS].astype(np.float32).T
        else:
            sims = unit[start:stop] @ unit.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        ids[start:stop], scores[start:stop] = _top_k(sims, k, sample)
    return ids, scores


def top_k(queries: np.ndarray, unit: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
          columns: int = COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of some query vectors among all rows of ``unit``, in blocks of columns (any n).

    Args:
        queries: ``[q, d]`` unit rows.
        unit: ``[n, d]`` unit rows (float32 or float16).
        k: neighbours per query.
        exclude: ``[q]`` row of ``unit`` each query must not return (itself), or None.

    Returns:
        ``(ids [q, k] int64, scores [q, k] float32)``, most similar first.
    """
    queries = np.asarray(queries, dtype=np.float32)
    q = len(queries)
    best_ids = np.empty((q, 0), dtype=np.int64)
    best = np.empty((q, 0), dtype=np.float32)
    rows = np.arange(q)
    for c in range(0, unit.shape[0], columns):
        sims = queries @ unit[c:c + columns].astype(np.float32, copy=False).T
        if exclude is not None:
            inside = (exclude >= c) & (exclude < c + sims.shape[1])
            sims[rows[inside], exclude[inside] - c] = -np.inf
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(c, c + sims.shape[1]), sims.shape)], axis=1)
        vals = np.concatenate([best, sims], axis=1)
        keep = min(k, vals.shape[1])
        part = np.argpartition(-vals, keep - 1, axis=1)[:, :keep]
        best_ids, best = np.take_along_axis(ids, part, axis=1), np.take_along_axis(vals, part, axis=1)
    order = np.lexsort((best_ids, -best), axis=1) if q else np.empty((0, best.shape[1]), int)
    return np.take_along_axis(best_ids, order, axis=1), np.take_along_axis(best, order, axis=1)


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
