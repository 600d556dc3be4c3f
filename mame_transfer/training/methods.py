"""Published transfer methods as options: per-block learning rates, re-initialised low blocks, double fine-tuning.

* Adaptive layer-based optimisation (Lagunas & Garces 2018, "Transfer learning for illustration
  classification"): ``--reinit-until BLOCK`` gives the layers of that block and every earlier one fresh
  initial weights; ``--block-lr "block1-block3:1e-2,block4-block5:1e-4,head:1e-2"`` gives each group of blocks its
  own learning rate through ``keras.optimizers.MultiOptimizer`` (one inner optimizer per group, variables
  routed by path). ``ReduceLROnPlateau`` scales every inner optimizer by the same factor, so the ratios hold.
* Double fine-tuning (Gonthier, Gousseau & Ladjal 2020, "An analysis of the transfer learning of convolutional
  neural networks for artistic images"): ``--init-from
  saved_models/<run>`` copies the backbone weights of a finished run; the head is always new (the label set
  may differ).

Multi-patch scoring and flip test-time augmentation live in :mod:`mame_transfer.inference.tta`, the variable-shape
pipeline in :mod:`mame_transfer.datasets.varshape`, ensembles in :mod:`mame_transfer.training.evaluation`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

from mame_transfer.core.errors import ConfigError
from mame_transfer.models import backbones
from mame_transfer.training import runs

log = logging.getLogger("mame_transfer")
HEAD_GROUP = "head"


# ------------------------------------------------------------------------------------- per-block learning rates


def parse_block_lr(text: str, block_names: Sequence[str]) -> list[tuple[tuple[str, ...], float]]:
    """Parse ``"block1-block3:1e-2,block4:1e-4,head:1e-2"`` into ``[(blocks, lr), ...]``.

    A range ``a-b`` covers every block from ``a`` to ``b`` in backbone order; ``head`` is the new head (plus,
    for ``--keep-top``, the kept ImageNet FC layers).

    Raises:
        ConfigError: unknown block, reversed range, bad number, or a block given twice.
    """
    order = list(block_names)
    groups: list[tuple[tuple[str, ...], float]] = []
    seen: dict[str, str] = {}
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        if ":" not in item:
            raise ConfigError(f"--block-lr entries look like 'block1-block3:1e-2'. Received: {item!r} in {text!r}")
        names, _, value = item.rpartition(":")
        try:
            lr = float(value)
        except ValueError:
            raise ConfigError(f"--block-lr: {value!r} in {item!r} is not a number") from None
        if not (lr >= 0 and math.isfinite(lr)):
            raise ConfigError(f"--block-lr: learning rates must be finite numbers >= 0. Received: {item!r}")
        names = names.strip()
        if names == HEAD_GROUP:
            blocks: tuple[str, ...] = (HEAD_GROUP,)
        else:
            first, _, last = names.partition("-")
            last = last or first
            for name in (first, last):
                if name not in order:
                    raise ConfigError(f"--block-lr: unknown block {name!r} in {item!r}. Valid blocks, first to last: "
                                      f"{', '.join(order)}, and 'head'")
            i, j = order.index(first), order.index(last)
            if j < i:
                raise ConfigError(f"--block-lr: range {names!r} runs backwards ({last} comes before {first})")
            blocks = tuple(order[i:j + 1])
        for b in blocks:
            if b in seen:
                raise ConfigError(f"--block-lr: block {b!r} is in both {seen[b]!r} and {item!r}")
            seen[b] = item
        groups.append((blocks, lr))
    if not groups:
        raise ConfigError(f"--block-lr is empty. Received: {text!r}")
    return groups


def layer_learning_rates(model, arch: str, text: str) -> dict[str, float]:
    """Layer name -> learning rate for every layer with weights that a ``--block-lr`` group covers."""
    from mame_transfer.models.build import is_head_layer

    spec = backbones.get(arch)
    lr_of = {b: lr for blocks, lr in parse_block_lr(text, spec.block_names) for b in blocks}
    out = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        group = HEAD_GROUP if is_head_layer(layer.name) or layer.name in spec.top_layers else spec.block_of(layer.name)
        if group in lr_of:
            out[layer.name] = lr_of[group]
    return out


def block_optimizer(model, arch: str, text: str, base_lr: float, factory: Callable[[float], object]):
    """A ``keras.optimizers.MultiOptimizer``: one ``factory(lr)`` optimizer per distinct learning rate.

    Layers not named by any group train at ``base_lr`` (the default optimizer).

    Args:
        model: the flat model (layer names address the blocks).
        arch: registry name, for the block of each layer.
        text: the ``--block-lr`` value.
        base_lr: learning rate of the layers no group covers (``--lr``).
        factory: builds one optimizer for a learning rate (same kind, momentum, schedule as ``--optimizer``).
    """
    import re

    import keras

    by_lr: dict[float, list[str]] = {}
    for name, lr in layer_learning_rates(model, arch, text).items():
        by_lr.setdefault(lr, []).append(name)
    default = factory(base_lr)
    default.name = "lr_base"
    table = keras.optimizers.OptimizerMap(default_optimizer=default)
    for lr, names in by_lr.items():
        if lr == base_lr:
            continue
        opt = factory(lr)
        opt.name = f"lr_{lr:g}"  # history.csv columns read learning_rate_lr_<value>
        # Variable paths are "<layer name>/<variable name>" in a flat model.
        table["(?:" + "|".join(re.escape(n) for n in names) + ")/.*"] = opt
    log.info("per-block learning rates: %s (other layers %g)",
             ", ".join(f"{len(n)} layers at {lr:g}" for lr, n in by_lr.items()), base_lr)
    return keras.optimizers.MultiOptimizer(table, name="block_lr")


def group_learning_rates(optimizer) -> list[float]:
    """Current learning rate of each inner optimizer of a MultiOptimizer (or ``[lr]`` of a plain one)."""
    import numpy as np

    opts = getattr(optimizer, "optimizers", None) or [optimizer]
    return [float(np.asarray(o.learning_rate)) for o in opts]


# ------------------------------------------------------------------------------------- re-initialisation


def blocks_until(arch: str, block: str | None) -> list[str]:
    """``block`` and every earlier block (``none``/None -> [])."""
    if block is None or str(block).lower() in ("none", ""):
        return []
    spec = backbones.get(arch)
    spec.check_block(block)
    names = spec.block_names
    return names[: names.index(block) + 1]


def _initializer_attrs(variable_name: str) -> list[str]:
    """Layer attributes that may hold a variable's initializer (DepthwiseConv2D keeps its ``kernel`` under
    ``depthwise_initializer``; SeparableConv2D names its kernels ``depthwise_kernel`` / ``pointwise_kernel``)."""
    base = variable_name.replace("_kernel", "")
    return [f"{variable_name}_initializer", f"{base}_initializer", "depthwise_initializer"] \
        if variable_name == "kernel" else [f"{variable_name}_initializer", f"{base}_initializer"]


def reinit_until(model, arch: str, block: str | None, *, seed: int = 0) -> list[str]:
    """Give every weight of ``block`` and the earlier blocks a fresh value from its layer's own initializer.

    Kernels and biases (and BatchNormalization gamma/beta/moving statistics) are redrawn with the initializer the
    layer was built with, e.g. ``glorot_uniform`` / ``zeros``, as if the layer were new.

    Returns:
        Names of the re-initialised layers.
    """
    import keras

    blocks = set(blocks_until(arch, block))
    if not blocks:
        return []
    spec = backbones.get(arch)
    done = []
    for li, layer in enumerate(model.layers):
        if spec.block_of(layer.name) not in blocks or not layer.weights:
            continue
        for vi, var in enumerate(layer.weights):
            init = next((getattr(layer, a) for a in _initializer_attrs(var.name) if getattr(layer, a, None)), None)
            if init is None:
                raise ConfigError(f"cannot re-initialise {layer.name}/{var.name}: the layer has no "
                                  f"{var.name}_initializer")
            init = keras.initializers.get(init)
            conf = init.get_config()
            if "seed" in conf:  # a distinct, reproducible draw per variable
                init = init.__class__.from_config({**conf, "seed": seed * 100003 + li * 101 + vi})
            var.assign(keras.ops.cast(init(tuple(var.shape), dtype=var.dtype), var.dtype))
        done.append(layer.name)
    log.info("re-initialised %d layers of blocks %s", len(done), ", ".join(sorted(blocks, key=spec.block_names.index)))
    return done


# ------------------------------------------------------------------------------------- double fine-tuning


def init_from_run(model, run_dir: str | Path, *, arch: str, alpha: float = 1.0) -> list[str]:
    """Copy the backbone weights of a finished run into ``model``; the head stays freshly initialised.

    Raises:
        ConfigError: the run is not finished, was trained with another architecture / width, or a layer's
            weights do not fit.
    """
    from mame_transfer.models.build import is_head_layer

    run_dir = Path(run_dir)
    source, src_config, classes = runs.load_run(run_dir)
    if backbones.get(src_config.arch).name != backbones.get(arch).name or \
            (backbones.get(arch).accepts_alpha and float(src_config.alpha) != float(alpha)):
        raise ConfigError(f"--init-from {run_dir}: that run is arch={src_config.arch} alpha={src_config.alpha}; this "
                          f"run is arch={arch} alpha={alpha}. Use the same --arch/--alpha as the source run.")
    copied = []
    for layer in model.layers:
        if is_head_layer(layer.name) or not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            raise ConfigError(f"--init-from {run_dir}: layer {layer.name!r} is missing from the source model") from None
        src_w = src.get_weights()
        if [w.shape for w in src_w] != [tuple(v.shape) for v in layer.weights]:
            raise ConfigError(f"--init-from {run_dir}: layer {layer.name!r} has weights of shapes "
                              f"{[w.shape for w in src_w]} in the source run, {[tuple(v.shape) for v in layer.weights]} here")
        layer.set_weights(src_w)
        copied.append(layer.name)
    log.info("initialised %d backbone layers from %s (source classes: %d); new head", len(copied), run_dir, len(classes))
    return copied


# ------------------------------------------------------------------------------------- config checks


def check_config(config) -> None:
    """Cross-field checks of the method options on a resolved :class:`~mame_transfer.core.config.TrainConfig`."""
    spec = backbones.get(config.arch)
    if config.block_lr:
        parse_block_lr(config.block_lr, spec.block_names)
    reinit = config.reinit_until
    if reinit and str(reinit).lower() != "none":
        reinit_blocks = blocks_until(config.arch, reinit)
        freeze = str(config.freeze_until).lower()
        if freeze == "all" or (freeze != "none" and spec.block_names.index(config.freeze_until)
                               >= spec.block_names.index(reinit_blocks[-1])):
            raise ConfigError(f"--reinit-until {reinit} re-initialises blocks that --freeze-until {config.freeze_until} "
                              f"keeps frozen: they would stay random. Freeze fewer blocks (e.g. --freeze-until none).")
    if config.init_from:
        try:
            runs.check_finished(config.init_from)
        except ConfigError as exc:
            raise ConfigError(f"--init-from {config.init_from}: {exc}") from None
    if config.keep_top and "fc1" not in spec.top_layers:
        raise ConfigError(f"--keep-top keeps the ImageNet FC6/FC7 layers (fc1, fc2) of VGG; {config.arch} has none. "
                          f"Use --arch vgg16 or vgg19.")
