"""store.export: streaming, resumable export from a registry backbone or a finished run; Projector files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_sets import folder_set

from mame_transfer import features
from mame_transfer.core.errors import DataError
from mame_transfer.inference import tta
from mame_transfer.store import export as export_mod
from mame_transfer.store.export import _stream, export
from mame_transfer.store.store import PROGRESS, load_store


def _demo(demo_root):
    from mame_transfer.datasets.layouts import load_dataset

    return load_dataset(demo_root)


def test_export_demo_and_resume(tmp_path, demo_root, monkeypatch):
    dataset = _demo(demo_root)
    kw = dict(arch="test_tiny", weights=None, image_size=32, splits=["train", "val"], batch_size=64, verbose=0)
    ref = export(tmp_path / "ref", dataset, **kw)
    assert {s: (v["n"], v["dim"]) for s, v in ref.manifest["splits"].items()} == {"train": (240, 32), "val": (60, 32)}
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
    with pytest.raises(Exception, match="already holds a feature store; pass --overwrite"):
        export(tmp_path / "store", dataset, **kw)


def test_export_from_run_layer_and_projector_cli(tmp_path, tiny_run, capsys):
    from PIL import Image

    out = tmp_path / "ft"
    assert features.main([str(tiny_run), "--layer", "head_dense_1", "--demo", "--splits", "val",
                          "--out", str(out), "--verbose", "0"]) == 0  # the run is the positional RUN
    store = load_store(out)
    assert store.manifest["layer"] == "head_dense_1" and store.manifest["run"] == str(tiny_run.resolve())
    assert store.embeddings("val").shape == (60, 16)
    assert features.main(["projector", str(out), "--split", "val", "--out", str(tmp_path / "proj"),
                          "--verbose", "0"]) == 0
    vectors = np.loadtxt(tmp_path / "proj" / "vectors.tsv", delimiter="\t")
    meta = pd.read_csv(tmp_path / "proj" / "metadata.tsv", sep="\t")
    assert vectors.shape == (60, 16) and len(meta) == 60 and meta.columns[0] == "image"
    np.testing.assert_allclose(vectors, store.embeddings("val"), rtol=1e-4, atol=1e-6)
    # the sprite: 60 thumbnails of 64 px in an 8 x 8 grid, row i = image i, declared in the Projector config
    with Image.open(tmp_path / "proj" / "sprite.jpg") as sprite:
        assert sprite.size == (8 * 64, 8 * 64)
        first = np.asarray(sprite.crop((0, 0, 64, 64)), dtype=float)
        blank = np.asarray(sprite.crop((4 * 64, 7 * 64, 5 * 64, 8 * 64)), dtype=float)  # cell 60: none
    with Image.open(store.metadata("val")["path"].iloc[0]) as im:
        expected = np.asarray(im.convert("RGB").resize((64, 64)), dtype=float)
    assert np.abs(first - expected).mean() < 25 and blank.min() > 240  # the first artwork; white after the last
    config = (tmp_path / "proj" / "projector_config.pbtxt").read_text()
    assert 'image_path: "sprite.jpg"' in config and config.count("single_image_dim: 64") == 2
    # the run's former flag still works
    assert features.main(["--model", str(tiny_run), "--layer", "nope", "--demo", "--out", str(tmp_path / "x")]) == 2
    assert "has no layer 'nope'" in capsys.readouterr().err
    assert features.main([str(tiny_run), "--model", str(tmp_path), "--demo", "--out", str(tmp_path / "x")]) == 2
    assert "two runs given" in capsys.readouterr().err


def test_projector_sprite_placeholders_and_size_limit(tmp_path, tiny_run):
    from PIL import Image

    from mame_transfer.core.errors import ConfigError
    from mame_transfer.store.projector import SPRITE_MAX, sprite_image, sprite_layout

    good = tmp_path / "red.jpg"
    Image.new("RGB", (40, 20), (255, 0, 0)).save(good)
    with pytest.warns(UserWarning, match="1 of 2 images could not be read.*missing.jpg"):
        sheet, side = sprite_image([str(good), str(tmp_path / "missing.jpg")], 16)
    assert sheet.size == (32, 16) and side == 16
    pixels = np.asarray(sheet, dtype=int)
    # aspect kept: a red band in the middle of a white square; the unreadable image: a grey square (JPEG values)
    assert np.abs(pixels[8, 8] - (255, 0, 0)).max() < 8 and pixels[0, 0].min() > 245
    assert np.abs(pixels[8, 24] - 190).max() < 8
    assert sprite_layout(37407, 64) == (194, SPRITE_MAX // 194)  # all of MAMe: thumbnails shrink to 42 px
    with pytest.raises(ConfigError, match="pass --no-sprite"):
        sprite_layout(2_000_000)


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


def test_feature_export_with_jitter(tmp_path):
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.datasets.pipeline import make_pipeline
    from mame_transfer.models import backbones
    from mame_transfer.store.export import embedding_model, export

    root = folder_set(tmp_path / "set", n=2)
    dataset = load_dataset(root)
    kw = dict(arch="test_tiny", weights=None, image_size=16, splits=["val"], verbose=0)
    plain = export(tmp_path / "plain", dataset, seed=5, **kw)
    jit = export(tmp_path / "jit", dataset, jitter=True, seed=5, **kw)
    assert jit.manifest["jitter"] is True and plain.manifest["jitter"] is False
    feat, _ = embedding_model(arch="test_tiny", weights=None, image_size=16, seed=5)  # same random weights
    batch = next(iter(make_pipeline(dataset.split("val"), image_size=16, batch_size=64, with_labels=False,
                                    preprocess=backbones.get("test_tiny").preprocess)))
    np.testing.assert_allclose(jit.embeddings("val"), tta.jitter_average(feat, batch), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(plain.embeddings("val"), np.asarray(feat(batch)), rtol=1e-4, atol=1e-6)
    assert not np.allclose(jit.embeddings("val"), plain.embeddings("val"))
