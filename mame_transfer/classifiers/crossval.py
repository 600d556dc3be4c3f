"""K-fold cross-validation of the classifier comparison: ``classify STORE --folds K``.

Train+val of the store is cut into the same stratified, seeded folds as ``finetune --folds K --seed S``
(:func:`mame_transfer.datasets.folds.assign_folds`, keyed by image name), so the out-of-fold predictions of both
line up image by image. For each fold the whole comparison runs (hyperparameters by grid search on the fold's
training rows, scored on the fold); test is only scored. Outputs in ``--out``::

    fold-1/ ... fold-K/          the comparison of each fold (results.csv, best_model.skops, ...)
    cv_results.csv, .md          per feature set and classifier: val top-1 and macro F1, mean over folds with a
                                 Student-t 95 % interval, the pooled out-of-fold scores with bootstrap intervals,
                                 and the fold pipelines' averaged scores on test (when the store has test)
    oof_predictions.csv          image, label, fold and each pipeline's out-of-fold prediction
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.classifiers.comparison import FEATURE_SETS, Source, compare, markdown_table, write_outputs
from mame_transfer.classifiers.estimators import CLASSIFIERS
from mame_transfer.core.errors import DataError
from mame_transfer.core.fileio import write_text
from mame_transfer.datasets.folds import CV_SUBSETS, assign_folds
from mame_transfer.inference.metrics import bootstrap_ci, format_ci, mean_ci

CV_COLUMNS = ("feature_set", "classifier", "val_top1_mean", "val_top1_ci", "val_macro_f1_mean", "val_macro_f1_ci",
              "oof_n", "oof_top1", "oof_top1_ci", "oof_macro_f1", "oof_macro_f1_ci", "test_n", "test_top1_ensemble",
              "test_top1_ci")


def fold_sources(source: Source, k: int, seed: int = 0) -> tuple[list[Source], pd.DataFrame]:
    """One :class:`Source` per fold (train = the other folds, val = the fold, test unchanged) and the pool table
    (train+val metadata with a ``fold`` column, 1..k)."""
    missing = [s for s in CV_SUBSETS if s not in source.metadata]
    if missing:
        raise DataError(f"{source.description}: cross-validation pools train and val; missing {', '.join(missing)}")
    meta = pd.concat([source.metadata[s] for s in CV_SUBSETS], ignore_index=True)
    emb = None if source.embeddings.get("train") is None else \
        np.concatenate([np.asarray(source.embeddings[s]) for s in CV_SUBSETS])
    fold = assign_folds(meta, k, seed) + 1
    pool = meta.assign(fold=fold)
    out = []
    for i in range(1, k + 1):
        parts = {"train": fold != i, "val": fold == i}
        metadata = {s: meta[m].reset_index(drop=True) for s, m in parts.items()}
        embeddings = {s: (None if emb is None else emb[m]) for s, m in parts.items()}
        if "test" in source.metadata:
            metadata["test"], embeddings["test"] = source.metadata["test"], source.embeddings.get("test")
        out.append(Source(source.classes, embeddings, metadata, f"{source.description}, fold {i} of {k}"))
    return out, pool


def cross_validate(source: Source, *, folds: int, out: str | Path, seed: int = 0,
                   feature_sets: Sequence[str] = FEATURE_SETS, classifiers: Sequence[str] = CLASSIFIERS,
                   fast: bool = False, umap_components: int = 8, n_jobs: int = 1, verbose: int = 1) -> pd.DataFrame:
    """Run the comparison on every fold, write the per-fold outputs and the cross-validated table; return it."""
    out = Path(out)
    sources, pool = fold_sources(source, folds, seed)
    n_classes = len(source.classes)
    per_fold, oof, test_scores = [], {}, {}
    oof_frame = pool[["image", "label", "fold"]].copy()
    for i, src in enumerate(sources, start=1):
        result = compare(src, feature_sets=feature_sets, classifiers=classifiers, fast=fast,
                         umap_components=umap_components, seed=seed, n_jobs=n_jobs, verbose=verbose, keep_all=True)
        write_outputs(result, out / f"fold-{i}", description=src.description)
        per_fold.append(result.table.assign(fold=i))
        rows = np.flatnonzero(pool["fold"].to_numpy() == i)
        for key, splits in result.all_predictions.items():
            oof.setdefault(key, np.full(len(pool), -1))[rows] = splits["val"][0]
            if "test" in splits:
                test_scores.setdefault(key, []).append(_normalised(splits["test"][1]))
    y = pool["label_index"].to_numpy(dtype=int)
    table = pd.concat(per_fold, ignore_index=True)
    rows = []
    for (fs, clf), pred in oof.items():
        t = table[(table["feature_set"] == fs) & (table["classifier"] == clf)]
        top1, f1 = mean_ci(t["val_top1"]), mean_ci(t["val_macro_f1"])
        ci = bootstrap_ci(y, pred, n_classes)
        row = {"feature_set": fs, "classifier": clf, "val_top1_mean": top1["mean"], "val_top1_ci": top1["ci"],
               "val_macro_f1_mean": f1["mean"], "val_macro_f1_ci": f1["ci"], "oof_n": len(y),
               "oof_top1": float((pred == y).mean()), "oof_top1_ci": ci["top1"],
               "oof_macro_f1": _macro_f1(y, pred, n_classes), "oof_macro_f1_ci": ci["macro_f1"],
               "test_n": 0, "test_top1_ensemble": np.nan, "test_top1_ci": [np.nan, np.nan]}
        if (fs, clf) in test_scores:
            y_test = source.metadata["test"]["label_index"].to_numpy(dtype=int)
            mixed = np.mean(test_scores[(fs, clf)], axis=0).argmax(1)
            row.update(test_n=len(y_test), test_top1_ensemble=float((mixed == y_test).mean()),
                       test_top1_ci=bootstrap_ci(y_test, mixed, n_classes)["top1"])
        rows.append(row)
        oof_frame[f"{fs}/{clf}"] = np.asarray(source.classes)[pred]
    cv = pd.DataFrame(rows, columns=list(CV_COLUMNS)).sort_values("val_top1_mean", ascending=False)
    write_text(out / "cv_results.csv", cv.to_csv(index=False))
    write_text(out / "cv_results.md", _markdown(cv, folds, seed, source.description))
    write_text(out / "oof_predictions.csv", oof_frame.to_csv(index=False))
    return cv


def _normalised(score: np.ndarray) -> np.ndarray:
    """Scores of one fold's pipeline made comparable across folds: probabilities stay; decision values (LinearSVC,
    SVC) are standardised per image, so no fold dominates the average by its scale."""
    s = np.asarray(score, dtype=np.float64)
    s = np.where(np.isfinite(s), s, np.nan)
    if np.nanmin(s) >= 0 and np.allclose(np.nansum(s, axis=1), 1, atol=1e-3):
        return np.nan_to_num(s)
    mean, sd = np.nanmean(s, axis=1, keepdims=True), np.nanstd(s, axis=1, keepdims=True)
    return np.nan_to_num((s - mean) / np.where(sd > 0, sd, 1), nan=-1e9)


def _macro_f1(y, pred, n_classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=np.arange(n_classes), average="macro", zero_division=0))


def _markdown(cv: pd.DataFrame, folds: int, seed: int, description: str) -> str:
    rows = pd.DataFrame({
        "feature set": cv["feature_set"], "classifier": cv["classifier"],
        f"val top-1, mean of {folds} [95% CI]": [format_ci(m, c) for m, c in zip(cv["val_top1_mean"], cv["val_top1_ci"])],
        f"val macro F1, mean of {folds} [95% CI]": [format_ci(m, c) for m, c in
                                                     zip(cv["val_macro_f1_mean"], cv["val_macro_f1_ci"])],
        "pooled out-of-fold top-1 [95% CI]": [format_ci(m, c) for m, c in zip(cv["oof_top1"], cv["oof_top1_ci"])],
        "n": cv["oof_n"],
        "test top-1, fold ensemble [95% CI]": [format_ci(m, c) if n else "–" for m, c, n in
                                               zip(cv["test_top1_ensemble"], cv["test_top1_ci"], cv["test_n"])],
    })
    return (f"# Classifier comparison, {folds}-fold cross-validation (seed {seed})\n\n{description}\n\n"
            f"Hyperparameters by grid search inside each fold's training rows; test never used for a choice.\n\n"
            + markdown_table(rows))
