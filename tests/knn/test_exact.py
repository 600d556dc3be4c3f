"""knn.exact: blocked exact neighbours of every row (float32 or float16 storage) and top-k of sampled queries."""

from __future__ import annotations

import numpy as np
import pytest

from mame_transfer.knn.exact import knn, normalize, top_k


def _brute(unit, k, rows=None):
    sims = unit.astype(np.float32) @ unit.astype(np.float32).T
    np.fill_diagonal(sims, -np.inf)
    rows = np.arange(len(unit)) if rows is None else rows
    want = np.argsort(-sims[rows], axis=1, kind="stable")[:, :k]
    return want, np.take_along_axis(sims[rows], want, axis=1)


def test_float16_storage_gives_the_float32_answer_of_its_rows():
    rng = np.random.default_rng(3)
    unit = normalize(rng.normal(size=(70, 9)), np.float16)
    assert unit.dtype == np.float16
    ids, scores = knn(unit, 5, block=16)
    want, sims = _brute(unit, 5)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, sims, rtol=1e-6)


@pytest.mark.parametrize("columns", [7, 64, 1000])
def test_top_k_of_queries_in_column_blocks(columns):
    rng = np.random.default_rng(4)
    unit = normalize(rng.normal(size=(60, 5)))
    rows = np.array([0, 13, 59, 30])
    ids, scores = top_k(unit[rows], unit, 6, exclude=rows, columns=columns)
    want, sims = _brute(unit, 6, rows)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, sims, rtol=1e-6)
    # without exclusion a query finds itself first, with cosine 1
    ids, scores = top_k(unit[rows], unit, 2, columns=columns)
    np.testing.assert_array_equal(ids[:, 0], rows)
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-6)
