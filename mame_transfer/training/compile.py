"""What ``finetune`` and ``tune`` share to train a model: optimizer, loss, metrics, strategy, callbacks."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np

from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError

log = logging.getLogger("mame_transfer")


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """``balanced``: n / (k * count_c), the weighting of scikit-learn; classes absent from train get 1."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 1.0)
    return {i: float(w) for i, w in enumerate(weights)}


def make_optimizer(config: TrainConfig, *, total_steps: int | None = None):
    """Adam, AdamW or SGD (Nesterov) at ``config.lr``, with a cosine decay over ``total_steps`` if asked."""
    import keras

    lr: object = config.lr
    if config.schedule == "cosine" and total_steps:
        lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=max(1, total_steps), alpha=0.01)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay or None)


def compile_model(model, config: TrainConfig, num_classes: int, *, total_steps: int | None = None):
    """Compile with the config's optimizer (per-block learning rates with ``block_lr``), loss and metrics."""
    import keras

    optimizer = make_optimizer(config, total_steps=total_steps)
    if config.block_lr:  # Lagunas & Garces: one learning rate per block group
        from mame_transfer.training.methods import block_optimizer

        optimizer = block_optimizer(model, config.arch, config.block_lr, config.lr, lambda lr: make_optimizer(
            dataclasses.replace(config, lr=lr, block_lr=None), total_steps=total_steps))
    if soft_labels(config):  # MixUp / CutMix: soft training labels, integer val labels
        loss = _SmoothedSparseCE(config.label_smoothing, num_classes)
        metrics = [keras.metrics.MeanMetricWrapper(_accuracy, name="accuracy")]
        if num_classes > 5:  # with 5 classes or fewer every image is in its top 5
            metrics.append(keras.metrics.MeanMetricWrapper(_top_k(5), name="top5"))
    else:
        loss = keras.losses.SparseCategoricalCrossentropy() if not config.label_smoothing else \
            _SmoothedSparseCE(config.label_smoothing, num_classes)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if num_classes > 5:  # with 5 classes or fewer every image is in its top 5
            metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"))
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        jit_compile=True if config.jit_compile else "auto",  # auto: XLA on GPU, not on CPU
    )
    return model


def soft_labels(config: TrainConfig) -> bool:
    """Whether training labels are soft one-hot vectors (label-mixing augmentations are on)."""
    from mame_transfer.datasets.augment import mixes_labels

    return bool(config.augment) and mixes_labels(config.augmentations)


def _class_indices(y_true, num_classes: int):
    """Integer labels from integer or one-hot / soft labels (the argmax)."""
    from keras import ops

    if len(y_true.shape) == 2 and y_true.shape[-1] == num_classes and num_classes > 1:
        return ops.argmax(y_true, axis=-1)
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def _accuracy(y_true, y_pred):
    from keras import ops

    return ops.cast(ops.equal(_class_indices(y_true, y_pred.shape[-1]), ops.argmax(y_pred, axis=-1)), "float32")


def _top_k(k: int):
    def top_k(y_true, y_pred):
        from keras import ops

        labels = ops.cast(_class_indices(y_true, y_pred.shape[-1]), "int32")
        return ops.cast(ops.in_top_k(labels, y_pred, k), "float32")

    top_k.__name__ = f"top{k}"
    return top_k


class _SmoothedSparseCE:
    """Cross-entropy with label smoothing on integer labels (Keras's sparse loss has no ``label_smoothing``) or on
    soft one-hot labels (MixUp, CutMix), whichever a batch holds."""

    def __init__(self, smoothing: float, num_classes: int):
        import keras

        self._loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
        self.num_classes = num_classes
        self.__name__ = "smoothed_sparse_categorical_crossentropy"

    def __call__(self, y_true, y_pred, sample_weight=None):
        from keras import ops

        if not (len(y_true.shape) == 2 and y_true.shape[-1] == self.num_classes and self.num_classes > 1):
            y_true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
        return self._loss(y_true, y_pred, sample_weight=sample_weight)


def schedule_callbacks(config: TrainConfig, *, monitor: str = "val_accuracy") -> dict:
    """Early stopping on ``monitor`` and ReduceLROnPlateau on val loss, as the config asks (by name)."""
    import keras

    out = {}
    if config.early_stopping:
        out["early_stopping"] = keras.callbacks.EarlyStopping(monitor=monitor, mode="max",
                                                              patience=config.early_stopping)
    if config.schedule == "plateau":
        out["plateau"] = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.plateau_factor,
                                                           patience=config.plateau_patience, min_lr=1e-7)
    return out


TENSORBOARD_HINT = "pip install 'mame_transfer[tensorboard]'"


def require_tensorboard(flag: str = "--tensorboard") -> None:
    """Fail before any training when TensorBoard (an optional extra) is not installed."""
    import importlib.util

    from mame_transfer.core.errors import ConfigError

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"{flag} writes TensorBoard logs, but the tensorboard package is not installed. "
                          f"Install it with: {TENSORBOARD_HINT} (or leave out {flag})")


def tensorboard_callback(log_dir):
    """Keras's TensorBoard callback writing epoch scalars (loss, metrics, learning rate) to ``log_dir``."""
    import keras

    require_tensorboard()
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False,
                                       update_freq="epoch")


def make_strategy(name: str):
    """``mirrored``: a ``tf.distribute.MirroredStrategy`` over every local GPU (or logical CPU device); else None."""
    if name == "multiworker":
        raise ConfigError("--strategy multiworker is trained by mame_transfer.training.multiworker.train_multiworker "
                          "(python -m mame_transfer.finetune runs it), not by model.fit")
    if name != "mirrored":
        return None
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy()
    log.info("MirroredStrategy over %d device(s): %s", strategy.num_replicas_in_sync,
             ", ".join(strategy.extended.worker_devices))
    return strategy


def strategy_scope(strategy):
    """Build and compile under the strategy's scope, so weights and optimizer variables are mirrored."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()
