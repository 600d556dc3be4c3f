"""Feature visualisation: activation maximisation of one channel, Lucid style.

The image is parameterised in a decorrelated space (Olah, Mordvintsev & Schubert, "Feature Visualization",
Distill 2017; the Lucid library's ``param.image(fft=True, decorrelate=True)``): per colour channel, the real and
imaginary parts of a 2-D Fourier spectrum scaled by ``1 / frequency`` (so gradient steps are balanced across
frequencies), mapped back with an inverse FFT, then mixed by the square root of ImageNet's colour correlation
matrix and squashed by a sigmoid into 0..255. Each step jitters the image by a few pixels (Lucid's
``transform.jitter``) and climbs the mean activation of the channel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mame_transfer.analysis.outputs import AnalysisResult, output_dir
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.plots import PlainFigure as Figure  # plain-text labels

# Lucid's colour_correlation_svd_sqrt (ImageNet RGB), normalised by its largest column norm as in Lucid.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
_COLOR_SQRT = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


def _frequencies(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class FourierImage:
    """A decorrelated Fourier-space image parameterisation of size ``h x w`` (trainable ``spectrum``)."""

    def __init__(self, h: int, w: int, *, sd: float = 0.01, decay: float = 1.0, seed: int = 0):
        import tensorflow as tf

        self.h, self.w = h, w
        freqs = _frequencies(h, w)
        self.scale = tf.constant((1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay).astype(np.float32))
        rng = np.random.default_rng(seed)
        init = rng.normal(0, sd, size=(2, 3) + freqs.shape).astype(np.float32)
        self.spectrum = tf.Variable(init)

    def __call__(self):
        """The image, ``[1, h, w, 3]`` float32 in 0..255."""
        import tensorflow as tf

        spec = tf.complex(self.spectrum[0], self.spectrum[1]) * tf.cast(self.scale, tf.complex64)
        img = tf.signal.irfft2d(spec, fft_length=[self.h, self.w])  # [3, h, w]
        img = tf.transpose(img, (1, 2, 0)) / 4.0  # Lucid's magic constant keeps the initial image grey-ish
        img = tf.reshape(tf.reshape(img, (-1, 3)) @ tf.constant(_COLOR_SQRT.T), (self.h, self.w, 3))
        return tf.sigmoid(img)[None] * 255.0


def channel_objective_model(model, layer: str):
    """Model from the input to the objective tensor of ``layer``.

    A ReLU layer is optimised on its input (the pre-activation, like Lucid's ``*_pre_relu`` objectives): a
    channel that is zero (or saturated at ReLU6) on the starting image would otherwise get no gradient at all.
    """
    import keras

    from mame_transfer.models.build import layer_output

    out = layer_output(model, layer, spatial=True, purpose="feature visualisation")
    target = model.get_layer(layer)
    is_relu = isinstance(target, keras.layers.ReLU) or (
        isinstance(target, keras.layers.Activation) and "relu" in str(target.get_config().get("activation")))
    if is_relu:
        out = target.input
    return keras.Model(model.inputs[0], out)


def visualize_channel(model, layer: str, channel: int, *, size: int = 128, steps: int = 128, lr: float = 0.05,
                      jitter: int = 4, preprocess=None, seed: int = 0, submodel=None) -> dict:
    """Optimise an image to maximise the mean activation of ``layer[..., channel]``.

    Args:
        model: a Keras model (flat run model or bare backbone).
        layer, channel: what to maximise.
        size: image side; the model must accept it (runs are fed at their training size).
        steps, lr: Adam steps and learning rate.
        jitter: maximum random translation in pixels at each step (0 = none).
        preprocess: the backbone's ``preprocess_input``.

    Returns:
        ``{"image": uint8 [size, size, 3], "start": activation before, "end": activation after, "curve": [...]}``.
    """
    import tensorflow as tf

    sub = submodel or channel_objective_model(model, layer)
    channels = int(sub.output.shape[-1])
    if not 0 <= channel < channels:
        raise ConfigError(f"{layer!r} has {channels} channels. Received: channel={channel}")
    param = FourierImage(size, size, seed=seed)
    # A hand-written Adam on the spectrum variable (no optimizer object to build per channel).
    m = tf.Variable(tf.zeros_like(param.spectrum))
    v = tf.Variable(tf.zeros_like(param.spectrum))
    rng = np.random.default_rng(seed)

    def activation(img):
        x = preprocess(img) if preprocess is not None else img
        return tf.reduce_mean(sub(x, training=False)[..., channel])

    curve = [float(activation(param()))]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        dx, dy = (rng.integers(-jitter, jitter + 1, size=2) if jitter else (0, 0))
        with tf.GradientTape() as tape:
            img = param()
            if jitter:
                img = tf.roll(img, shift=[int(dy), int(dx)], axis=[1, 2])
            loss = -activation(img)
        g = tape.gradient(loss, param.spectrum)
        m.assign(b1 * m + (1 - b1) * g)
        v.assign(b2 * v + (1 - b2) * g * g)
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        param.spectrum.assign_sub(lr * mhat / (tf.sqrt(vhat) + eps))
        if t % max(1, steps // 16) == 0 or t == steps:
            curve.append(float(activation(param())))
    image = np.asarray(param()[0]).clip(0, 255).astype(np.uint8)
    return {"image": image, "start": curve[0], "end": curve[-1], "curve": curve}


def featvis_figure(images: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
                   col_labels: Sequence[str], *, title: str = "") -> Figure:
    """Optimised images: one row per model (e.g. before / after fine-tuning), one column per channel."""
    rows, cols = len(images), max((len(r) for r in images), default=1) or 1
    fig = Figure(figsize=(2.1 * cols + 1.2, 2.2 * rows + 0.4))
    for r, row in enumerate(images):
        for c, img in enumerate(row):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def run_featvis(*, a, b=None, layer: str | None = None, channels: Sequence[int] = (0, 1, 2, 3), steps: int = 128,
                lr: float = 0.05, jitter: int = 4, seed: int = 0, image_size: int | None = None,
                layers: Sequence[str] | None = None, layer_pattern: str | None = None,
                out: str | Path | None = None, log: Callable[[str], None] | None = None) -> AnalysisResult:
    """Activation maximisation of ``channels`` of ``layer`` in ``a`` (and ``b``): one grid PNG and one JSON.

    Files in ``out`` (default ``<run>/analysis/featvis`` of ``b``, else of ``a``): ``featvis_<layer>.png``
    (a row per model) and ``featvis_<layer>.json`` (mean activation of each channel before and after).

    Args:
        a, b: model specs (``imagenet:ARCH``, ``random:ARCH``, a run directory) or loaded ModelSources; ``b``
            is optional.
        layer: the layer (default: the deepest of the common ``layers`` / ``layer_pattern`` choice).
        channels: the channels visualised.
        steps, lr, jitter, seed: as for :func:`visualize_channel`.
        image_size: input side of bare backbones (default: the run's).
        out: the output folder.
        log: called with one line per channel as it finishes (optimising a large model takes minutes).

    Returns:
        The result; its ``table`` holds one row per model and channel (``model``, ``channel``, ``start``, ``end``).
    """
    import pandas as pd

    from mame_transfer.analysis.sources import common_layers, load_pair
    from mame_transfer.core import plots
    from mame_transfer.core.fileio import write_json

    a, b = load_pair(a, b, image_size=image_size, seed=seed)
    layer = layer or common_layers(a, b, layers, pattern=layer_pattern)[-1]
    out = output_dir("featvis", out, b, a)
    channels = list(channels)
    images, labels, rows = [], [], []
    summary = {"layer": layer, "steps": steps, "channels": channels, "models": {}}
    for src in (a, b) if b is not None else (a,):
        sub = channel_objective_model(src.model, layer)
        row, info = [], []
        for c in channels:
            r = visualize_channel(src.model, layer, c, size=src.image_size, steps=steps, lr=lr, jitter=jitter,
                                  preprocess=src.preprocess, seed=seed, submodel=sub)
            row.append(r["image"])
            info.append({"channel": c, "start": r["start"], "end": r["end"]})
            rows.append({"model": src.label, "channel": c, "start": r["start"], "end": r["end"]})
            if log is not None:
                log(f"{src.label} {layer}[{c}]: mean activation {r['start']:.4f} -> {r['end']:.4f}")
        images.append(row)
        labels.append(src.label)
        summary["models"][src.label] = info
    fig = featvis_figure(images, labels, [f"{layer}[{c}]" for c in channels],
                         title=f"Activation maximisation ({steps} steps, Fourier + decorrelated colour)")
    result = AnalysisResult(out, figures=[plots.save(fig, out / f"featvis_{layer}.png")], summary=summary,
                            table=pd.DataFrame(rows, columns=["model", "channel", "start", "end"]))
    result.data.append(write_json(out / f"featvis_{layer}.json", summary))
    return result
