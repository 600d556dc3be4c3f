"""Nearest neighbours of a collection of embeddings, exact or approximate, for the explorer, classify and analyze.

* :mod:`.exact`: cosine k-NN by blocked matmul (every pair), and exact top-k of sampled queries.
* :mod:`.approx`: an inverted-file index (faiss) on principal components, candidates re-ranked exactly; recall@k.

:func:`all_neighbours` picks the method: ``auto`` is exact up to :data:`AUTO_EXACT_MAX` items, approximate above.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mame_transfer.core.errors import ConfigError
from mame_transfer.knn.approx import ApproxParams, approx_knn, recall_at_k
from mame_transfer.knn.exact import BLOCK, knn, normalize

METHODS = ("exact", "approx", "auto")
AUTO_EXACT_MAX = 50_000  # auto: exact neighbours up to this many items (about 6 min for 1280-d on 2 cores)

__all__ = ["METHODS", "AUTO_EXACT_MAX", "Neighbours", "all_neighbours", "resolve_method", "normalize", "ApproxParams"]


@dataclass
class Neighbours:
    """k nearest neighbours of every item and how they were found.

    Attributes:
        ids: ``[n, k]`` int32 neighbour rows, most similar first (-1: none).
        scores: ``[n, k]`` float32 cosines (exact in both methods).
        method: ``exact`` or ``approx``.
        description: one line for logs and pages.
        recall: recall@k of an approximate search on sampled queries (:func:`~.approx.recall_at_k`), else None.
        seconds: ``{"search": s, "recall": s}``.
    """

    ids: np.ndarray
    scores: np.ndarray
    method: str
    description: str
    recall: dict | None = None
    seconds: dict = field(default_factory=dict)


def resolve_method(method: str, n: int) -> str:
    """``auto`` -> ``exact`` up to :data:`AUTO_EXACT_MAX` items, else ``approx``."""
    if method not in METHODS:
        raise ConfigError(f"neighbours must be one of {', '.join(METHODS)}. Received: neighbours={method!r}")
    return method if method != "auto" else ("exact" if n <= AUTO_EXACT_MAX else "approx")


def all_neighbours(unit: np.ndarray, k: int, *, method: str = "auto", reduced: np.ndarray | None = None,
                   params: ApproxParams = ApproxParams(), recall_queries: int = 1000, block: int = BLOCK,
                   log=None) -> Neighbours:
    """Neighbours of every row of ``unit`` (unit rows) among the others.

    Args:
        method: ``exact``, ``approx`` or ``auto``.
        reduced: principal-component rows for the approximate index (computed when None).
        params: approximate-search settings.
        recall_queries: queries sampled to measure an approximate search's recall@k against exact search.
        block: query rows per block of the exact search.
    """
    chosen = resolve_method(method, len(unit))
    t0 = time.perf_counter()
    if chosen == "exact":
        ids, scores = knn(unit, k, block=block)
        return Neighbours(ids, scores, "exact", f"exact cosine (float32 matmul in blocks of {block} query rows)",
                          seconds={"search": time.perf_counter() - t0})
    ids, scores = approx_knn(unit, k, reduced=reduced, params=params, log=log)
    search = time.perf_counter() - t0
    t1 = time.perf_counter()
    recall = recall_at_k(unit, ids, queries=recall_queries)
    dims = reduced.shape[1] if reduced is not None else min(params.dim, unit.shape[1])
    text = (f"approximate: inverted file (faiss IVF, {params.n_lists(len(unit))} lists, {params.probes} probed) on "
            f"{dims} principal components, {max(params.candidates, ids.shape[1])} candidates per item re-ranked by "
            f"exact cosine; recall@{recall['k']} {recall['recall']:.4f} against exact search on {recall['queries']} "
            f"sampled queries")
    return Neighbours(ids, scores, "approx", text, recall, {"search": search, "recall": time.perf_counter() - t1})
