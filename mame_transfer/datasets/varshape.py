"""Variable-shape input (the MAMe paper's "VS" setting): keep each image's aspect ratio, cap its pixel count.

Each image is resized, aspect preserved, so that ``height * width`` is about ``--pixels`` (65,536 = 256^2,
360,000 = 600^2), both sides rounded to a multiple of 32 (the backbones' total stride). Training batches are
bucketed by aspect ratio (``group_by_window`` on a log-aspect bin), then zero-padded (after ``preprocess_input``,
so padding is the network's neutral value) to the largest image of the batch. The model takes ``(None, None, 3)``
inputs and its head starts with global pooling, so every shape works.

Pares et al. 2022 ("A closer look at art mediums: the MAMe image classification dataset", Applied Intelligence)
compare this variable-shape setting to fixed-shape resizing on MAMe.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.datasets.images import DECODE_FAILED, decode_rgb

MULTIPLE = 32
ASPECT_BINS = (0.25, 0.5, 0.8, 1.25, 2.0, 4.0)  # bin edges of width / height


def budget_hw(height: float, width: float, pixels: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """Aspect-preserving size with about ``pixels`` pixels, sides multiples of ``multiple`` (at least one)."""
    if pixels < multiple * multiple:
        raise ConfigError(f"--pixels must be at least {multiple * multiple}. Received: pixels={pixels}")
    f = np.sqrt(pixels / (float(height) * float(width)))
    h = max(multiple, int(round(height * f / multiple)) * multiple)
    w = max(multiple, int(round(width * f / multiple)) * multiple)
    return h, w


def budget_hw_tf(shape, pixels: int, multiple: int = MULTIPLE):
    """In-graph :func:`budget_hw` of an image ``shape`` (``(height, width, ...)``): int32 ``(h, w)``."""
    import tensorflow as tf

    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    f = tf.sqrt(float(pixels) / (h * w))
    nh = tf.maximum(multiple, tf.cast(tf.round(h * f / multiple), tf.int32) * multiple)
    nw = tf.maximum(multiple, tf.cast(tf.round(w * f / multiple), tf.int32) * multiple)
    return nh, nw


def load_to_budget(path, pixels: int):
    """Read, decode and resize (antialiased, aspect kept) one image to about ``pixels`` pixels.

    Returns:
        ``(float32 (h, w, 3) in 0..255, ok)``; ``ok`` is False for an unreadable file (see ``images.decode_rgb``).
    """
    import tensorflow as tf

    image, ok = decode_rgb(tf.io.read_file(path), path)
    nh, nw = budget_hw_tf(tf.shape(image), pixels)
    image = tf.image.resize(image, tf.stack([nh, nw]), method="bilinear", antialias=True)
    image.set_shape((None, None, 3))
    return tf.cast(image, tf.float32), ok


def decode_to_budget(path, pixels: int):
    """:func:`load_to_budget` that fails with an error naming an unreadable file: float32 0..255."""
    import tensorflow as tf

    image, ok = load_to_budget(path, pixels)
    check = tf.debugging.Assert(ok, [f"{DECODE_FAILED}; run `python -m mame_transfer.data check`:", path])
    with tf.control_dependencies([check]):
        return tf.identity(image)


def aspect_bin(image) -> "tf.Tensor":  # noqa: F821
    """Index of the ``ASPECT_BINS`` interval holding ``width / height`` (int64, the bucketing key)."""
    import tensorflow as tf

    shape = tf.cast(tf.shape(image), tf.float32)
    ratio = shape[1] / shape[0]
    return tf.cast(tf.reduce_sum(tf.cast(ratio >= tf.constant(ASPECT_BINS), tf.int32)), tf.int64)


def make_pipeline(table: pd.DataFrame, *, pixels: int, preprocess: Callable | None, batch_size: int,
                  training: bool = False, augment: bool = False, seed: int = 0, with_labels: bool = True,
                  with_index: bool = False):
    """A ``tf.data`` pipeline of variable-shape batches.

    Training (``training=True``): shuffled, bucketed by aspect ratio, padded per batch; ``augment`` adds a random
    horizontal flip (rotation would change the shape). Otherwise rows keep the table order, one bucket-free
    padded batch of consecutive images at a time; pass ``with_index`` to get the row index of each image.

    Yields:
        ``images`` or ``(images, labels)``, with ``indices`` appended when ``with_index``.
    """
    import tensorflow as tf

    if len(table) == 0:
        raise DataError("varshape.make_pipeline got an empty table; check the split you passed.")
    paths = table["path"].astype(str).tolist()
    labels = table["label_index"].to_numpy(np.int32) if "label_index" in table else np.zeros(len(table), np.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels, np.arange(len(paths), dtype=np.int32)))
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(path, label, index):
        image = decode_to_budget(path, pixels)
        if augment:
            s = tf.stack([tf.cast(seed, tf.int32), index])
            flip = tf.random.stateless_uniform([], seed=s) < 0.5
            image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        if preprocess is not None:
            image = preprocess(image)
        return image, label, index

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    shapes = (tf.TensorShape([None, None, 3]), tf.TensorShape([]), tf.TensorShape([]))
    if training:
        ds = ds.group_by_window(key_func=lambda x, y, i: aspect_bin(x),
                                reduce_func=lambda key, d: d.padded_batch(batch_size, padded_shapes=shapes),
                                window_size=batch_size)
    else:
        ds = ds.padded_batch(batch_size, padded_shapes=shapes)

    def select(x, y, i):
        out = (x, y) if with_labels else (x,)
        out = out + (i,) if with_index else out
        return out if len(out) > 1 else out[0]

    return ds.map(select).prefetch(tf.data.AUTOTUNE)


def predict_proba(model, table: pd.DataFrame, *, pixels: int, preprocess: Callable | None, batch_size: int = 8,
                  flip: bool = False) -> np.ndarray:
    """Class probabilities, in table order, one image at a time at its own shape (no padding at test time).

    With ``flip`` the prediction is the mean of the image and its mirror image.
    """
    import tensorflow as tf

    ds = make_pipeline(table, pixels=pixels, preprocess=preprocess, batch_size=1, with_labels=False)
    rows = []
    for x in ds:
        p = np.asarray(model(x, training=False))
        if flip:
            p = (p + np.asarray(model(tf.reverse(x, axis=[2]), training=False))) / 2.0
        rows.append(p[0])
    return np.stack(rows)
