"""datasets.pipeline: decode, resize, cache, augment, preprocess once, batch (tf.data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tiny_sets import make_mame

from mame_transfer.core.errors import DataError
from mame_transfer.datasets.layouts import load_dataset
from mame_transfer.datasets.pipeline import decode_and_resize, make_pipeline, resize
from mame_transfer.datasets.tables import Dataset


@pytest.fixture
def tiny(tmp_path) -> Dataset:
    return load_dataset(make_mame(tmp_path / "set"))


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_decode_and_resize(tiny):
    import tensorflow as tf

    image = decode_and_resize(tf.constant(tiny.table["path"][0]), 24)
    assert image.shape == (24, 24, 3) and image.dtype == tf.float32
    assert 0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 255
    assert decode_and_resize(tf.constant(tiny.table["path"][0]), (20, 30)).shape == (20, 30, 3)


@pytest.mark.parametrize("side, antialias", [(36, False), (64, False), (65, True), (250, True)])
def test_resize_antialiases_only_large_shrinks(side, antialias):
    import tensorflow as tf

    # A one-pixel checkerboard: plain bilinear beyond a 2x shrink samples it and aliases, antialiasing averages it.
    board = np.indices((side, side)).sum(axis=0) % 2 * 255.0
    image = tf.constant(np.repeat(board[..., None], 3, axis=-1), tf.float32)
    got = resize(image, 32, 32).numpy()
    want = tf.image.resize(image, (32, 32), method="bilinear", antialias=antialias).numpy()
    other = tf.image.resize(image, (32, 32), method="bilinear", antialias=not antialias).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - other).max() > 1.0


def test_pipeline_shapes_labels_and_order(tiny):
    import tensorflow as tf

    train = tiny.split("train")
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=4)
    x, y = next(iter(ds))
    assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    images, labels = _collect(ds)
    assert images.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(labels, train["label_index"].to_numpy())
    assert images.max() > 1.0 and images.min() >= 0.0  # 0..255, not rescaled
    np.testing.assert_array_equal(_collect(ds)[0], images)  # no augmentation, no shuffle: deterministic
    dropped = make_pipeline(train, image_size=32, preprocess=None, batch_size=4, drop_remainder=True)
    assert sum(1 for _ in dropped) == 2
    only_images = next(iter(make_pipeline(train, image_size=32, preprocess=None, batch_size=9, with_labels=False)))
    np.testing.assert_array_equal(only_images.numpy(), images)


def test_preprocess_applied_once_after_augmentation(tiny):
    train = tiny.split("train")

    def preprocess(x):
        return x / 127.5 - 1.0  # MobileNet-style: 0..255 -> -1..1; twice would land near -1

    raw, _ = _collect(make_pipeline(train, image_size=32, preprocess=None, batch_size=4))
    done, _ = _collect(make_pipeline(train, image_size=32, preprocess=preprocess, batch_size=4))
    np.testing.assert_allclose(done, raw / 127.5 - 1.0, rtol=1e-5, atol=1e-5)
    augmented, _ = _collect(
        make_pipeline(train, image_size=32, preprocess=preprocess, batch_size=4, augment=True, training=True)
    )
    assert augmented.min() >= -1.0 - 1e-5 and augmented.max() <= 1.0 + 1e-5 and augmented.max() > 0
    import keras

    with_keras, _ = _collect(make_pipeline(
        train, image_size=32, preprocess=keras.applications.mobilenet.preprocess_input, batch_size=4))
    np.testing.assert_allclose(with_keras, done, rtol=1e-5, atol=1e-5)


def test_shuffle_and_augment_are_seeded(tiny):
    train = tiny.split("train")

    def run(**kw):
        return _collect(make_pipeline(train, image_size=32, preprocess=None, batch_size=4, **kw))

    x1, y1 = run(training=True, augment=True, seed=3)
    x2, y2 = run(training=True, augment=True, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert sorted(y1) == sorted(train["label_index"])
    plain, labels = run()
    flipped_or_rotated, _ = run(augment=True)  # augment without shuffle keeps the order
    assert not np.allclose(flipped_or_rotated, plain)
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=9, training=True, seed=1)
    epochs = [next(iter(ds))[1].numpy().tolist() for _ in range(4)]
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch


def test_cache_gives_same_images(tiny, tmp_path):
    train = tiny.split("train")
    plain, _ = _collect(make_pipeline(train, image_size=32, preprocess=None, batch_size=4))
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=4, cache=True)
    first, second = _collect(ds)[0], _collect(ds)[0]
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)
    shuffled = make_pipeline(train, image_size=32, preprocess=None, batch_size=9, cache=True, training=True)
    a, b = next(iter(shuffled))[1].numpy(), next(iter(shuffled))[1].numpy()
    assert sorted(a) == sorted(b) == sorted(train["label_index"])
    on_disk = make_pipeline(train, image_size=32, preprocess=None, batch_size=4, cache=str(tmp_path / "c"))
    np.testing.assert_array_equal(_collect(on_disk)[0], plain)


def test_decode_failure_names_the_file(tiny):
    import tensorflow as tf

    train = tiny.split("train")
    bad = train["path"][2]
    Path(bad).write_bytes(Path(bad).read_bytes()[:200])
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=os.path.basename(bad)):
        _collect(ds)


def test_empty_table_rejected(tiny):
    with pytest.raises(DataError, match="empty table"):
        make_pipeline(tiny.table.iloc[:0], image_size=32, preprocess=None, batch_size=4)


def test_tiff_and_webp_in_the_pipeline(tmp_path):
    """Flat class folders of 16-bit TIFFs and WebPs train like JPEGs; a broken TIFF is named."""
    import tensorflow as tf
    from tiny_sets import make_flat, tiff16_bytes

    root = make_flat(tmp_path / "flat", classes=("a", "b"), per_class=3, ext=".webp")
    level = np.full((20, 30), 40000, np.uint16)  # 16-bit grey 40000 -> 8-bit 156
    for i in range(3):
        (root / "a" / f"master_{i}.tif").write_bytes(tiff16_bytes(level))
    table = load_dataset(root, test_fraction=0).table
    assert {Path(p).suffix for p in table["path"]} == {".webp", ".tif"}
    images, _ = _collect(make_pipeline(table, image_size=16, preprocess=None, batch_size=4))
    assert images.shape == (len(table), 16, 16, 3)
    tif_rows = table["path"].str.endswith(".tif").to_numpy()
    np.testing.assert_allclose(images[tif_rows], 156.0)
    Path(table["path"][tif_rows.argmax()]).write_bytes(tiff16_bytes(level)[:120])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"master_\d.tif"):
        _collect(make_pipeline(table, image_size=16, preprocess=None, batch_size=4))
