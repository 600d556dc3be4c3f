"""Training-time augmentation with Keras 3's own preprocessing layers, chosen by ``--augmentations``.

A spec is a comma-separated list of ``NAME`` or ``NAME:VALUE``:

==============  ======================  =====================================================================
name            value (default)         layer
==============  ======================  =====================================================================
``flip``        --                      ``RandomFlip("horizontal")``
``rotation``    degrees (10)            ``RandomRotation(±degrees)``, reflected borders, bilinear
``zoom``        fraction (0.2)          ``RandomZoom(±fraction)`` in and out, reflected borders
``randaugment`` magnitude 0..1 (0.5)    ``RandAugment`` (2 random operations per image, value range 0..255)
``mixup``       alpha (0.2)             ``MixUp`` (Zhang et al. 2018): images and labels blended pairwise
``cutmix``      factor (1.0)            ``CutMix`` (Yun et al. 2019): a patch of another image, labels by area
==============  ======================  =====================================================================

The default ``flip,rotation:10`` is the package's former hand-written augmentation (horizontal flip, rotation
up to ±10 degrees with reflected borders). The layers run on float32 0..255 batches, before ``preprocess_input``,
in the order given, except that the label-mixing ones (``mixup``, ``cutmix``) always come last; those turn the
integer labels into soft one-hot vectors (the loss and the accuracy metrics accept both). Each layer is seeded
from the run's seed, and the pipeline applies them one batch after the other, so a seed gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

from mame_transfer.core.errors import ConfigError

DEFAULT = "flip,rotation:10"
OPS = {  # name -> default value (None: takes no value)
    "flip": None,
    "rotation": 10.0,
    "zoom": 0.2,
    "randaugment": 0.5,
    "mixup": 0.2,
    "cutmix": 1.0,
}
LABEL_MIXING = ("mixup", "cutmix")


@dataclass(frozen=True)
class AugOp:
    """One augmentation layer of a spec: its name and its value (see the module table)."""

    name: str
    value: float | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value:g}"


def parse(spec: str | bool | None) -> tuple[AugOp, ...]:
    """``"flip,rotation:10"`` -> the ops, label-mixing ones last; ``True`` -> :data:`DEFAULT`; falsy -> ().

    Raises:
        ConfigError: an unknown name or a bad value, naming it and the valid names.
    """
    if spec is True:
        spec = DEFAULT
    if not spec or str(spec).strip().lower() in ("none", "off"):
        return ()
    ops = []
    for item in str(spec).split(","):
        item = item.strip()
        if not item:
            continue
        name, _, raw = item.partition(":")
        name = name.strip().lower()
        if name not in OPS:
            raise ConfigError(f"unknown augmentation {name!r} in augmentations={spec!r}. "
                              f"Choose from: {', '.join(OPS)} (e.g. 'flip,rotation:10,zoom:0.2')")
        if OPS[name] is None:
            if raw:
                raise ConfigError(f"augmentation {name!r} takes no value. Received: {item!r}")
            ops.append(AugOp(name))
            continue
        try:
            value = float(raw) if raw else OPS[name]
        except ValueError:
            raise ConfigError(f"augmentation {name!r} needs a number after ':'. Received: {item!r}") from None
        limit = 180.0 if name == "rotation" else 1.0 if name in ("zoom", "randaugment", "cutmix") else None
        if value <= 0 or (limit is not None and value > limit):
            bound = f"(0, {limit:g}]" if limit is not None else "> 0"
            raise ConfigError(f"augmentation {name!r} value must be in {bound}. Received: {item!r}")
        ops.append(AugOp(name, value))
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise ConfigError(f"augmentations={spec!r} names a layer twice")
    return tuple(sorted(ops, key=lambda op: op.name in LABEL_MIXING))  # stable: the given order otherwise


def mixes_labels(ops) -> bool:
    """Whether the ops blend labels (MixUp, CutMix): the labels become soft one-hot vectors."""
    if not isinstance(ops, (tuple, list)):
        ops = parse(ops)
    return any(op.name in LABEL_MIXING for op in ops)


def build_layers(ops, seed: int = 0) -> list:
    """The Keras layers of ``ops`` (:func:`parse` output or a spec), each with its own seed."""
    import keras

    if not isinstance(ops, (tuple, list)):
        ops = parse(ops)
    made = []
    for i, op in enumerate(ops):
        s = int(seed) * 100 + i  # distinct, reproducible seeds per layer
        if op.name == "flip":
            layer = keras.layers.RandomFlip("horizontal", seed=s)
        elif op.name == "rotation":
            layer = keras.layers.RandomRotation(op.value / 360.0, fill_mode="reflect", interpolation="bilinear", seed=s)
        elif op.name == "zoom":
            layer = keras.layers.RandomZoom((-op.value, op.value), fill_mode="reflect", interpolation="bilinear",
                                            seed=s)
        elif op.name == "randaugment":
            layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=op.value, seed=s)
        elif op.name == "mixup":
            layer = keras.layers.MixUp(alpha=op.value, seed=s)
        else:
            layer = keras.layers.CutMix(factor=op.value, seed=s)
        made.append((op, layer))
    return made


def apply(images, labels, layers, num_classes: int | None = None):
    """Run a batch through the layers of :func:`build_layers`: ``(images, labels)`` in, the same out.

    Labels stay integer class indices unless a label-mixing layer is present; then they come out as float32
    soft one-hot vectors of ``num_classes``.
    """
    import tensorflow as tf

    for op, layer in layers:
        if op.name in LABEL_MIXING:
            if labels.dtype.is_integer:
                if not num_classes:
                    raise ConfigError(f"augmentation {op.name!r} needs the number of classes (soft labels)")
                labels = tf.one_hot(tf.cast(labels, tf.int32), int(num_classes), dtype=tf.float32)
            out = layer({"images": images, "labels": labels}, training=True)
            images, labels = out["images"], tf.cast(out["labels"], tf.float32)
        else:
            images = layer(images, training=True)
    return tf.cast(images, tf.float32), labels
