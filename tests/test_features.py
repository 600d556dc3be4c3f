"""Feature store: write/load round trip, bad-input errors, streaming export with resume, projector export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mame_transfer import features
from mame_transfer.core.errors import DataError
from mame_transfer.store import export as export_mod
from mame_transfer.store.export import _stream, export
from mame_transfer.store.store import FORMAT, PROGRESS, load_store, write_store


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
    assert man["splits"]["train"] == {"n": 6, "dim": 32}
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


# ------------------------------------------------------------------------------------------------- export


def _demo(demo_root):
    from mame_transfer.datasets.layouts import load_dataset

    return load_dataset(demo_root)


def test_export_demo_and_resume(tmp_path, demo_root, monkeypatch):
    dataset = _demo(demo_root)
    kw = dict(arch="test_tiny", weights=None, image_size=32, splits=["train", "val"], batch_size=64, verbose=0)
    ref = export(tmp_path / "ref", dataset, **kw)
    assert ref.manifest["splits"] == {"train": {"n": 240, "dim": 32}, "val": {"n": 60, "dim": 32}}
    m = ref.manifest
    assert (m["arch"], m["layer"], m["augment"], m["jitter"], m["weights"]) == \
        ("test_tiny", "block3_pool", False, False, None)
    assert m["preprocessing"] == "_tiny_preprocess" and len(m["input_hash"]) == 64
    assert list(ref.metadata("val")["image"]) == list(dataset.split("val")["image"])
    assert not (tmp_path / "ref.partial").exists()

    # interrupt after the second flushed batch of train, then rerun: it resumes at row 128, not 0
    real_write, calls = export_mod.write_json, []

    def dying_write(path, obj):
        real_write(path, obj)
        if path.name == PROGRESS and obj["done"]:
            calls.append(dict(obj["done"]))
            if len(calls) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path / "store", dataset, **kw)
    monkeypatch.setattr(export_mod, "write_json", real_write)
    with pytest.raises(DataError, match="export was interrupted; rerun it to resume"):
        load_store(tmp_path / "store")
    starts = []
    real_stream = _stream
    monkeypatch.setattr(export_mod, "_stream", lambda model, table, array, start, **k: (
        starts.append(start), real_stream(model, table, array, start, **k))[1])
    store = export(tmp_path / "store", dataset, **kw)
    assert starts == [128, 0]  # train resumed after 2 batches of 64; val started fresh
    for split in ("train", "val"):
        np.testing.assert_allclose(store.embeddings(split), ref.embeddings(split), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="already exists; pass --overwrite"):
        export(tmp_path / "store", dataset, **kw)


def test_export_from_run_layer_and_projector_cli(tmp_path, tiny_run, capsys):
    out = tmp_path / "ft"
    assert features.main(["--model", str(tiny_run), "--layer", "head_dense_1", "--demo", "--splits", "val",
                          "--out", str(out), "--verbose", "0"]) == 0
    store = load_store(out)
    assert store.manifest["layer"] == "head_dense_1" and store.manifest["run"] == str(tiny_run.resolve())
    assert store.embeddings("val").shape == (60, 16)
    assert features.main(["projector", str(out), "--split", "val", "--out", str(tmp_path / "proj")]) == 0
    vectors = np.loadtxt(tmp_path / "proj" / "vectors.tsv", delimiter="\t")
    meta = pd.read_csv(tmp_path / "proj" / "metadata.tsv", sep="\t")
    assert vectors.shape == (60, 16) and len(meta) == 60 and meta.columns[0] == "image"
    np.testing.assert_allclose(vectors, store.embeddings("val"), rtol=1e-4, atol=1e-6)
    assert features.main(["--model", str(tiny_run), "--layer", "nope", "--demo", "--out", str(tmp_path / "x")]) == 2
    assert "has no layer 'nope'" in capsys.readouterr().err


def test_export_imagenet_probs_real_weights(tmp_path, demo_root, keras_home):
    store = export(tmp_path / "s", _demo(demo_root), arch="mobilenet", alpha=0.25, weights="imagenet",
                   image_size=32, splits=["val"], batch_size=30, imagenet_probs=True, verbose=0)
    assert store.feature_sets == ["embeddings", "imagenet_probs"]
    assert store.embeddings("val").shape == (60, 256)
    probs = store.embeddings("val", "imagenet_probs")
    assert probs.shape == (60, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    with pytest.raises(Exception, match="--imagenet-probs needs a backbone with ImageNet weights"):
        export(tmp_path / "t", _demo(demo_root), arch="test_tiny", weights=None, image_size=32,
               splits=["val"], imagenet_probs=True, verbose=0)
