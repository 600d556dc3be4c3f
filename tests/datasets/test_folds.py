"""datasets.folds: stratified, disjoint, seeded folds independent of row order; fold datasets; train holdouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_sets import make_mame

from mame_transfer.core.errors import ConfigError
from mame_transfer.datasets.folds import assign_folds, fold_dataset, holdout_split
from mame_transfer.datasets.layouts import load_dataset


def _table(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{label}_{i:03d}.jpg", label) for label, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["image", "label"])


def test_folds_are_stratified_disjoint_and_cover_every_row():
    table = _table({"a": 23, "b": 10, "c": 7})
    fold = assign_folds(table, 5, seed=0)
    assert sorted(set(fold)) == [0, 1, 2, 3, 4] and len(fold) == len(table)  # each row in exactly one fold
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1
    for label, n in (("a", 23), ("b", 10), ("c", 7)):
        per_fold = np.bincount(fold[table["label"] == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n


def test_folds_depend_on_seed_and_images_not_on_row_order():
    table = _table({"a": 12, "b": 9})
    fold = assign_folds(table, 3, seed=4)
    shuffled = table.sample(frac=1, random_state=1)
    again = assign_folds(shuffled, 3, seed=4)
    assert dict(zip(shuffled["image"], again)) == dict(zip(table["image"], fold))
    assert not np.array_equal(assign_folds(table, 3, seed=5), fold)


def test_fold_errors_name_the_problem():
    with pytest.raises(ConfigError, match="k >= 2"):
        assign_folds(_table({"a": 5}), 1)
    with pytest.raises(ConfigError, match=r"at least 5 images per class.*'b' \(3\)"):
        assign_folds(_table({"a": 9, "b": 3}), 5)


def test_fold_dataset_keeps_test_and_splits_train_val(tmp_path):
    dataset = load_dataset(make_mame(tmp_path / "set", per_split=(4, 2, 2)))
    before = dataset.table["subset"].copy()
    seen_val = set()
    for i in (1, 2, 3):
        part = fold_dataset(dataset, 3, i, seed=0)
        assert list(part.table["image"]) == list(dataset.table["image"])  # same rows, same order
        test = before == "test"
        assert (part.table["subset"][test] == "test").all()
        val = set(part.split("val")["image"])
        assert not val & seen_val  # folds are disjoint
        seen_val |= val
        assert part.split("val")["label"].value_counts().to_dict() == {c: 2 for c in dataset.classes}
    assert seen_val == set(dataset.table["image"][before != "test"])
    assert (dataset.table["subset"] == before).all()  # the original is untouched
    with pytest.raises(ConfigError, match="fold must be in 1..3"):
        fold_dataset(dataset, 3, 4)


def test_holdout_is_a_stratified_seeded_slice():
    table = _table({"a": 20, "b": 10, "c": 1})
    rest, held = holdout_split(table, 0.1, seed=0)
    assert held["label"].value_counts().to_dict() == {"a": 2, "b": 1}  # c has one image: it stays in rest
    assert len(rest) + len(held) == len(table) and not set(rest["image"]) & set(held["image"])
    assert list(holdout_split(table, 0.1, seed=0)[1]["image"]) == list(held["image"])
    with pytest.raises(ConfigError, match="holdout_fraction"):
        holdout_split(table, 1.0)
