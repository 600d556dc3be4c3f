"""One flat ``keras.Model``: backbone layers inlined, then a named dense head.

Because the backbone is not nested as a sub-model, every inner layer (``block4_conv3``, ``conv4_block6_out``...)
is reachable by name on the returned model for freezing, Grad-CAM, CKA and feature export.

Head layer names: ``global_pool``, ``head_dense_1``, ``head_dropout_1``, ..., ``predictions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mame_transfer.core.errors import ConfigError
from mame_transfer.models import backbones

HEAD_PREFIXES = ("global_pool", "head_", "predictions")
OQUAB_WIDTHS = (2048,)


@dataclass(frozen=True)
class HeadSpec:
    """The dense head: widths of the hidden Dense+ReLU layers, L2 on their kernels, dropout after each."""

    widths: tuple[int, ...] = (512, 256)
    dropout: float = 0.5
    l2: float = 0.0
    pooling: str = "avg"

    @classmethod
    def parse(cls, head: str | Sequence[int] | None, **kwargs) -> "HeadSpec":
        """Accept ``"512,256"``, ``[512, 256]``, ``""``/``"none"`` (linear classifier on pooled features)."""
        if head is None or (isinstance(head, str) and head.strip().lower() in ("", "none", "linear")):
            widths: tuple[int, ...] = ()
        elif isinstance(head, str) and head.strip().lower() == "oquab":
            # Oquab et al. 2014 adaptation layers: FCa (2048, ReLU, dropout) then FCb (the softmax).
            widths = OQUAB_WIDTHS
        elif isinstance(head, str):
            try:
                widths = tuple(int(w) for w in head.split(",") if w.strip())
            except ValueError:
                raise ConfigError(f"--head must be comma-separated layer widths like 512,256. Received: head={head!r}")
        else:
            widths = tuple(int(w) for w in head)
        if any(w <= 0 for w in widths):
            raise ConfigError(f"head widths must be positive. Received: head={head!r}")
        return cls(widths=widths, **kwargs)


def is_head_layer(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def build_model(
    arch: str,
    num_classes: int,
    *,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    head: HeadSpec | str | Sequence[int] | None = None,
    dropout: float = 0.5,
    l2: float = 0.0,
    freeze_until: str | None = None,
    alpha: float = 1.0,
    pooling: str = "avg",
    variable_shape: bool = False,
    keep_top: bool = False,
    scales: Sequence[int] | None = None,
):
    """Build backbone + head as one flat model.

    Args:
        arch: registry name (``vgg16``, ``resnet50``, ``efficientnetb0``, ``mobilenet``...).
        num_classes: outputs of the softmax.
        image_size: square input side; None uses the registry default.
        weights: ``imagenet``, ``none`` or a weights file path.
        head: a :class:`HeadSpec`, or widths as ``"512,256"``; ``dropout``, ``l2`` and ``pooling`` apply when a
            spec is not given.
        freeze_until: block name (that block and every earlier one are frozen), ``none``/None (train all),
            ``all`` (head only) or ``auto`` (the registry's ``default_freeze`` for the arch).
        alpha: MobileNet width multiplier.
        variable_shape: accept any input height and width (``(None, None, 3)``).
        keep_top: VGG only: keep the ImageNet classifier's FC6/FC7 (``fc1``, ``fc2``, 4096 each, after
            ``flatten``) and put the head on ``fc2`` (Oquab et al. 2014); needs the default 224 px input.
        scales: multi-scale features: the ``image_size`` input is resized (antialiased) to each of these sides,
            the backbone runs on each with the same layers and weights, and the pooled features
            (``global_pool_<side>``) are concatenated into ``global_pool``. Resizing commutes with the per-channel
            affine ``preprocess_input`` of the registry, so preprocessing once at ``image_size`` is exact.

    Returns:
        A compiled-ready (not compiled) ``keras.Model`` named ``<arch>_transfer``.
    """
    from keras import layers

    spec = backbones.get(arch)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes. Received: num_classes={num_classes}")
    if not isinstance(head, HeadSpec):
        head = HeadSpec.parse(head if head is not None else (512, 256), dropout=dropout, l2=l2, pooling=pooling)
    size = image_size or spec.default_size
    if size < spec.min_size:
        raise ConfigError(f"{arch} needs images of at least {spec.min_size} px. Received: image_size={size}")
    input_shape = (None, None, 3) if variable_shape else (size, size, 3)
    if scales:
        if keep_top or variable_shape:
            raise ConfigError("multi-scale features need a fixed input size and no keep_top")
        inputs, x = _multiscale_features(spec, size, parse_scales(scales, size), weights=weights, alpha=alpha,
                                         pooling=head.pooling)
        return _with_head(inputs, x, spec, arch, head, num_classes, freeze_until)
    if keep_top:
        if "fc1" not in spec.top_layers:
            raise ConfigError(f"keep_top keeps the ImageNet FC6/FC7 layers (fc1, fc2) of VGG; {arch} has none")
        if variable_shape or size != spec.default_size:
            raise ConfigError(f"keep_top needs the fixed {spec.default_size} px input the FC layers were trained at. "
                              f"Received: image_size={size}, variable_shape={variable_shape}")
        base = spec.build(weights=weights, input_shape=input_shape, alpha=alpha, include_top=True)
        x = base.get_layer("fc2").output
    else:
        base = spec.build(weights=weights, input_shape=input_shape, alpha=alpha)
        x = base.get_layer(spec.feature_layer).output
    if keep_top:  # fc2 is already a vector: no pooling
        pass
    elif head.pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    elif head.pooling == "max":
        x = layers.GlobalMaxPooling2D(name="global_pool")(x)
    else:
        raise ConfigError(f"pooling must be 'avg' or 'max'. Received: pooling={head.pooling!r}")
    return _with_head(base.inputs, x, spec, arch, head, num_classes, freeze_until)


def _with_head(inputs, x, spec, arch: str, head: HeadSpec, num_classes: int, freeze_until):
    """The named dense head on pooled features ``x``, the model, frozen as asked."""
    import keras
    from keras import layers, regularizers

    reg = regularizers.L2(head.l2) if head.l2 else None
    for i, width in enumerate(head.widths, start=1):
        x = layers.Dense(width, activation="relu", kernel_regularizer=reg, name=f"head_dense_{i}")(x)
        if head.dropout:
            x = layers.Dropout(head.dropout, name=f"head_dropout_{i}")(x)
    # float32 softmax keeps mixed-precision training numerically safe.
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, name="predictions", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_transfer")
    set_trainable(model, arch, freeze_until)
    return model


def parse_scales(text: str | Sequence[int] | None, image_size: int) -> tuple[int, ...]:
    """``"224,320,448"`` -> ``(224, 320, 448)``: distinct sides, none above the input size ``image_size``."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none")):
        return ()
    try:
        scales = tuple(int(s) for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip())
    except ValueError:
        raise ConfigError(f"--scales must be comma-separated pixel sides like 224,320,448. Received: {text!r}") from None
    if len(set(scales)) != len(scales) or any(s < 8 or s > image_size for s in scales):
        raise ConfigError(f"--scales must be distinct sides from 8 to --image-size {image_size}. Received: {text!r}")
    return scales


def _multiscale_features(spec, size: int, scales: Sequence[int], *, weights, alpha: float, pooling: str):
    """``(input, concatenated pooled features)``: one backbone, its layers called once per scale (flat graph)."""
    import keras
    from keras import layers

    base = spec.build(weights=weights, input_shape=(None, None, 3), alpha=alpha)
    trunk = keras.Model(base.inputs, base.get_layer(spec.feature_layer).output)
    inputs = keras.Input((size, size, 3), name="image")
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    if pooling not in ("avg", "max"):
        raise ConfigError(f"pooling must be 'avg' or 'max'. Received: pooling={pooling!r}")
    pooled = []
    for side in scales:
        x = inputs if side == size else layers.Resizing(side, side, antialias=True, name=f"scale_{side}")(inputs)
        # The trunk's layers are called on x directly (no nested model): every layer stays addressable by name.
        feat = trunk._run_through_graph(x, operation_fn=lambda op: op)
        pooled.append(pool(name=f"global_pool_{side}")(feat[0] if isinstance(feat, (list, tuple)) else feat))
    return inputs, layers.Concatenate(name="global_pool")(pooled)


def layer_output(model, name: str, *, spatial: bool = False, purpose: str = "this analysis"):
    """The output tensor of layer ``name``; errors name the layer (and the expected rank when ``spatial``)."""
    from mame_transfer.core.errors import ConfigError

    try:
        out = model.get_layer(name).output
    except ValueError:
        tail = ", ".join(layer.name for layer in model.layers[-8:])
        raise ConfigError(f"model {model.name!r} has no layer {name!r} (last layers: {tail})") from None
    if spatial and len(out.shape) != 4:
        raise ConfigError(f"{purpose} needs a spatial layer; {name!r} has output shape {tuple(out.shape)}")
    return out


def embedding_layer_name(model) -> str:
    """Default embedding layer: the last hidden head layer, else the pooled backbone features."""
    dense = [layer.name for layer in model.layers if layer.name.startswith("head_dense_")]
    return dense[-1] if dense else "global_pool"


def backbone_layers(model) -> list:
    return [layer for layer in model.layers if not is_head_layer(layer.name)]


def frozen_boundary(model, arch: str, freeze_until: str | None) -> int:
    """Index in ``model.layers`` of the last frozen layer (-1 when nothing is frozen).

    ``model.layers`` is topologically ordered, so "up to the last layer of block B" also covers the unnamed
    layers (input, padding) in between and the residual branches of earlier blocks.
    """
    spec = backbones.get(arch)
    freeze_until = spec.resolve_freeze(freeze_until)
    layers = model.layers
    if freeze_until == "none":
        return -1
    if freeze_until == "all":
        return max(i for i, layer in enumerate(layers) if not is_head_layer(layer.name))
    idx = [i for i, layer in enumerate(layers) if spec.block_of(layer.name) == freeze_until]
    if not idx:
        raise ConfigError(f"block {freeze_until!r} has no layer in model {model.name!r}")
    return max(idx)


def set_trainable(model, arch: str, freeze_until: str | None) -> list[str]:
    """Freeze ``freeze_until`` and every earlier block; BatchNormalization always stays frozen.

    Keras 3 runs a non-trainable BatchNormalization in inference mode (moving statistics), which is what
    fine-tuning on small batches needs. Recompile the model after calling this.

    Returns:
        Names of the trainable layers that have weights.
    """
    from keras import layers as klayers

    boundary = frozen_boundary(model, arch, freeze_until)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, klayers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = i > boundary
    return [layer.name for layer in model.layers if layer.trainable and layer.weights]


def trainable_summary(model) -> dict:
    """Counts of trainable / frozen parameters, for the run log."""
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"trainable_params": trainable, "frozen_params": frozen}
