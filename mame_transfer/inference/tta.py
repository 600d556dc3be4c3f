"""Test-time augmentation: multi-patch scoring (Oquab et al.) and horizontal flips.

Multi-patch scoring (Oquab, Bottou, Laptev & Sivic, CVPR 2014, "Learning and transferring mid-level image
representations using convolutional neural networks", section 3.3): each image is cut into square, overlapping
patches at several scales (side = scale x the image's short side, 50 % overlap), every patch is classified at
the network's input size, and class C scores

    score(C) = 1/M * sum_i y(C | P_i) ** k        (k = 5 by default)

so a few confident patches dominate. The scores are renormalised to sum to 1 per image (ranking unchanged), so
the usual metrics and ensembles apply. Meant for high-resolution images (MAMe ``data/``, median ~2700 px).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.datasets.images import decode_rgb

MODES = ("none", "flip", "patches")
DEFAULT_SCALES = (1.0, 0.7, 0.5)


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"1.0,0.7,0.5"`` -> ``(1.0, 0.7, 0.5)``; each scale in (0, 1]."""
    try:
        scales = tuple(float(s) for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip())
    except ValueError:
        raise ConfigError(f"--patch-scales must be comma-separated numbers like 1.0,0.7,0.5. Received: {text!r}") from None
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ConfigError(f"--patch-scales must be in (0, 1] (fractions of the short side). Received: {text!r}")
    return scales


def patch_boxes(height: int, width: int, scales: Sequence[float], overlap: float = 0.5) -> np.ndarray:
    """Square patches of side ``scale * min(height, width)`` tiling the image with ``overlap``.

    Along each axis the patches start at evenly spaced offsets, from 0 to ``length - side``, as many as a stride
    of ``(1 - overlap) * side`` needs to reach the far edge; so the first and last patch touch the borders.

    Returns:
        int array ``[n, 4]`` of ``(y0, x0, y1, x1)`` pixel boxes (end exclusive).
    """
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap must be in [0, 1). Received: overlap={overlap}")
    boxes = []
    short = min(height, width)
    for scale in scales:
        side = max(1, int(round(scale * short)))
        stride = max(1.0, (1 - overlap) * side)

        def offsets(length: int) -> np.ndarray:
            n = int(np.ceil((length - side) / stride)) + 1 if length > side else 1
            return np.round(np.linspace(0, length - side, n)).astype(int)

        for y in offsets(height):
            for x in offsets(width):
                boxes.append((y, x, y + side, x + side))
    return np.asarray(boxes, dtype=int)


def aggregate_patch_scores(patch_proba: np.ndarray, power: float = 5.0) -> np.ndarray:
    """``mean_i y(C|P_i) ** power`` over patches (axis 0), renormalised to sum to 1.

    Args:
        patch_proba: ``[patches, classes]`` probabilities of one image.
        power: ``k``; 1 is plain averaging, large values approach max-pooling over patches.
    """
    p = np.asarray(patch_proba, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"patch_proba must be [patches, classes]. Received shape {p.shape}")
    score = np.mean(p ** float(power), axis=0)
    total = score.sum()
    return score / total if total > 0 else np.full_like(score, 1.0 / len(score))


def _decode(path: str, max_short: int):
    """Decode an image (float32 0..255); shrink it (antialiased) so its short side is at most ``max_short``."""
    import tensorflow as tf

    image, ok = decode_rgb(tf.io.read_file(path), path)
    if not bool(ok):
        raise DataError(f"cannot decode image file {path} (empty, truncated or not JPEG/PNG/TIFF/WebP); "
                        "run `python -m mame_transfer.data check`")
    return shrink(image, max_short)


def max_short_side(image_size: int, scales: Sequence[float]) -> int:
    """The short side images are first shrunk to: the smallest patch is then about the network's input size."""
    return int(np.ceil(image_size / min(parse_scales(scales))))


def shrink(image, max_short: int):
    """A decoded ``(H, W, 3)`` image as float32, shrunk (antialiased) so its short side is at most ``max_short``."""
    import tensorflow as tf

    h, w = int(image.shape[0]), int(image.shape[1])
    image = tf.cast(image, tf.float32)
    if min(h, w) > max_short:
        f = max_short / min(h, w)
        image = tf.image.resize(image, (max(1, round(h * f)), max(1, round(w * f))), antialias=True)
    return image


def image_patches(image, size: int, scales: Sequence[float], overlap: float = 0.5):
    """All patches of one decoded ``(H, W, 3)`` image, each resized (antialiased) to ``size`` x ``size``."""
    import tensorflow as tf

    h, w = int(image.shape[0]), int(image.shape[1])
    crops = [tf.image.resize(image[y0:y1, x0:x1], (size, size), antialias=True)
             for y0, x0, y1, x1 in patch_boxes(h, w, scales, overlap)]
    return tf.stack(crops)


def predict_patches(model, table: pd.DataFrame, *, preprocess, image_size: int, scales: Sequence[float] = DEFAULT_SCALES,
                    power: float = 5.0, overlap: float = 0.5, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
    """Multi-patch scores ``[n, classes]`` for every row of ``table`` (column ``path``)."""
    import tensorflow as tf

    scales = parse_scales(scales)
    # One traced function for every chunk size (model.predict would retrace on each new final-batch size).
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    # No detail is lost by first shrinking so that the smallest patch is about the network's input size.
    max_short = max_short_side(image_size, scales)
    out = []
    pending: list[tuple[int, int]] = []  # (row, number of patches) waiting in the buffer
    buffer: list = []

    def flush():
        if not buffer:
            return
        batch = np.concatenate([np.asarray(b) for b in buffer])
        proba = np.concatenate([np.asarray(forward(preprocess(batch[i:i + batch_size])))
                                for i in range(0, len(batch), batch_size)])
        start = 0
        for _, n in pending:
            out.append(aggregate_patch_scores(proba[start:start + n], power))
            start += n
        buffer.clear()
        pending.clear()

    paths = table["path"].astype(str).tolist()
    for row, path in enumerate(paths):
        patches = image_patches(_decode(path, max_short), image_size, scales, overlap)
        buffer.append(patches)
        pending.append((row, int(patches.shape[0])))
        if sum(n for _, n in pending) >= 4 * batch_size:
            flush()
        if verbose and (row + 1) % 100 == 0:
            print(f"multi-patch scoring: {row + 1}/{len(paths)} images", flush=True)
    flush()
    return np.stack(out).astype(np.float32)


def flip_average(model, batches) -> np.ndarray:
    """Mean of the predictions on each batch and on its horizontal mirror image."""
    import tensorflow as tf

    plain = np.asarray(model.predict(batches, verbose=0))
    mirrored = np.asarray(model.predict(batches.map(lambda x: tf.reverse(x, axis=[2])), verbose=0))
    return (plain + mirrored) / 2.0


# ------------------------------------------------------------------------------------- jittered features


JITTER_CROP = 0.8  # side of the corner / centre crops, as a fraction of the image side


def jitter_views(images, crop: float = JITTER_CROP) -> list:
    """Views of a batch ``(B, H, W, C)`` for off-the-shelf features with jitter (Razavian et al. 2014).

    The whole image, its four corner crops and its centre crop (side ``crop`` x the image side, resized back to
    ``H x W``), each also mirrored: 12 views, every one the shape of ``images``.
    """
    import tensorflow as tf

    if not 0 < crop <= 1:
        raise ConfigError(f"jitter crop must be in (0, 1]. Received: crop={crop}")
    lo, hi = 0.0, 1.0 - crop
    mid = (1.0 - crop) / 2
    corners = [(lo, lo), (lo, hi), (hi, lo), (hi, hi), (mid, mid)]
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    views = [images]
    for y, x in corners:
        boxes = tf.tile(tf.constant([[y, x, y + crop, x + crop]], tf.float32), [n, 1])
        views.append(tf.image.crop_and_resize(images, boxes, tf.range(n), size))
    return views + [tf.reverse(v, axis=[2]) for v in views]


def jitter_average(model, images, crop: float = JITTER_CROP) -> np.ndarray:
    """Mean of ``model`` outputs (features or probabilities) over the :func:`jitter_views` of a batch."""
    outs = [np.asarray(model(v, training=False), dtype=np.float64) for v in jitter_views(images, crop)]
    return np.mean(outs, axis=0).astype(np.float32)
