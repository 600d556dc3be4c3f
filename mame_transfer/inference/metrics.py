"""Scores of predicted probabilities against labels, and the per-split files a run or an evaluation writes.

Every top-1 and macro F1 comes with ``n`` and a 95 % percentile-bootstrap interval (:func:`bootstrap_ci`:
images resampled with replacement, 1,000 rounds, seeded, so the interval is reproducible); a mean over folds
comes with a Student-t interval (:func:`mean_ci`). Near 0.96 on 200 images one standard error is 1.4 points:
two recipes whose intervals overlap widely are not told apart by that split.

Per split ``S``: ``predictions_S.csv``, ``probabilities_S.npy`` (every class's probability, for ensembles and
out-of-fold analyses), ``classification_report_S.txt`` and ``confusion_matrix_S.png``; with
``final=True`` also the unsuffixed ``predictions.csv``, ``classification_report.txt`` and ``confusion_matrix.png``
(those of the final split: test when the dataset has one, else val).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import DataError
from mame_transfer.core.fileio import atomic_path, write_text

CONFIDENCE = 0.95
BOOTSTRAP_ROUNDS = 1000
CI_METHOD = f"percentile bootstrap, {BOOTSTRAP_ROUNDS} resamples of the images, seed 0"

TOP_K = (3, 5)  # reported beside top-1 when there are more classes than k (else every image is in its top k)


def top_k_keys(n_classes: int) -> list[str]:
    """The top-k metric names worth reporting for ``n_classes`` classes (``top3`` needs at least 4 classes)."""
    return [f"top{k}" for k in TOP_K if n_classes > k]


def _macro_f1_from_confusion(cm: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
    """Macro F1 of confusion matrices ``[..., C, C]`` (rows true, columns predicted).

    A class with no true and no predicted image scores 0, as scikit-learn's ``f1_score(labels=...,
    zero_division=0)``, unless ``observed[c]``: then it is a class of the full sample that a resample happened to
    miss, and it is left out of that resample's mean instead of counting as a failure.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    denom = cm.sum(axis=-1) + cm.sum(axis=-2)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    counted = np.ones_like(f1, dtype=bool) if observed is None else (denom > 0) | ~observed
    return (f1 * counted).sum(axis=-1) / np.maximum(counted.sum(axis=-1), 1)


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, *, rounds: int = BOOTSTRAP_ROUNDS,
                 confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, list[float]]:
    """Percentile-bootstrap intervals of top-1 and macro F1: the images are resampled with replacement.

    Args:
        y_true, y_pred: true and predicted class indices.
        n_classes: classes macro F1 averages over (all of them, like :func:`compute_metrics`).
        rounds: bootstrap resamples.
        confidence: coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        seed: seed of the resampling (the same inputs always give the same interval).

    Returns:
        ``{"top1": [low, high], "macro_f1": [low, high]}`` (``[nan, nan]`` for no images).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    if n == 0:
        return {"top1": [float("nan")] * 2, "macro_f1": [float("nan")] * 2}
    rng = np.random.default_rng(seed)
    cell = y_true * n_classes + y_pred  # index of each image's confusion-matrix cell
    correct = (y_true == y_pred).astype(np.float64)
    observed = np.zeros(n_classes, dtype=bool)
    observed[np.concatenate([y_true, y_pred])] = True
    top1, f1 = np.empty(rounds), np.empty(rounds)
    chunk = max(1, min(rounds, 4_000_000 // n))  # bounded memory on large test splits
    for start in range(0, rounds, chunk):
        r = min(chunk, rounds - start)
        idx = rng.integers(0, n, size=(r, n))
        top1[start:start + r] = correct[idx].mean(axis=1)
        offsets = (np.arange(r) * n_classes * n_classes)[:, None]
        cm = np.bincount((cell[idx] + offsets).ravel(), minlength=r * n_classes * n_classes)
        f1[start:start + r] = _macro_f1_from_confusion(cm.reshape(r, n_classes, n_classes), observed)
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    return {"top1": [float(v) for v in np.quantile(top1, q)], "macro_f1": [float(v) for v in np.quantile(f1, q)]}


def top1_interval(accuracy: float, n: int, **kwargs) -> list[float]:
    """The bootstrap interval of a top-1 known only as a score on ``n`` images (a tuning trial's val accuracy):
    the top-1 bootstrap depends on nothing but which images are right, so it is the same as from predictions."""
    right = int(round(float(accuracy) * n))
    correct = np.r_[np.ones(right, dtype=np.int64), np.zeros(max(0, n - right), dtype=np.int64)]
    return bootstrap_ci(np.ones(n, dtype=np.int64), correct, 2, **kwargs)["top1"]


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean of per-fold scores with a Student-t interval: ``mean ± t(k-1) * sd / sqrt(k)``.

    Returns:
        ``{"mean", "ci": [low, high], "sd", "k"}``; with one value the interval is ``[nan, nan]``.
    """
    from scipy import stats

    v = np.asarray([float(x) for x in values], dtype=float)
    k = len(v)
    mean = float(v.mean()) if k else float("nan")
    if k < 2:
        return {"mean": mean, "ci": [float("nan")] * 2, "sd": float("nan"), "k": k}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, k - 1)) * sd / np.sqrt(k)
    return {"mean": mean, "ci": [float(mean - half), float(mean + half)], "sd": sd, "k": k}


def format_ci(value: float, ci: Sequence[float] | None, digits: int = 3) -> str:
    """``0.953 [0.925, 0.975]`` (the value alone when there is no interval)."""
    if ci is None or any(np.isnan(c) for c in ci):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], *, ci: bool = True) -> dict:
    """Top-1, top-3 / top-5 (:func:`top_k_keys`), macro / weighted F1, balanced accuracy, per-class P/R/F/support,
    confusion matrix.

    With ``ci`` (default), ``top1_ci`` and ``macro_f1_ci`` hold the 95 % bootstrap intervals (:func:`bootstrap_ci`)
    and ``ci_method`` says how they were computed.
    """
    from sklearn.metrics import (
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    n_classes = len(classes)
    if proba.ndim != 2 or proba.shape[1] != n_classes or len(proba) != len(y_true):
        raise ValueError(f"probabilities of shape {proba.shape} do not match {len(y_true)} labels x {n_classes} classes")
    y_pred = proba.argmax(axis=1)
    order = np.argsort(-proba, axis=1)
    labels = np.arange(n_classes)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {"n": int(len(y_true)), "top1": float((y_pred == y_true).mean()) if len(y_true) else 0.0}
    for key in top_k_keys(n_classes):
        k = int(key[3:])
        out[key] = float((order[:, :k] == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0
    out["macro_f1"] = float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    if ci:
        intervals = bootstrap_ci(y_true, y_pred, n_classes)
        out["top1_ci"], out["macro_f1_ci"] = intervals["top1"], intervals["macro_f1"]
        out["ci_method"] = CI_METHOD
    out["weighted_f1"] = float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0))
    out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0
    out["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def predictions_frame(table: pd.DataFrame, proba: np.ndarray, classes: Sequence[str], top: int = 5) -> pd.DataFrame:
    """One row per image: file, true and predicted class, and the top-k classes with their probabilities."""
    classes = np.asarray(classes)
    order = np.argsort(-proba, axis=1)[:, : min(top, len(classes))]
    df = pd.DataFrame({
        "image": table["image"].to_numpy(),
        "true": table["label"].to_numpy(),
        "predicted": classes[order[:, 0]],
    })
    df["correct"] = df["true"] == df["predicted"]
    df["probability"] = proba[np.arange(len(proba)), order[:, 0]]
    for k in range(order.shape[1]):
        df[f"top{k + 1}"] = classes[order[:, k]]
        df[f"top{k + 1}_prob"] = np.round(proba[np.arange(len(proba)), order[:, k]], 6)
    return df


def classification_report_text(metrics: dict, split: str) -> str:
    rows = [f"{'class':<28}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, m in metrics["per_class"].items():
        rows.append(f"{name:<28}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    rows.append("")
    rows.append(f"split {split}: {score_line(metrics)}  balanced accuracy {metrics['balanced_accuracy']:.4f}")
    if "top1_ci" in metrics:
        rows.append(f"[low, high] = 95 % intervals (n={metrics['n']}, {metrics.get('ci_method', 'bootstrap')})")
    return "\n".join(rows) + "\n"


def score_line(metrics: dict) -> str:
    """``n=200  top-1 0.8450 [0.7950, 0.8950]  top-3 0.9700  macro F1 0.8400 [0.7890, 0.8880]``.

    Top-k only where reported; the 95 % intervals of top-1 and macro F1 where computed.
    """
    top1 = format_ci(metrics["top1"], metrics.get("top1_ci"), 4)
    topk = "".join(f"  top-{k[3:]} {metrics[k]:.4f}" for k in ("top3", "top5") if k in metrics)
    return f"n={metrics['n']}  top-1 {top1}{topk}  macro F1 {format_ci(metrics['macro_f1'], metrics.get('macro_f1_ci'), 4)}"


PREDICTIONS, REPORT, CONFUSION = "predictions.csv", "classification_report.txt", "confusion_matrix.png"
PROBABILITIES = "probabilities.npy"  # float32 [n, classes], rows in the order of predictions_S.csv


def split_file(name: str, split: str | None = None) -> str:
    """The per-split name of one of the files above (``predictions_val.csv``); unsuffixed: the final split's."""
    stem, _, ext = name.rpartition(".")
    return f"{stem}_{split}.{ext}" if split else name


def write_split_artifacts(run_dir: Path, split: str, table: pd.DataFrame, proba: np.ndarray,
                          classes: Sequence[str], *, final: bool = False) -> dict:
    """Compute metrics for one split and write its report, predictions and confusion matrix."""
    from mame_transfer.core import plots

    run_dir = Path(run_dir)
    metrics = compute_metrics(table["label_index"].to_numpy(), proba, classes)
    preds = predictions_frame(table, proba, classes)
    report = classification_report_text(metrics, split)
    fig = plots.confusion_matrix_figure(np.array(metrics["confusion_matrix"]), classes,
                                        title=f"{split}: top-1 {metrics['top1']:.3f}, macro F1 {metrics['macro_f1']:.3f}")
    with atomic_path(run_dir / split_file(PROBABILITIES, split)) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(proba, dtype=np.float32))
    for key in [split] + ([None] if final else []):
        write_text(run_dir / split_file(PREDICTIONS, key), preds.to_csv(index=False))
        write_text(run_dir / split_file(REPORT, key), report)
        plots.save(fig, run_dir / split_file(CONFUSION, key))
    return metrics


def align_to_classes(table: pd.DataFrame, classes: Sequence[str], source: str) -> pd.DataFrame:
    """Re-index labels of another dataset onto a run's classes; unknown labels are an error."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(index))
    if unknown:
        raise DataError(f"{source}: labels {unknown} are not among the run's classes {list(classes)}")
    table = table.copy()
    table["label_index"] = table["label"].map(index).astype(int)
    return table

