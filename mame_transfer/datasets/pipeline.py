"""The fixed-shape ``tf.data`` pipeline: decode, resize, (cache), shuffle, batch, augment, preprocess once.

TensorFlow is imported inside the functions, so reading tables never pays for it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import DataError
from mame_transfer.datasets.images import looks_complete


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    height, width = (int(v) for v in image_size)
    return height, width


def decode_and_resize(path_tensor, image_size: int | Sequence[int], dct_ratio: bool = False):
    """Read, decode and resize one image to a fixed shape (FS): float32 ``(H, W, 3)`` in 0..255.

    A file that is empty, truncated or not an image fails with an ``InvalidArgumentError`` naming it
    (checked in-graph, no ``tf.py_function``); :func:`check_images` catches such files before training.
    With ``dct_ratio`` a JPEG at least twice the target size is decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain (``decode_jpeg(ratio=...)``, never below the target size) before the antialiased resize.
    """
    import tensorflow as tf

    height, width = _image_hw(image_size)
    data = tf.io.read_file(path_tensor)
    check = tf.debugging.Assert(
        looks_complete(data),
        ["Cannot decode image file (empty, truncated or not JPEG/PNG); run `mame-data check` on the dataset:",
         path_tensor],
    )
    with tf.control_dependencies([check]):
        if dct_ratio:
            image = _decode_scaled(data, height, width)
        else:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
    # Antialiasing matters when shrinking the full-resolution MAMe images (median ~2700 px) to ~224.
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    image.set_shape((height, width, 3))
    return tf.cast(image, tf.float32)


def _decode_scaled(data, height: int, width: int):
    """Decode with the largest JPEG DCT scale-down (8, 4, 2, 1) keeping both sides >= the target."""
    import tensorflow as tf

    def jpeg_ratio():
        shape = tf.image.extract_jpeg_shape(data)
        fit = tf.minimum(shape[0] // height, shape[1] // width)
        return tf.where(fit >= 8, 3, tf.where(fit >= 4, 2, tf.where(fit >= 2, 1, 0)))

    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    branch = tf.cond(is_jpeg, jpeg_ratio, lambda: tf.constant(-1))
    return tf.switch_case(branch + 1, [
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
        *[lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in (1, 2, 4, 8)],
    ])


def _rotate(images, angles):
    """Rotate a batch by per-image angles (radians) about the centre, reflecting at the borders."""
    import tensorflow as tf

    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    zeros = tf.zeros_like(angles)
    transforms = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


MAX_ROTATION_DEGREES = 10.0


def _augment(images, seed):
    """Random horizontal flip and a small rotation (±MAX_ROTATION_DEGREES), seeded per batch."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    flip = tf.random.stateless_uniform([n], seed=seed) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    limit = MAX_ROTATION_DEGREES * np.pi / 180.0
    angles = tf.random.stateless_uniform([n], seed=seed + tf.constant([0, 1], tf.int64), minval=-limit, maxval=limit)
    return _rotate(images, angles)


def make_pipeline(
    table: pd.DataFrame,
    *,
    image_size: int | Sequence[int],
    preprocess: Callable | None,
    batch_size: int,
    training: bool = False,
    augment: bool = False,
    shuffle: bool | None = None,
    seed: int = 0,
    cache: bool | str = False,
    drop_remainder: bool = False,
    with_labels: bool = True,
    dct_ratio: bool = False,
):
    """Build a ``tf.data`` pipeline over a table's ``path`` and ``label_index`` columns.

    Order: (shuffle paths) -> decode + fixed-shape resize -> (cache) -> batch -> (augment) -> ``preprocess``
    -> prefetch. With ``cache`` the decoded images are cached first and shuffled after, so every epoch gets a
    new order.

    Args:
        table: rows to feed (e.g. ``dataset.split("train")``).
        image_size: output side (int) or ``(height, width)``.
        preprocess: the backbone's ``preprocess_input``, applied once to each float32 0..255 batch after
            augmentation; ``None`` leaves the 0..255 values.
        batch_size: images per batch.
        training: shuffle by default.
        augment: random horizontal flip + rotation up to ±10 degrees (nothing else).
        shuffle: shuffle with ``seed``, reshuffling each epoch; default ``training``.
        seed: seed of the shuffle and of the augmentation.
        cache: cache decoded, resized, un-augmented images in memory (``True``) or in this file prefix (str).
        drop_remainder: drop the last incomplete batch.
        with_labels: yield ``(images, int32 labels)``; else images only.
        dct_ratio: decode JPEGs much larger than ``image_size`` at 1/2..1/8 scale (see :func:`decode_and_resize`).
    """
    import tensorflow as tf

    if len(table) == 0:
        raise DataError("make_pipeline got an empty table; check the split you passed.")
    if "path" not in table.columns or (with_labels and "label_index" not in table.columns):
        raise DataError(f"make_pipeline needs 'path' and 'label_index' columns; got {list(table.columns)}.")
    autotune = tf.data.AUTOTUNE
    do_shuffle = training if shuffle is None else bool(shuffle)
    paths = table["path"].astype(str).tolist()
    labels = (
        table["label_index"].to_numpy(dtype=np.int32) if "label_index" in table.columns
        else np.zeros(len(table), np.int32)
    )
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))

    def shuffled(d):
        # A full-size buffer: MAMe CSVs are sorted by class, so a smaller buffer would not mix classes.
        return d.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(path, label):
        return decode_and_resize(path, image_size, dct_ratio), label

    if cache:
        ds = ds.map(decode, num_parallel_calls=autotune, deterministic=True)
        ds = ds.cache("" if cache is True else str(cache))
        if do_shuffle:
            ds = shuffled(ds)
    else:
        if do_shuffle:
            ds = shuffled(ds)
        ds = ds.map(decode, num_parallel_calls=autotune, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (_augment(batch[0], s), batch[1]), num_parallel_calls=autotune, deterministic=True
        )
    if preprocess is not None:
        ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=autotune, deterministic=True)
    if not with_labels:
        ds = ds.map(lambda x, y: x)
    return ds.prefetch(autotune)

