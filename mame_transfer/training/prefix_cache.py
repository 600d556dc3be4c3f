"""Frozen-prefix cache: compute the frozen layers once per image, train only the rest of the network.

With ``--freeze-until B`` every layer up to the last layer of block B is frozen (and BatchNormalization runs in
inference mode), so their output for an image never changes while augmentation is off. :func:`find_cut` splits
the flat model at that boundary into a ``prefix`` (input -> boundary tensor) and a ``suffix`` (boundary tensor ->
predictions). Both share the layer objects of the full model, so fitting the suffix trains the full model.
:class:`FeatureCache` holds the prefix outputs (in memory or in ``np.memmap`` ``.npy`` files on disk, float32 or
float16) and :func:`cached_pipeline` feeds them to ``fit``.

With augmentation on, ``augment_copies=K`` stores K augmented views per image and every epoch picks one of them
at random per image; ``augment_copies=0`` makes :func:`plan_phase` fall back to the full network. The reason for
the route taken is returned (and logged by ``finetune``).

Semantics: the cached prefix always runs in inference mode. For backbones whose frozen blocks hold stochastic
layers (EfficientNet's per-block ``Dropout`` "drop connect"), the full-network route applies them during training
and the cached route does not; :attr:`Cut.stochastic_prefix_layers` lists them so the run log says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import write_json
from mame_transfer.training.runs import PREFIX_CACHE_DIR

log = logging.getLogger("mame_transfer")
MODES = ("auto", "off", "memory", "disk")
DTYPES = ("float32", "float16")
# auto: keep the cache in memory when it needs at most this fraction of the available RAM, else on disk.
MEMORY_FRACTION = 0.3
_STOCHASTIC = ("Dropout", "Noise", "Random")


# ------------------------------------------------------------------------------------------------- the cut


@dataclass
class Cut:
    """A split of a flat model into a frozen prefix and a trainable suffix.

    Attributes:
        index: index in ``model.operations`` of the last layer or operation the prefix computes.
        layer_name: that layer's name (its output is the only tensor crossing the cut).
        prefix: ``keras.Model(model.inputs, boundary tensor)``.
        suffix: ``keras.Model(boundary tensor, model.outputs)``; same layer objects as ``model``.
        feature_shape: per-image shape of the boundary tensor.
        stochastic_prefix_layers: names of random layers (Dropout...) in the prefix, inactive in the cached path.
    """

    index: int
    layer_name: str
    prefix: object
    suffix: object
    feature_shape: tuple[int, ...]
    stochastic_prefix_layers: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of the prefix weights and cut: a cache is valid only for the same frozen weights."""
        h = hashlib.sha1(f"{self.layer_name}:{self.feature_shape}".encode())
        for w in self.prefix.weights:
            h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
        return h.hexdigest()[:16]


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history is not None else None


def _graph_nodes(model) -> set[int]:
    """The nodes of ``model``'s own graph: a layer also keeps the nodes of other models built on it (an earlier
    cut's suffix model), which must not count as consumers."""
    return {id(node) for nodes in model._nodes_by_depth.values() for node in nodes}


def _crossing(model, ops: list, k: int, nodes: set[int]) -> list:
    prefix_ids = {id(op) for op in ops[: k + 1]}
    found: dict[int, object] = {}
    for op in ops[k + 1:]:
        for node in op._inbound_nodes:
            if id(node) not in nodes:
                continue
            for tensor in node.input_tensors:
                if id(_producer(tensor)) in prefix_ids:
                    found[id(tensor)] = tensor
    for tensor in model.outputs:
        if id(_producer(tensor)) in prefix_ids:
            found[id(tensor)] = tensor
    return list(found.values())


def crossing_tensors(model, index: int) -> list:
    """Tensors produced by ``model.layers[:index + 1]`` (and the operations between them) and consumed later in
    the model's graph (or a model output)."""
    ops = list(model.operations)
    return _crossing(model, ops, ops.index(model.layers[index]), _graph_nodes(model))


def _is_stochastic(layer) -> bool:
    return any(s in type(layer).__name__ for s in _STOCHASTIC)


def find_cut(model, index: int, *, extend: bool = True):
    """Split ``model`` after ``model.layers[index]``.

    Args:
        model: a flat functional model (``model.build_model``).
        index: last frozen layer (``model.frozen_boundary``).
        extend: move the cut forward over following layers without weights and without randomness (e.g. the
            head's global pooling when the whole backbone is frozen), which shrinks the cached tensors.

    Returns:
        ``(Cut, "")`` or ``(None, reason)`` when no single tensor separates the two parts.
    """
    import keras

    layers = model.layers
    if index < 1:
        return None, "nothing is frozen (no prefix to cache)"
    if index >= len(layers) - 1:
        return None, "every layer is frozen (nothing to train)"
    ops, nodes = list(model.operations), _graph_nodes(model)  # layers and plain operations (x + y), in order
    k = ops.index(layers[index])
    crossing = _crossing(model, ops, k, nodes)
    first = crossing
    # Several tensors may cross at a block's end and merge in the weightless, deterministic operations after it
    # (ConvNeXt's residual x + f(x); the per-scale poolings and their concatenation of a multi-scale model):
    # move the cut over them until one tensor crosses.
    while len(crossing) != 1 and k + 1 < len(ops) - 1 and not getattr(ops[k + 1], "weights", None) \
            and not _is_stochastic(ops[k + 1]):
        k += 1
        crossing = _crossing(model, ops, k, nodes)
    if len(crossing) != 1:
        names = sorted({_producer(t).name for t in first})
        return None, (f"{len(first)} tensors cross the cut after layer {layers[index].name!r} "
                      f"({', '.join(names)}); a single boundary tensor is needed")
    while extend and k + 1 < len(ops) - 1:
        nxt = ops[k + 1]
        if getattr(nxt, "weights", None) or _is_stochastic(nxt):
            break
        ahead = _crossing(model, ops, k + 1, nodes)
        if len(ahead) != 1:
            break
        k, crossing = k + 1, ahead
    tensor = crossing[0]
    producer = _producer(tensor)
    prefix = keras.Model(model.inputs, tensor, name=f"{model.name}_prefix")
    suffix = keras.Model(tensor, model.outputs, name=f"{model.name}_suffix")
    stochastic = [layer.name for layer in prefix.layers if _is_stochastic(layer)]
    shape = tuple(int(d) for d in tensor.shape[1:])
    return Cut(k, producer.name, prefix, suffix, shape, stochastic), ""


# ------------------------------------------------------------------------------------------------- the store


class FeatureCache:
    """Prefix outputs of ``rows`` images, in memory or in a ``.npy`` memory map.

    Args:
        rows: number of stored tensors (images x copies).
        shape: per-image tensor shape.
        dtype: ``float32`` or ``float16`` (half the memory; the suffix computes in its own dtype).
        path: ``.npy`` file for a disk-backed cache; None keeps it in memory.
    """

    def __init__(self, rows: int, shape: tuple[int, ...], dtype: str = "float32", path: str | os.PathLike | None = None):
        if dtype not in DTYPES:
            raise ConfigError(f"cache_dtype must be one of {', '.join(DTYPES)}. Received: cache_dtype={dtype!r}")
        self.rows, self.shape, self.dtype = int(rows), tuple(shape), np.dtype(dtype)
        self.path = Path(path) if path is not None else None
        self.fill_seconds = 0.0
        if self.path is None:
            self.array = np.empty((self.rows, *self.shape), self.dtype)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                   shape=(self.rows, *self.shape))

    @property
    def nbytes(self) -> int:
        return int(self.rows * np.prod(self.shape) * self.dtype.itemsize)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureCache":
        """Reopen a finished disk cache read-only."""
        obj = cls.__new__(cls)
        obj.path = Path(path)
        obj.array = np.load(obj.path, mmap_mode="r")
        obj.rows, obj.shape, obj.dtype = obj.array.shape[0], tuple(obj.array.shape[1:]), obj.array.dtype
        obj.fill_seconds = 0.0
        return obj

    def fill(self, fn: Callable, batches, *, start: int = 0) -> int:
        """Write ``fn(batch)`` for each image batch of ``batches`` from row ``start``; returns the next row."""
        t0 = time.perf_counter()
        row = start
        for batch in batches:
            out = np.asarray(fn(batch))
            self.array[row: row + len(out)] = out.astype(self.dtype, copy=False)
            row += len(out)
        if isinstance(self.array, np.memmap):
            self.array.flush()
        self.fill_seconds += time.perf_counter() - t0
        return row

    def close(self) -> None:
        self.array = None


def prefix_function(cut: Cut, *, jit_compile: bool = False):
    """A compiled ``images -> boundary tensor`` function (inference mode)."""
    import tensorflow as tf

    prefix = cut.prefix

    @tf.function(jit_compile=bool(jit_compile), reduce_retracing=True)
    def run(x):
        return prefix(x, training=False)

    return run


def cached_pipeline(cache: FeatureCache, labels: np.ndarray, *, batch_size: int, shuffle: bool = False, seed: int = 0,
                    copies: int = 1, dtype: str = "float32", rows: np.ndarray | None = None):
    """A ``tf.data`` pipeline of ``(boundary tensors, labels)`` read from ``cache``.

    With ``copies`` > 1 the cache holds ``copies`` blocks of equal length (one augmented view of every image each)
    and every epoch draws one view per image at random. ``rows`` maps image ``i`` (``labels[i]``) to its row in
    each block, for a cache shared by several runs (:func:`build_phase` with a pool); default: row ``i``.
    """
    import tensorflow as tf

    labels = np.asarray(labels, np.int32)
    n = len(labels)
    block = cache.rows // copies if rows is not None else n
    if cache.rows != block * copies or (rows is None and cache.rows != n * copies):
        raise ConfigError(f"cache holds {cache.rows} rows, expected {n} images x {copies} copies")
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if len(rows) != n or (n and (rows.min() < 0 or rows.max() >= block)):
        raise ConfigError(f"cache rows do not match: {len(rows)} rows for {n} labels in blocks of {block}")
    array = cache.array
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if copies > 1:
        views = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, views)).map(lambda i, r: i + n * (r % copies))
    ds = ds.batch(batch_size)

    def gather(idx):
        image = idx % n
        order = np.argsort(rows[image] + block * (idx // n), kind="stable")  # memmaps read fastest in order
        x = np.empty((len(idx), *cache.shape), array.dtype)
        x[order] = array[(rows[image] + block * (idx // n))[order]]
        return x, labels[image]

    out_dtype = tf.as_dtype(cache.dtype.name)

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], (out_dtype, tf.int32), stateful=False)
        x.set_shape((None, *cache.shape))
        y.set_shape((None,))
        return tf.cast(x, dtype), y

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------------- planning


def available_memory() -> int:
    """Bytes of RAM available now (psutil when installed, else /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


@dataclass
class Plan:
    """What a training phase runs on: ``route`` is ``cached-memory``, ``cached-disk`` or ``full``, with the reason."""

    route: str
    reason: str
    cut: Cut | None = None
    copies: int = 1


def plan_phase(model, boundary: int, *, mode: str, n_train: int, n_val: int, augment: bool, augment_copies: int,
               epochs: int, dtype: str = "float32", disk_dir: str | os.PathLike | None = None) -> Plan:
    """Decide whether a phase trains on cached prefix outputs, and where they live.

    Args:
        model: the flat model, already frozen up to ``boundary``.
        boundary: index of the last frozen layer.
        mode: ``auto`` | ``off`` | ``memory`` | ``disk``.
        n_train, n_val: images per split.
        augment: the training augmentation (a spec of :mod:`mame_transfer.datasets.augment`, True, or False).
        augment_copies: augmented views kept per image (0 = full network when augmenting).
        epochs: epochs this phase runs (auto skips the cache when filling it costs as much as the epochs).
        dtype: stored dtype.
        disk_dir: folder for a disk cache.
    """
    if mode not in MODES:
        raise ConfigError(f"prefix_cache must be one of {', '.join(MODES)}. Received: prefix_cache={mode!r}")
    if mode == "off":
        return Plan("full", "--prefix-cache off")
    copies = 1
    if augment:
        from mame_transfer.datasets.augment import mixes_labels

        if mixes_labels(augment):
            return Plan("full", f"--augmentations {augment} mixes images and labels (cannot be cached per image)")
        if augment_copies <= 0:
            return Plan("full", "augmentation is on and --augment-copies is 0 (cached tensors cannot be augmented)")
        copies = int(augment_copies)
        if mode == "auto" and copies >= epochs:
            return Plan("full", f"--augment-copies {copies} >= {epochs} epoch(s) of this phase: filling the cache "
                                f"would cost as many prefix passes as training on the full network")
    cut, why = find_cut(model, boundary)
    if cut is None:
        return Plan("full", why)
    itemsize = np.dtype(dtype).itemsize
    need = int(np.prod(cut.feature_shape)) * itemsize * (n_train * copies + n_val)
    if mode == "memory":
        where = "memory"
    elif mode == "disk":
        where = "disk"
    else:
        avail = available_memory()
        if need <= MEMORY_FRACTION * avail:
            where = "memory"
        else:
            free = shutil.disk_usage(disk_dir or ".").free if disk_dir else 0
            if need > 0.8 * free:
                return Plan("full", f"the cache needs {need / 2**30:.1f} GiB: more than {MEMORY_FRACTION:.0%} of the "
                                    f"available RAM ({avail / 2**30:.1f} GiB) and of the free disk")
            where = "disk"
    views = f", {copies} augmented view(s) per image" if augment else ""
    reason = (f"layers up to {cut.layer_name!r} are frozen: their output {cut.feature_shape} is computed once per "
              f"image ({need / 2**20:.0f} MiB {dtype} in {where}{views})")
    if cut.stochastic_prefix_layers:
        reason += (f"; {len(cut.stochastic_prefix_layers)} random layer(s) of the frozen prefix "
                   f"({cut.stochastic_prefix_layers[0]}...) run in inference mode")
    return Plan(f"cached-{where}", reason, cut, copies)


class CachedPhase:
    """The suffix model and cached train/val pipelines for one phase (built by :func:`build_phase`)."""

    def __init__(self, plan: Plan, train_ds, val_ds, caches: list[FeatureCache], fill_seconds: float):
        self.plan, self.train_ds, self.val_ds = plan, train_ds, val_ds
        self.model = plan.cut.suffix
        self.caches = caches
        self.fill_seconds = fill_seconds

    def close(self) -> None:
        for c in self.caches:
            c.close()


def fill_split(cut: Cut, fn, make_images: Callable, n: int, copies: int, dtype: str, path: Path | None,
                key: dict) -> FeatureCache:
    """Compute (or reopen, when a complete disk cache with the same key exists) one split's cache."""
    marker = path.with_suffix(".json") if path is not None else None
    if marker is not None and marker.is_file() and path.is_file():
        try:
            if json.loads(marker.read_text()) == key:
                cache = FeatureCache.open(path)
                log.info("prefix cache: reusing %s", path)
                return cache
        except (ValueError, OSError):
            pass
    if marker is not None:
        marker.unlink(missing_ok=True)
    cache = FeatureCache(n * copies, cut.feature_shape, dtype, path)
    row = 0
    for k in range(copies):
        row = cache.fill(fn, make_images(k), start=row)  # copy k: its own augmentation seed
    if row != cache.rows:
        raise ConfigError(f"prefix cache filled {row} rows, expected {cache.rows}")
    if marker is not None:
        write_json(marker, key)
    return cache


def build_phase(plan: Plan, *, train_table, val_table, image_size: int, preprocess, batch_size: int, seed: int,
                augment: bool, dtype: str = "float32", cache_dir: str | os.PathLike | None = None,
                jit_compile: bool = False, steps_repeat: bool = False) -> CachedPhase:
    """Fill the caches a cached plan needs and return the suffix model with its pipelines."""
    from mame_transfer.datasets.pipeline import make_pipeline

    cut = plan.cut
    fn = prefix_function(cut, jit_compile=jit_compile)
    disk = plan.route == "cached-disk"
    if disk and cache_dir is None:
        raise ConfigError("a disk prefix cache needs a folder (the run's .partial dir)")
    stamp = cut.fingerprint()
    base = dict(layer=cut.layer_name, shape=list(cut.feature_shape), dtype=dtype, image_size=image_size, weights=stamp)
    t0 = time.perf_counter()

    def images(table, aug):
        return lambda k=0: make_pipeline(table, image_size=image_size, preprocess=preprocess,
                                         batch_size=batch_size, training=False, shuffle=False, augment=aug,
                                         seed=seed + 7919 * k, with_labels=False)

    folder = Path(cache_dir) / PREFIX_CACHE_DIR if disk else None
    train_key = dict(base, split="train", n=len(train_table), copies=plan.copies, augment=augment, seed=seed,
                     files=table_hash(train_table))
    val_key = dict(base, split="val", n=len(val_table), files=table_hash(val_table))
    name = f"{cut.layer_name}-{stamp}-{image_size}px"  # one file per input size (a search may vary it)
    train_cache = fill_split(cut, fn, images(train_table, augment), len(train_table), plan.copies, dtype,
                              folder / f"{name}-train.npy" if disk else None, train_key)
    val_cache = fill_split(cut, fn, images(val_table, False), len(val_table), 1, dtype,
                            folder / f"{name}-val.npy" if disk else None, val_key)
    fill = time.perf_counter() - t0
    in_dtype = cut.suffix.inputs[0].dtype
    train_ds = cached_pipeline(train_cache, train_table["label_index"].to_numpy(), batch_size=batch_size,
                               shuffle=True, seed=seed, copies=plan.copies, dtype=in_dtype)
    if steps_repeat:
        train_ds = train_ds.repeat()
    val_ds = cached_pipeline(val_cache, val_table["label_index"].to_numpy(), batch_size=batch_size, dtype=in_dtype)
    return CachedPhase(plan, train_ds, val_ds, [train_cache, val_cache], fill)


def table_hash(table) -> str:
    return hashlib.sha1("\n".join(table["path"].astype(str)).encode()).hexdigest()[:16]
