"""datasets.augment: the --augmentations spec, Keras preprocessing layers on batches (seeded), soft labels."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_sets import make_mame

from mame_transfer.core.errors import ConfigError
from mame_transfer.datasets import augment
from mame_transfer.datasets.layouts import load_dataset
from mame_transfer.datasets.pipeline import make_pipeline


def test_parse_default_values_order_and_errors():
    assert [str(op) for op in augment.parse(True)] == ["flip", "rotation:10"]  # the former hand-written default
    assert augment.parse(False) == () and augment.parse("none") == ()
    ops = augment.parse("mixup, flip,zoom,rotation:5")
    assert [str(op) for op in ops] == ["flip", "zoom:0.2", "rotation:5", "mixup:0.2"]  # label mixing last
    assert augment.mixes_labels(ops) and not augment.mixes_labels("flip,randaugment:0.3")
    with pytest.raises(ConfigError, match=r"unknown augmentation 'blur'.*flip, rotation"):
        augment.parse("flip,blur")
    with pytest.raises(ConfigError, match="takes no value"):
        augment.parse("flip:2")
    with pytest.raises(ConfigError, match=r"'zoom' value must be in \(0, 1\]"):
        augment.parse("zoom:3")
    with pytest.raises(ConfigError, match="twice"):
        augment.parse("flip,flip")


def _batch(n=4, size=24):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), np.arange(n, dtype=np.int32) % 3


def test_flip_gives_the_image_or_its_mirror_and_rotation_keeps_range():
    import tensorflow as tf

    x, y = _batch(8)
    out, labels = augment.apply(tf.constant(x), tf.constant(y), augment.build_layers("flip", seed=1))
    out = out.numpy()
    for a, b in zip(out, x):
        assert np.allclose(a, b) or np.allclose(a, b[:, ::-1])
    assert any(np.allclose(a, b[:, ::-1]) for a, b in zip(out, x)) and labels.numpy().tolist() == y.tolist()
    rotated, _ = augment.apply(tf.constant(x), tf.constant(y), augment.build_layers("rotation:10", seed=1))
    rotated = rotated.numpy()
    assert rotated.shape == x.shape and rotated.min() >= 0 and rotated.max() <= 255.0 + 1e-3
    assert not np.allclose(rotated, x)
    # reflected borders, like the former hand-written rotation: no black corners
    assert (rotated[:, 0, 0] > 0).all()


def test_every_layer_runs_and_mixing_gives_soft_labels():
    import tensorflow as tf

    x, y = _batch(6)
    layers = augment.build_layers("flip,rotation:10,zoom:0.2,randaugment:0.3,mixup:0.2,cutmix:1.0", seed=0)
    out, labels = augment.apply(tf.constant(x), tf.constant(y), layers, num_classes=3)
    assert out.shape == x.shape and out.dtype == tf.float32
    labels = labels.numpy()
    assert labels.shape == (6, 3) and np.allclose(labels.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ConfigError, match="number of classes"):
        augment.apply(tf.constant(x), tf.constant(y), augment.build_layers("mixup", seed=0))


def test_pipeline_augmentation_is_seeded_and_fresh_each_epoch(tmp_path):
    train = load_dataset(make_mame(tmp_path / "set")).split("train")

    def images(ds):
        return np.concatenate([x.numpy() for x, _ in ds])

    kw = dict(image_size=32, preprocess=None, batch_size=4, augment="flip,rotation:10,zoom:0.2", seed=3)
    a, b = make_pipeline(train, **kw), make_pipeline(train, **kw)
    first = images(a)
    np.testing.assert_array_equal(first, images(b))  # same seed, same images
    assert not np.allclose(first, images(a))  # the next epoch draws new transformations
    mixed = make_pipeline(train, image_size=32, preprocess=None, batch_size=9, augment="mixup", num_classes=3,
                          seed=0, training=True)
    _, labels = next(iter(mixed))
    assert labels.shape == (9, 3)
