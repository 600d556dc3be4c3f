"""store.store: the feature store format: write/load round trip and the errors of a bad or incomplete store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mame_transfer.core.errors import DataError
from mame_transfer.store.store import FORMAT, load_store, write_store


def _meta(n, split="train"):
    return pd.DataFrame({
        "image": [f"{split}_{i}.jpg" for i in range(n)], "path": [f"/x/{split}_{i}.jpg" for i in range(n)],
        "label": ["a", "b"] * (n // 2), "label_index": [0, 1] * (n // 2), "subset": split,
        "museum": "m", "width": 10, "height": 20, "product_size": 200, "aspect_ratio": 0.5,
    })


def _store(tmp_path, dim=32, arch="test_tiny", layer="block3_pool", probs=False):
    rng = np.random.default_rng(0)
    splits = {s: (rng.normal(size=(n, dim)).astype(np.float32), _meta(n, s)) for s, n in (("train", 6), ("val", 4))}
    extra = {s: {"imagenet_probs": rng.dirichlet(np.ones(1000), n)} for s, n in (("train", 6), ("val", 4))} \
        if probs else None
    manifest = {"arch": arch, "alpha": 1.0, "weights": None, "run": None, "layer": layer, "image_size": 32,
                "preprocessing": "x", "classes": ["a", "b"]}
    return write_store(tmp_path / "store", manifest=manifest, splits=splits, extra_sets=extra), splits


def test_roundtrip(tmp_path):
    store, splits = _store(tmp_path, probs=True)
    again = load_store(tmp_path / "store")
    assert again.splits == ["train", "val"]
    assert again.classes == ["a", "b"]
    assert again.feature_sets == ["embeddings", "imagenet_probs"]
    emb = again.embeddings("val")
    assert isinstance(emb, np.memmap) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, splits["val"][0])
    assert list(again.metadata("train")["image"]) == list(splits["train"][1]["image"])
    assert again.embeddings("train", "imagenet_probs").shape == (6, 1000)
    man = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert man["format"] == FORMAT and man["augment"] is False
    assert {k: man["splits"]["train"][k] for k in ("n", "dim")} == {"n": 6, "dim": 32}
    assert len(man["splits"]["train"]["metadata_sha256"]) == 64
    # pandas alone reads the files (other tools rely on it)
    assert len(pd.read_csv(tmp_path / "store" / "val" / "metadata.csv")) == 4


def test_missing_manifest(tmp_path):
    (tmp_path / "nostore").mkdir()
    with pytest.raises(DataError, match=r"nostore/manifest\.json does not exist"):
        load_store(tmp_path / "nostore")


def test_missing_split(tmp_path):
    store, _ = _store(tmp_path)
    with pytest.raises(DataError, match=r"manifest\.json: the store has no 'test' split \(present: train, val\)"):
        store.embeddings("test")
    with pytest.raises(DataError, match="no feature set 'imagenet_probs'"):
        store.embeddings("val", "imagenet_probs")


def test_wrong_arch_dim(tmp_path):
    # test_tiny's block3_pool gives 32-d features; 16-d vectors mean another backbone wrote them
    with pytest.raises(DataError, match=r"'train' has 16-d embeddings, but test_tiny at layer 'block3_pool' gives 32-d"):
        _store(tmp_path, dim=16)
    _store(tmp_path)
    man = tmp_path / "store" / "manifest.json"
    m = json.loads(man.read_text())
    m["arch"], m["layer"], m["alpha"] = "mobilenet", "conv_pw_13_relu", 0.25
    man.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"train/embeddings\.npy holds 32-d vectors, but mobilenet \(alpha 0.25\).*"
                                        r"another architecture than .*manifest\.json says"):
        load_store(tmp_path / "store")


def test_mismatched_rows(tmp_path):
    _store(tmp_path)
    meta = tmp_path / "store" / "val" / "metadata.csv"
    pd.read_csv(meta).iloc[:3].to_csv(meta, index=False)
    with pytest.raises(DataError, match=r"val/metadata\.csv has 3 rows but .*val/embeddings\.npy has 4"):
        load_store(tmp_path / "store")
    with pytest.raises(DataError, match="must match row for row"):
        write_store(tmp_path / "s2", manifest={"classes": ["a"]},
                    splits={"train": (np.zeros((3, 2)), _meta(4))})


def test_truncated_array(tmp_path):
    _store(tmp_path)
    np.save(tmp_path / "store" / "train" / "embeddings.npy", np.zeros((5, 32), np.float32))
    with pytest.raises(DataError, match=r"train/embeddings\.npy has shape \(5, 32\); the manifest .* says \(6, 32\)"):
        load_store(tmp_path / "store")
