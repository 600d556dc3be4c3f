"""datasets.tables: the Dataset every set becomes (splits, subsets)."""

from __future__ import annotations

import pytest
from tiny_sets import make_mame

from mame_transfer.core.errors import DataError
from mame_transfer.datasets.layouts import load_dataset


def test_split_errors(tmp_path):
    ds = load_dataset(make_mame(tmp_path / "set", per_split=(2, 1, 0)))
    assert ds.subsets == ["train", "val"]
    with pytest.raises(DataError, match=r"No 'test' rows.*available subsets: train, val"):
        ds.split("test")
    with pytest.raises(DataError, match="Unknown subset 'dev'"):
        ds.split("dev")
    with pytest.raises(DataError, match=r"required 'test' split is empty"):
        load_dataset(tmp_path / "set", require=("train", "test"))
