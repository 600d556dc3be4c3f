"""datasets.varshape: the variable-shape pipeline (aspect kept under a pixel budget, batches bucketed by aspect)."""

from __future__ import annotations

import pytest
from tiny_sets import folder_set, tiny_model

from mame_transfer.core.errors import ConfigError
from mame_transfer.datasets import varshape


def test_budget_hw_keeps_aspect():
    assert varshape.budget_hw(1000, 1000, 65536) == (256, 256)
    h, w = varshape.budget_hw(500, 2500, 65536)  # aspect 5
    assert (h, w) == (128, 576)  # multiples of 32 closest to 114.5 x 572.4
    assert varshape.budget_hw(2500, 500, 360000) == (1344, 256)
    with pytest.raises(ConfigError, match="--pixels must be at least 1024"):
        varshape.budget_hw(10, 10, 100)


def test_variable_shape_pipeline_and_model_take_aspect_0_2_and_5(tmp_path):
    from mame_transfer.datasets.layouts import load_dataset

    root = folder_set(tmp_path / "set")
    table = load_dataset(root).split("train")
    net = tiny_model(variable_shape=True)
    assert net.input_shape == (None, None, None, 3)
    ds = varshape.make_pipeline(table, pixels=2048, preprocess=lambda x: x / 127.5 - 1, batch_size=2, training=True)
    shapes = set()
    n = 0
    for x, y in ds:
        shapes.add(tuple(x.shape[1:3]))
        n += int(x.shape[0])
        assert net(x).shape == (x.shape[0], 3)
    assert n == len(table)
    assert shapes == {(32, 32), (96, 32), (32, 96)}  # 48x48, and aspect 0.2 and 5 kept (sides rounded to 32)
    proba = varshape.predict_proba(net, table, pixels=2048, preprocess=lambda x: x / 127.5 - 1)
    assert proba.shape == (len(table), 3)
