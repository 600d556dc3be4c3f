"""Grad-CAM (Selvaraju et al. 2017) for any saved run.

The model is flat, so any inner layer is reachable: ``keras.Model(inputs, [layer.output, logits_input])`` gives
the feature map and the input of the ``predictions`` layer, the class score is the pre-softmax logit recomputed
from the ``predictions`` kernel, and ``tf.GradientTape`` gives its gradient with respect to the feature map.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from mame_transfer.core.errors import ConfigError


def gradcam(model, images: np.ndarray, *, layer: str | None = None, targets: Sequence[int] | str = "predicted",
            preprocess=None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat maps of a batch.

    Args:
        model: a flat classifier ending in a Dense layer named ``predictions`` (any other final layer: its
            output probability is used as the score).
        images: ``[n, h, w, 3]`` float images in 0..255 (``preprocess`` is applied here).
        layer: the convolutional layer (default: the deepest layer with a spatial output).
        targets: ``"predicted"`` or one class index per image (e.g. the true classes).
        preprocess: the backbone's ``preprocess_input``.

    Returns:
        ``(heatmaps [n, h_l, w_l] in 0..1, probabilities [n, classes])``.
    """
    import keras
    import tensorflow as tf

    from mame_transfer.analysis.sources import last_spatial_layer

    layer = layer or last_spatial_layer(model)
    from mame_transfer.models.build import layer_output

    feature = layer_output(model, layer, spatial=True, purpose="Grad-CAM")
    names = [lay.name for lay in model.layers]
    head = model.get_layer("predictions") if "predictions" in names else None
    use_logits = head is not None and isinstance(head, keras.layers.Dense)
    score_in = head.input if use_logits else model.output
    grad_model = keras.Model(model.inputs[0], [feature, score_in])
    x = np.array(images, dtype=np.float32)  # a copy: Keras's preprocess_input works in place on arrays
    x = preprocess(x) if preprocess is not None else x
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        fmap, h = grad_model(x, training=False)
        if use_logits:
            kernel, bias = head.kernel, head.bias
            logits = tf.matmul(tf.cast(h, kernel.dtype), kernel) + (bias if bias is not None else 0.0)
            proba = tf.nn.softmax(logits)
        else:
            logits = proba = h
        if isinstance(targets, str):
            if targets != "predicted":
                raise ConfigError(f"targets must be 'predicted' or class indices. Received: {targets!r}")
            idx = tf.argmax(proba, axis=1, output_type=tf.int32)
        else:
            idx = tf.convert_to_tensor(np.asarray(targets, dtype=np.int32))
        score = tf.gather(logits, idx, axis=1, batch_dims=1)
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = cam / np.where(peak > 0, peak, 1.0)[:, None, None]
    return cam.astype(np.float32), np.asarray(proba, dtype=np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """The image (0..255) with the heat map, resized to it and coloured with ``jet``, blended on top (uint8)."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = image.shape[:2]
    heat = np.asarray(Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize((w, h),
                                                                                              Image.BILINEAR)) / 255.0
    colored = colormaps["jet"](heat)[..., :3] * 255.0
    out = (1 - alpha) * np.clip(image, 0, 255) + alpha * colored
    return out.clip(0, 255).astype(np.uint8)


def gradcam_grid_figure(overlays: Sequence[np.ndarray], titles: Sequence[str], *, cols: int = 4,
                        title: str = "") -> Figure:
    """A grid of overlaid images with one caption each (true / predicted class and probability)."""
    n = len(overlays)
    cols = max(1, min(cols, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig = Figure(figsize=(2.6 * cols, 3.2 * rows + (0.4 if title else 0)))
    for i, (img, cap) in enumerate(zip(overlays, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(img)
        ax.set_title(cap, fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def caption(true: str | None, predicted: str, probability: float, target: str | None = None) -> str:
    """``true: X / pred: Y (0.93)``, with a mark on mistakes."""
    mark = "" if true is None or true == predicted else "  [wrong]"
    head = f"true: {true}\n" if true is not None else ""
    tgt = f"\ncam for: {target}" if target and target != predicted else ""
    return f"{head}pred: {predicted} ({probability:.2f}){mark}{tgt}"
