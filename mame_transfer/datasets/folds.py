"""K-fold cross-validation splits and train holdouts: stratified, seeded, and independent of the row order.

A fold is a function of the image names, their labels, ``k`` and the seed only: rows are put in a canonical order
(by ``image``) before the seeded shuffle, so ``finetune --folds`` (a :class:`Dataset`) and ``classify --folds``
(a feature store's metadata, in its own row order) put every image in the same fold, and their out-of-fold
predictions can be combined image by image. The test split is never part of a fold.

Each class's images are shuffled and dealt to the folds in turn, the dealing continuing from one class to the
next, so every fold holds ``n_c / k`` images of class ``c`` (give or take one) and the fold sizes differ by at
most one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.datasets.tables import Dataset

CV_SUBSETS = ("train", "val")  # the pool the folds are cut from; test stays untouched


def _canonical_order(table: pd.DataFrame) -> np.ndarray:
    if "image" not in table.columns or "label" not in table.columns:
        raise DataError(f"folds need 'image' and 'label' columns; got {list(table.columns)}")
    return np.argsort(table["image"].astype(str).to_numpy(), kind="stable")


def assign_folds(table: pd.DataFrame, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) of every row of ``table``, stratified by ``label``.

    Raises:
        ConfigError: ``k`` < 2, or a class has fewer than ``k`` images (named with its count).
    """
    if int(k) < 2:
        raise ConfigError(f"K-fold cross-validation needs k >= 2. Received: folds={k}")
    k = int(k)
    order = _canonical_order(table)
    labels = table["label"].astype(str).to_numpy()[order]
    counts = pd.Series(labels).value_counts()
    small = counts[counts < k]
    if len(small):
        listed = ", ".join(f"{c!r} ({n})" for c, n in small.sort_index().items())
        raise ConfigError(f"{k}-fold cross-validation needs at least {k} images per class in train+val; "
                          f"too few: {listed}. Use fewer folds.")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(table), dtype=np.int64)
    start = 0
    for label in sorted(counts.index):
        rows = order[np.flatnonzero(labels == label)]
        rows = rows[rng.permutation(len(rows))]
        fold[rows] = (start + np.arange(len(rows))) % k
        start = (start + len(rows)) % k
    return fold


def fold_dataset(dataset: Dataset, k: int, fold: int, seed: int = 0) -> Dataset:
    """The dataset of fold ``fold`` (1..k): its part of train+val becomes ``val``, the rest ``train``.

    Test rows keep their subset; the returned table has the same rows in the same order.
    """
    if not 1 <= int(fold) <= int(k):
        raise ConfigError(f"fold must be in 1..{k}. Received: fold={fold}")
    table = dataset.table.copy()
    pool = table["subset"].isin(CV_SUBSETS).to_numpy()
    if not pool.any():
        raise DataError(f"{dataset.source or dataset.root}: no train or val rows to cut folds from")
    assigned = assign_folds(table[pool], k, seed)
    table.loc[pool, "subset"] = np.where(assigned == int(fold) - 1, "val", "train")
    return dataclasses.replace(dataset, table=table)


def holdout_split(table: pd.DataFrame, fraction: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rest, holdout)``: a stratified, seeded slice of ``table`` (``fraction`` of each class, at least one).

    Used to pick the best epoch and stop early without looking at val. A class with a single image stays whole
    in ``rest``.
    """
    if not 0 < float(fraction) < 1:
        raise ConfigError(f"holdout_fraction must be in (0, 1). Received: holdout_fraction={fraction}")
    order = _canonical_order(table)
    labels = table["label"].astype(str).to_numpy()[order]
    rng = np.random.default_rng(seed + 104729)  # not the fold permutation: another stream
    held = np.zeros(len(table), dtype=bool)
    for label in sorted(set(labels)):
        rows = order[np.flatnonzero(labels == label)]
        if len(rows) < 2:
            continue
        take = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        held[rows[rng.permutation(len(rows))[:take]]] = True
    return table[~held].reset_index(drop=True), table[held].reset_index(drop=True)
