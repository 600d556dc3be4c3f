"""Which route a training phase takes: the full network, or the frozen-prefix cache (private, or shared by folds).

:func:`phase_inputs` is what the trainer asks once per phase. The cache itself is
:mod:`mame_transfer.training.prefix_cache`; this module adds the *pooled* cache of a cross-validation: the
prefix outputs of every train+val image (its plain view and, when augmenting, its ``--augment-copies`` augmented
views) are computed once, on disk in the cross-validation's folder, and each fold reads the rows of its own train,
holdout and val images from them. K folds then cost one prefix pass instead of K.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from mame_transfer.core.errors import ConfigError
from mame_transfer.training.prefix_cache import (
    CachedPhase,
    Plan,
    build_phase,
    cached_pipeline,
    fill_split,
    plan_phase,
    prefix_function,
    table_hash,
)
from mame_transfer.training.runs import PREFIX_CACHE_DIR


def _rows_in(index: dict, table) -> np.ndarray:
    paths = table["path"].astype(str)
    missing = [p for p in paths if p not in index]
    if missing:
        raise ConfigError(f"{len(missing)} image(s) of this run are not in the shared prefix-cache pool, e.g. "
                          f"{missing[0]}")
    return np.asarray([index[p] for p in paths], dtype=np.int64)


def build_pooled_phase(plan: Plan, *, pool_table, folder, train_table, val_table, image_size: int, preprocess,
                       batch_size: int, seed: int, augment, dtype: str = "float32", jit_compile: bool = False,
                       steps_repeat: bool = False) -> CachedPhase:
    """Like :func:`~mame_transfer.training.prefix_cache.build_phase`, over the caches of ``pool_table`` in
    ``folder`` (computed by the first run that needs them, reused by the next ones)."""
    from mame_transfer.datasets.pipeline import make_pipeline

    cut = plan.cut
    fn = prefix_function(cut, jit_compile=jit_compile)
    stamp = cut.fingerprint()
    files = table_hash(pool_table)
    key = dict(layer=cut.layer_name, shape=list(cut.feature_shape), dtype=dtype, image_size=image_size,
               weights=stamp, split="pool", n=len(pool_table), files=files)
    name = Path(folder) / PREFIX_CACHE_DIR / f"{cut.layer_name}-{stamp}-{image_size}px-pool-{files[:8]}"
    t0 = time.perf_counter()

    def images(aug):
        return lambda k=0: make_pipeline(pool_table, image_size=image_size, preprocess=preprocess,
                                         batch_size=batch_size, training=False, shuffle=False, augment=aug,
                                         seed=seed + 7919 * k, with_labels=False)

    plain = fill_split(cut, fn, images(False), len(pool_table), 1, dtype, name.with_name(name.name + "-plain.npy"),
                       key)
    caches, train_cache, copies = [plain], plain, 1
    if augment:
        copies = plan.copies
        aug_key = dict(key, copies=copies, augment=augment, seed=seed)
        views = hashlib.sha1(json.dumps([augment, copies, seed]).encode()).hexdigest()[:8]  # one file per choice
        train_cache = fill_split(cut, fn, images(augment), len(pool_table), copies, dtype,
                                 name.with_name(f"{name.name}-augmented-{views}.npy"), aug_key)
        caches.append(train_cache)
    index = {path: i for i, path in enumerate(pool_table["path"].astype(str))}
    in_dtype = cut.suffix.inputs[0].dtype
    train_ds = cached_pipeline(train_cache, train_table["label_index"].to_numpy(), batch_size=batch_size,
                               shuffle=True, seed=seed, copies=copies, dtype=in_dtype, rows=_rows_in(index, train_table))
    if steps_repeat:
        train_ds = train_ds.repeat()
    val_ds = cached_pipeline(plain, val_table["label_index"].to_numpy(), batch_size=batch_size, dtype=in_dtype,
                             rows=_rows_in(index, val_table))
    return CachedPhase(plan, train_ds, val_ds, caches, time.perf_counter() - t0)


def phase_inputs(net, config, freeze: str, train_table, val_table, work_dir, train_ds, val_ds, *, epochs: int,
                 pool=None):
    """What ``finetune`` fits in one phase: ``(model, train pipeline, val pipeline, route description)``.

    Returns the full network and the image pipelines unchanged when the cache does not apply; the description
    says which route runs and why (it goes to the run log). ``pool``: ``(table, folder)`` of a cache shared with
    other runs (:func:`build_pooled_phase`); used unless ``--prefix-cache memory`` asks for a private one.
    """
    from mame_transfer.models import backbones
    from mame_transfer.models import build as model_mod
    from mame_transfer.training.phases import augment_spec

    if config.shape != "fixed":
        return net, train_ds, val_ds, "full network (--shape variable: image sizes differ between batches)"
    boundary = model_mod.frozen_boundary(net, config.arch, freeze)
    augment = augment_spec(config)
    plan = plan_phase(net, boundary, mode=config.prefix_cache, n_train=len(train_table), n_val=len(val_table),
                      augment=augment, augment_copies=config.augment_copies, epochs=epochs,
                      dtype=config.prefix_cache_dtype, disk_dir=work_dir)
    if plan.route == "full":
        return net, train_ds, val_ds, f"full network ({plan.reason})"
    common = dict(train_table=train_table, val_table=val_table, image_size=config.image_size,
                  preprocess=backbones.get(config.arch).preprocess, batch_size=config.batch_size, seed=config.seed,
                  augment=augment, dtype=config.prefix_cache_dtype, jit_compile=config.jit_compile,
                  steps_repeat=bool(config.steps_per_epoch))
    if pool is not None and config.prefix_cache != "memory":
        plan.route, plan.reason = "cached-disk", plan.reason.replace(" in memory", " on disk") + \
            f"; shared by every fold: {len(pool[0])} images"
        phase = build_pooled_phase(plan, pool_table=pool[0], folder=pool[1], **common)
    else:
        phase = build_phase(plan, cache_dir=work_dir, **common)
    return phase.model, phase.train_ds, phase.val_ds, (f"{plan.route} prefix cache ({plan.reason}; filled in "
                                                       f"{phase.fill_seconds:.1f} s)")
