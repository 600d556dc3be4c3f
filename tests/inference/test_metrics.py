"""inference.metrics: top-k reported only with more classes than k; bootstrap intervals of top-1 and macro F1,
Student-t interval of fold means; the report and score lines, and the files of a split (report with n and
intervals, probabilities)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from mame_transfer.inference.metrics import (
    bootstrap_ci,
    classification_report_text,
    compute_metrics,
    format_ci,
    mean_ci,
    score_line,
    top1_interval,
    top_k_keys,
    write_split_artifacts,
)


@pytest.mark.parametrize("n_classes, keys", [(2, []), (3, []), (4, ["top3"]), (5, ["top3"]), (6, ["top3", "top5"]),
                                             (29, ["top3", "top5"])])
def test_top_k_only_above_k_classes(n_classes, keys):
    assert top_k_keys(n_classes) == keys
    rng = np.random.default_rng(0)
    y = np.arange(40) % n_classes
    proba = rng.dirichlet(np.ones(n_classes), size=40)
    m = compute_metrics(y, proba, [f"c{i}" for i in range(n_classes)])
    assert [k for k in ("top3", "top5") if k in m] == keys
    order = np.argsort(-proba, axis=1)
    for key in keys:  # checked against a direct count
        k = int(key[3:])
        assert m[key] == pytest.approx(np.mean([y[i] in order[i, :k] for i in range(40)]))
    line = score_line(m)
    assert ("top-5" in line) == ("top5" in keys) and ("top-3" in line) == ("top3" in keys)
    assert line.startswith("n=40  top-1 ") and "macro F1" in line
    assert score_line(m) in classification_report_text(m, "val")


def test_bootstrap_of_perfect_and_all_wrong_predictions_is_a_point():
    y = np.array([0, 1, 2, 0, 1, 2])
    assert bootstrap_ci(y, y, 3) == {"top1": [1.0, 1.0], "macro_f1": [1.0, 1.0]}
    wrong = bootstrap_ci(y, (y + 1) % 3, 3)
    assert wrong["top1"] == [0.0, 0.0] and wrong["macro_f1"] == [0.0, 0.0]


def test_bootstrap_top1_interval_matches_the_binomial_one_and_is_reproducible():
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 5, n)
    pred = np.where(rng.random(n) < 0.8, y, (y + 1) % 5)
    acc = float((pred == y).mean())
    half = 1.96 * np.sqrt(acc * (1 - acc) / n)  # normal approximation of the binomial: 0.0124 here
    ci = bootstrap_ci(y, pred, 5)
    assert ci["top1"][0] == pytest.approx(acc - half, abs=0.003)
    assert ci["top1"][1] == pytest.approx(acc + half, abs=0.003)
    assert ci == bootstrap_ci(y, pred, 5)  # seeded
    assert ci != bootstrap_ci(y, pred, 5, seed=1)
    f1 = f1_score(y, pred, average="macro")
    assert ci["macro_f1"][0] < f1 < ci["macro_f1"][1]
    assert ci["macro_f1"][1] - ci["macro_f1"][0] == pytest.approx(2 * half, rel=0.25)


def test_bootstrap_macro_f1_averages_classes_like_sklearn():
    """A class absent from the whole split scores 0 (as in compute_metrics); one a resample merely missed is left
    out of that resample's mean."""
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])
    point = f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)  # class 2 absent: 0
    assert point == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    ci = bootstrap_ci(y, pred, 3, rounds=2000)
    assert ci["macro_f1"][0] <= point <= ci["macro_f1"][1] <= 2 / 3 + 1e-9
    from mame_transfer.inference.metrics import _macro_f1_from_confusion

    only_a = np.array([[3, 0], [0, 0]])  # a resample holding class 0 only, all right
    assert _macro_f1_from_confusion(only_a) == 0.5
    assert _macro_f1_from_confusion(only_a, np.array([True, True])) == 1.0
    assert bootstrap_ci([], [], 3)["top1"][0] != bootstrap_ci([], [], 3)["top1"][0]  # nan


def test_mean_ci_is_the_student_t_interval():
    m = mean_ci([0.90, 0.92, 0.94, 0.96, 0.98])
    # mean 0.94, sd 0.0316, t(4, 0.975) = 2.7764: half width 2.7764 * 0.0316 / sqrt(5) = 0.03926
    assert m["mean"] == pytest.approx(0.94) and m["k"] == 5 and m["sd"] == pytest.approx(0.031623, abs=1e-6)
    assert m["ci"] == pytest.approx([0.94 - 0.039264, 0.94 + 0.039264], abs=1e-5)
    assert np.isnan(mean_ci([0.9])["ci"][0])
    assert format_ci(0.94, m["ci"]) == "0.940 [0.901, 0.979]" and format_ci(0.5, None) == "0.500"


def test_metrics_carry_n_and_intervals_into_report_and_files(tmp_path):
    classes = ["a", "b", "c"]
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    proba = np.eye(3)[[0, 1, 2, 0, 2, 2, 1, 1]] * 0.8 + 0.2 / 3
    m = compute_metrics(y, proba, classes)
    assert m["n"] == 8 and m["top1"] == 0.75
    assert m["top1_ci"][0] < 0.75 < m["top1_ci"][1] and "bootstrap" in m["ci_method"]
    assert m["macro_f1_ci"][0] <= m["macro_f1"] <= m["macro_f1_ci"][1]
    assert "top1_ci" not in compute_metrics(y, proba, classes, ci=False)
    text = classification_report_text(m, "val")
    assert "n=8" in text and f"top-1 {format_ci(0.75, m['top1_ci'], 4)}" in text
    table = pd.DataFrame({"image": [f"{i}.jpg" for i in range(8)], "label": [classes[i] for i in y],
                          "label_index": y})
    write_split_artifacts(tmp_path, "val", table, proba, classes)
    np.testing.assert_allclose(np.load(tmp_path / "probabilities_val.npy"), proba, rtol=1e-6)
    assert "95 % intervals (n=8" in (tmp_path / "classification_report_val.txt").read_text()


def test_top1_interval_from_a_score_equals_the_bootstrap_of_predictions():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    pred = np.array([0, 1, 2, 0, 1, 2, 0, 2, 1, 1])  # 7 of 10 right
    assert top1_interval(0.7, 10) == bootstrap_ci(y, pred, 3)["top1"]
