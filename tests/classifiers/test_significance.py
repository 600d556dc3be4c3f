"""classifiers.significance: per-class F1, bootstrap intervals and McNemar's test on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from mame_transfer.classifiers.significance import bootstrap_ci, mcnemar, per_class_f1
from mame_transfer.core.errors import ConfigError


def test_bootstrap_interval_brackets_the_value_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small_true = rng.integers(0, 3, 60)
    small_pred = np.where(rng.random(60) < 0.8, small_true, (small_true + 1) % 3)
    big_true = np.tile(small_true, 20)
    big_pred = np.tile(small_pred, 20)
    small = bootstrap_ci(small_true, small_pred, n_boot=500, seed=1)
    big = bootstrap_ci(big_true, big_pred, n_boot=500, seed=1)
    assert small["value"] == pytest.approx((small_true == small_pred).mean()) == pytest.approx(big["value"])
    assert small["low"] < small["value"] < small["high"]
    assert (big["high"] - big["low"]) < 0.5 * (small["high"] - small["low"])  # 20x the images: ~sqrt(20) narrower
    f1 = bootstrap_ci(small_true, small_pred, metric="macro_f1", n_boot=200)
    assert 0 < f1["low"] <= f1["value"] <= f1["high"] <= 1 and f1["n"] == 60
    perfect = bootstrap_ci([0, 1, 2, 1], [0, 1, 2, 1], n_boot=50)
    assert perfect["low"] == perfect["high"] == perfect["value"] == 1.0
    with pytest.raises(ConfigError, match="metric must be one of accuracy, macro_f1"):
        bootstrap_ci([0], [0], metric="auc")
    with pytest.raises(ConfigError, match="one length"):
        bootstrap_ci([0, 1], [0])


def test_mcnemar_exact_and_chi_square():
    y = np.zeros(100, dtype=int)
    a = y.copy()
    b = y.copy()
    b[:10] = 1  # A right, B wrong on 10 images; never the other way
    r = mcnemar(y, a, b)
    assert (r["only_a"], r["only_b"], r["both"], r["neither"]) == (10, 0, 90, 0)
    assert r["method"] == "exact binomial" and r["p_value"] == pytest.approx(2 * 0.5 ** 10)
    b[:40] = 1
    a[30:40] = 1  # 30 only-A, 10 neither
    r = mcnemar(y, a, b)
    assert (r["only_a"], r["only_b"], r["neither"]) == (30, 0, 10)
    assert r["method"].startswith("chi-square") and r["statistic"] == pytest.approx(29 ** 2 / 30)
    assert r["p_value"] < 1e-6
    same = mcnemar(y, a, a)
    assert same["p_value"] == 1.0 and same["only_a"] == same["only_b"] == 0
    balanced = mcnemar(np.zeros(4, int), [0, 0, 1, 1], [1, 1, 0, 0])
    assert balanced["p_value"] == pytest.approx(1.0)


def test_per_class_f1_table():
    table = per_class_f1([0, 0, 1, 1, 2], {"a": [0, 0, 1, 1, 2], "b": [0, 1, 1, 1, 0]}, ["x", "y", "z"])
    assert list(table.index) == ["x", "y", "z"] and list(table.columns) == ["a", "b"]
    assert (table["a"] == 1.0).all()
    assert list(table["b"].round(3)) == [0.5, 0.8, 0.0]  # x: 1 hit, 1 false alarm, 1 miss; y: 2 hits, 1 false alarm
