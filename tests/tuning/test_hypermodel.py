"""tuning.hypermodel: trials that train the head on prefix-cache tensors (the cached-features route)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from tiny_sets import search_yaml

from mame_transfer.core import config as cfg
from mame_transfer.tuning.search import run_search
from mame_transfer.tuning.space import spec_from_dict


def test_cached_features_hyperband(two_class_set, tmp_path):
    spec = spec_from_dict(yaml.safe_load(search_yaml(tmp_path / "s.yaml", algorithm="hyperband").read_text()))
    spec.base.update(freeze_until="all", epochs=2)
    spec.tuner.factor = 2
    summary = run_search(spec, tmp_path / "hb", verbose=0, data=str(two_class_set))
    table = pd.read_csv(tmp_path / "hb" / "trials.csv")
    assert summary["route"] == "cached-features" and set(table["route"]) == {"cached-features"}
    assert (table["status"] == "COMPLETED").all() and "tuner/epochs" in table.columns
    # the backbone's outputs were computed once by the prefix cache (cut after global_pool), kept for --resume
    folder = tmp_path / "hb" / "prefix_cache"
    (train,), (val,) = folder.glob("global_pool-*-train.npy"), folder.glob("global_pool-*-val.npy")
    assert np.load(train, mmap_mode="r").shape[0] == 12 and np.load(val, mmap_mode="r").shape[0] == 8
    best = cfg.load_yaml(tmp_path / "hb" / "best.yaml")
    assert best["augment"] is False and best["freeze_until"] == "all"


def test_cached_features_search_over_image_size(two_class_set, tmp_path):
    """image_size in the space: one prefix cache per size, each trial trained on the cache of its size."""
    spec = spec_from_dict(yaml.safe_load(search_yaml(tmp_path / "s.yaml", max_trials=4).read_text()))
    spec.base.update(freeze_until="all", epochs=1)
    spec.base.pop("image_size")
    spec.space["image_size"] = {"values": [32, 48]}  # 32: test_tiny's default size
    run_search(spec, tmp_path / "sz", verbose=0, data=str(two_class_set))
    table = pd.read_csv(tmp_path / "sz" / "trials.csv")
    assert (table["status"] == "COMPLETED").all() and set(table["image_size"]) == {32, 48}
    folder = tmp_path / "sz" / "prefix_cache"
    assert {p.name.split("-")[2] for p in folder.glob("global_pool-*-train.npy")} == {"32px", "48px"}
