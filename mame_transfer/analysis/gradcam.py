"""Grad-CAM (Selvaraju et al. 2017) for any saved run.

The model is flat, so any inner layer is reachable: ``keras.Model(inputs, [layer.output, logits_input])`` gives
the feature map and the input of the ``predictions`` layer, the class score is the pre-softmax logit recomputed
from the ``predictions`` kernel, and ``tf.GradientTape`` gives its gradient with respect to the feature map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mame_transfer.analysis.outputs import AnalysisResult, output_dir
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.plots import PlainFigure as Figure  # plain-text labels


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


def run_gradcam(run: str | Path, *, images: Sequence[str | Path] = (), split: str | None = None, n: int = 16,
                data: str | None = None, toy: bool = False, layer: str | None = None, target: str = "predicted",
                cols: int = 4, batch_size: int = 16, seed: int = 0, out: str | Path | None = None) -> AnalysisResult:
    """Grad-CAM of a run on image files and/or a random sample of a split: one grid PNG and one CSV.

    Files in ``out`` (default ``<run>/analysis/gradcam``): ``gradcam_<split or "images">_<layer>.png`` and
    ``.csv`` (one row per image: ``path``, ``image``, ``label``, ``predicted``, ``probability``).

    Args:
        run: a finished run directory (a classifier).
        images: image files to explain.
        split: a split of ``data`` (default: the run's dataset) to sample ``n`` images from.
        layer: the conv layer (default: the last spatial one).
        target: ``"predicted"`` or ``"true"`` (the class explained; ``true`` needs images from ``split``).
        cols: columns of the grid.
        seed: seed of the image sample.
    """
    import pandas as pd

    from mame_transfer.analysis.sources import (
        last_spatial_layer,
        load_images,
        load_source,
        load_table,
    )
    from mame_transfer.core import plots
    from mame_transfer.core.fileio import write_text

    src = load_source(run)
    if src.classes is None:
        raise ConfigError(f"gradcam needs a run directory (a classifier). Received: {run}")
    rows = [{"path": str(p), "image": Path(p).name, "label": None} for p in images or []]
    if split:
        table, classes = load_table(data=data, source=src, split=split, toy=toy)
        if list(classes) != list(src.classes):
            from mame_transfer.inference.metrics import align_to_classes

            table = align_to_classes(table, src.classes, str(data))
        count = min(n, len(table))
        pick = np.random.default_rng(seed).choice(len(table), count, replace=False) if count else []
        for i in sorted(pick):
            rows.append({"path": table["path"].iloc[i], "image": table["image"].iloc[i],
                         "label": table["label"].iloc[i]})
    if not rows:
        raise ConfigError("no images: pass --images FILE ... and/or --split SPLIT --n N")
    frame = pd.DataFrame(rows)
    pixels = load_images(frame["path"].tolist(), src.image_size)
    if target == "true":
        if frame["label"].isna().any():
            raise ConfigError("--target true needs images with known classes (from --split), not --images")
        index = {c: i for i, c in enumerate(src.classes)}
        targets = [index[c] for c in frame["label"]]
    else:
        targets = "predicted"
    cams, proba = [], []
    for start in range(0, len(pixels), batch_size):
        t = targets if isinstance(targets, str) else targets[start:start + batch_size]
        c, p = gradcam(src.model, pixels[start:start + batch_size], layer=layer, targets=t, preprocess=src.preprocess)
        cams.append(c)
        proba.append(p)
    cams, proba = np.concatenate(cams), np.concatenate(proba)
    layer = layer or last_spatial_layer(src.model)
    pred = proba.argmax(1)
    overlays, titles = [], []
    for k in range(len(frame)):
        tgt = src.classes[targets[k]] if not isinstance(targets, str) else None
        overlays.append(overlay(pixels[k], cams[k]))
        titles.append(f"{frame['image'].iloc[k][-28:]}\n" + caption(frame["label"].iloc[k], src.classes[pred[k]],
                                                                    float(proba[k, pred[k]]), tgt))
    out = output_dir("gradcam", out, src)
    stem = f"gradcam_{split or 'images'}_{layer}"
    fig = gradcam_grid_figure(overlays, titles, cols=cols,
                              title=f"Grad-CAM of {src.label} at {layer} (target: {target} class)")
    result = AnalysisResult(out, figures=[plots.save(fig, out / f"{stem}.png")])
    frame["predicted"] = [src.classes[i] for i in pred]
    frame["probability"] = proba[np.arange(len(pred)), pred]
    result.data.append(write_text(out / f"{stem}.csv", frame.to_csv(index=False)))
    result.summary = {"run": src.label, "layer": layer, "target": target, "images": int(len(frame))}
    result.table = frame
    return result
