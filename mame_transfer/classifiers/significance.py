"""How sure is a difference between two classifiers? Per-class F1, bootstrap intervals, McNemar's test.

A few hundred validation images make a top-1 difference of one or two points noise. These helpers put numbers on
that, from the predictions the comparison keeps for every pipeline (``Comparison.predictions``):

* :func:`per_class_f1`: one F1 per class and classifier (where two classifiers differ);
* :func:`bootstrap_ci`: a percentile bootstrap interval of accuracy or macro F1, resampling images
  (Efron & Tibshirani 1993);
* :func:`mcnemar`: McNemar's test on the images exactly one of two classifiers gets right (the paired test
  Dietterich 1998 recommends for comparing two classifiers on one test set): exact binomial when those images are
  few, chi-square with continuity correction otherwise.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError

METRICS = ("accuracy", "macro_f1")


def _score(metric: str, y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> float:
    if metric == "accuracy":
        return float((y_true == y_pred).mean())
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or not len(y_true):
        raise ConfigError(f"labels and predictions must be two non-empty vectors of one length. "
                          f"Received shapes {y_true.shape} and {y_pred.shape}")
    return y_true, y_pred


def bootstrap_ci(y_true, y_pred, *, metric: str = "accuracy", n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> dict:
    """The metric on all images and its percentile bootstrap interval (images resampled with replacement).

    Returns:
        ``{"metric", "value", "low", "high", "confidence", "n", "n_boot"}``.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}. Received: metric={metric!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1). Received: confidence={confidence}")
    y_true, y_pred = _check_pair(y_true, y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws = np.empty(n_boot)
    for i in range(n_boot):  # one resample at a time: memory stays O(n) for a 15,000-image test split
        idx = rng.integers(0, n, size=n)
        draws[i] = _score(metric, y_true[idx], y_pred[idx], labels)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"metric": metric, "value": _score(metric, y_true, y_pred, labels), "low": float(low),
            "high": float(high), "confidence": confidence, "n": n, "n_boot": n_boot}


def mcnemar(y_true, pred_a, pred_b, *, exact: bool | None = None) -> dict:
    """McNemar's test of two classifiers on the same images.

    Args:
        exact: binomial test on the discordant images; default: exact when there are fewer than 25 of them.

    Returns:
        ``{"only_a", "only_b", "both", "neither", "statistic", "p_value", "method"}``; ``only_a`` counts the
        images A classifies correctly and B does not. A small p-value says the two error rates differ.
    """
    from scipy import stats

    y_true, pred_a = _check_pair(y_true, pred_a)
    _, pred_b = _check_pair(y_true, pred_b)
    right_a, right_b = pred_a == y_true, pred_b == y_true
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    discordant = only_a + only_b
    exact = discordant < 25 if exact is None else exact
    if discordant == 0:
        statistic, p_value, method = 0.0, 1.0, "no discordant images"
    elif exact:
        statistic = float(min(only_a, only_b))
        p_value = float(stats.binomtest(min(only_a, only_b), discordant, 0.5).pvalue)
        method = "exact binomial"
    else:
        statistic = float((abs(only_a - only_b) - 1) ** 2 / discordant)
        p_value = float(stats.chi2.sf(statistic, df=1))
        method = "chi-square with continuity correction"
    return {"only_a": only_a, "only_b": only_b, "both": int((right_a & right_b).sum()),
            "neither": int((~right_a & ~right_b).sum()), "statistic": statistic, "p_value": min(p_value, 1.0),
            "method": method}


def per_class_f1(y_true, predictions: Mapping[str, Sequence[int]], classes: Sequence[str]) -> pd.DataFrame:
    """F1 of every class (rows) for every named set of predictions (columns)."""
    from sklearn.metrics import f1_score

    labels = np.arange(len(classes))
    columns = {}
    for name, y_pred in predictions.items():
        t, p = _check_pair(y_true, y_pred)
        columns[name] = f1_score(t, p, labels=labels, average=None, zero_division=0)
    return pd.DataFrame(columns, index=pd.Index(list(classes), name="class"))
