"""explorer.neighbours: exact cosine neighbours in blocks, precision@k, the projected int8 cosines of the page."""

from __future__ import annotations

import numpy as np
import pytest

from mame_transfer.core.errors import DataError
from mame_transfer.explorer.neighbours import (
    approx_error,
    knn,
    normalize,
    precision_at_k,
    project,
    quantize,
)


def test_knn_matches_brute_force_across_blocks():
    rng = np.random.default_rng(1)
    unit = normalize(rng.normal(size=(53, 7)))
    ids, scores = knn(unit, 4, block=10)  # several blocks, last one partial
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    want = np.argsort(-sims, axis=1)[:, :4]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, axis=1), rtol=1e-6)
    assert (ids != np.arange(53)[:, None]).all()
    # the thresholded top-k (every 5th column sampled first) gives the same answer
    ids2, scores2 = knn(unit, 4, block=10, sample=9)
    np.testing.assert_array_equal(ids2, want)
    np.testing.assert_array_equal(scores2, scores)
    assert (np.diff(scores, axis=1) <= 0).all()
    # k larger than the collection is capped at n - 1
    assert knn(unit[:3], 10)[0].shape == (3, 2)
    with pytest.raises(DataError, match="at least 2 items"):
        knn(unit[:1], 3)


def test_precision_at_k_literal():
    labels = ["a", "a", "b", "b"]
    ids = np.array([[1, 2], [0, 3], [0, 1], [2, -1]])
    table = precision_at_k(labels, ids, [1, 2], ["a", "b"])
    assert table.loc["a", "P@1"] == 1.0 and table.loc["a", "P@2"] == 0.5
    assert table.loc["b", "P@1"] == 0.5 and table.loc["b", "P@2"] == 0.25  # -1 (no neighbour) counts as a miss
    assert table.loc["all", "n"] == 4 and table.loc["all", "P@1"] == 0.75


def test_projection_quantization_error_is_small_and_measured():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 256))
    unit = normalize(centres[rng.integers(0, 5, 400)] + 0.5 * rng.normal(size=(400, 256)))
    q, scale = quantize(unit @ project(unit, 32))
    assert q.dtype == np.int8 and q.shape == (400, 32)
    err = approx_error(unit, q, scale)
    assert err["mean_abs_error"] < 0.05 and err["mean_pearson_r"] > 0.95
    # dims beyond the embedding size keep everything: only int8 rounding remains
    q2, s2 = quantize(unit @ project(unit, 512))
    assert approx_error(unit, q2, s2)["max_abs_error"] < 0.02
