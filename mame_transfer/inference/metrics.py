"""Scores of predicted probabilities against labels, and the per-split files a run or an evaluation writes.

Per split ``S``: ``predictions_S.csv``, ``classification_report_S.txt`` and ``confusion_matrix_S.png``; with
``final=True`` also the unsuffixed ``predictions.csv``, ``classification_report.txt`` and ``confusion_matrix.png``
(those of the final split: test when the dataset has one, else val).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import DataError
from mame_transfer.core.fileio import write_text

TOP_K = (3, 5)  # reported beside top-1 when there are more classes than k (else every image is in its top k)


def top_k_keys(n_classes: int) -> list[str]:
    """The top-k metric names worth reporting for ``n_classes`` classes (``top3`` needs at least 4 classes)."""
    return [f"top{k}" for k in TOP_K if n_classes > k]


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Top-1, top-3 / top-5 (:func:`top_k_keys`), macro / weighted F1, balanced accuracy, per-class report."""
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
    return "\n".join(rows) + "\n"


def score_line(metrics: dict) -> str:
    """``n=200  top-1 0.8450  top-3 0.9700  macro F1 0.8400`` (top-k only where reported)."""
    keys = ["top1", *(k for k in ("top3", "top5") if k in metrics)]
    scores = "  ".join(f"top-{k[3:]} {metrics[k]:.4f}" for k in keys)
    return f"n={metrics['n']}  {scores}  macro F1 {metrics['macro_f1']:.4f}"


PREDICTIONS, REPORT, CONFUSION = "predictions.csv", "classification_report.txt", "confusion_matrix.png"


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

