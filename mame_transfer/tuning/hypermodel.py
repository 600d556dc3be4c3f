"""What one trial trains: the KerasTuner hypermodel over a TrainConfig, and the search's train/val inputs.

Two routes (recorded per trial as ``route``):

* ``full-network``: every trial trains the model of :func:`mame_transfer.models.build.build_model` on the image
  pipelines, exactly as ``finetune`` would;
* ``cached-features``: with the backbone frozen whole (``base.freeze_until: all``), the frozen prefix is computed
  once per image by the prefix cache (:mod:`mame_transfer.training.prefix_cache`, cut after ``global_pool``,
  on disk in the tuning folder so a resumed search reuses it) and each trial trains only the suffix (the head)
  on those tensors. Augmentation is off on this route.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.tuning.space import SearchSpec, declare, trial_config

log = logging.getLogger("mame_transfer")
CACHED, FULL = "cached-features", "full-network"
TRIAL_INFO = "mame_trial.json"


def uses_cached_features(spec: SearchSpec) -> bool:
    """Whether trials train the head on cached prefix outputs instead of the images."""
    frozen_whole = spec.base.get("freeze_until") == "all" and "freeze_until" not in spec.space
    if spec.tuner.features == "on" and not frozen_whole:
        raise ConfigError(f"{spec.source}: tuner.features on needs base.freeze_until: all and freeze_until out of the "
                          f"space (the backbone must be frozen whole)")
    return frozen_whole and spec.tuner.features != "off"


def _macro_f1_callback(val_x, val_y, batch_size: int):
    import keras

    from mame_transfer.inference.metrics import compute_metrics

    class MacroF1(keras.callbacks.Callback):
        """Adds ``val_macro_f1`` to the epoch logs (before the tuner's callbacks read them)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            proba = self.model.predict(val_x, batch_size=batch_size, verbose=0)
            classes = [str(i) for i in range(proba.shape[1])]
            logs["val_macro_f1"] = float(compute_metrics(val_y, proba, classes, ci=False)["macro_f1"])

    return MacroF1()


class SearchData:
    """Train/val inputs of a search: image pipelines, or prefix-cache tensors computed once for all trials."""

    def __init__(self, spec: SearchSpec, folder: Path, overrides: dict, *, dataset=None):
        from mame_transfer.training.runs import dataset_for

        self.spec = spec
        self.base = trial_config(spec, {}, **overrides)
        self.dataset = dataset if dataset is not None else dataset_for(self.base)
        self.train_t, self.val_t = self.dataset.split("train"), self.dataset.split("val")
        self.num_classes = len(self.dataset.classes)
        self.train_labels = self.train_t["label_index"].to_numpy()
        self.val_labels = self.val_t["label_index"].to_numpy()
        self.cached = uses_cached_features(spec)
        self.folder = Path(folder)
        self.caches: dict[int, list] = {}  # image size -> train and val caches (image_size may be searched)
        if self.cached:
            self.caches_for(self.base.image_size)

    @property
    def route(self) -> str:
        return CACHED if self.cached else FULL

    def steps(self, batch_size: int, limit: int | None) -> int:
        return limit or int(math.ceil(len(self.train_t) / batch_size))

    def caches_for(self, image_size: int):
        """The train and val caches at ``image_size``, filled on first use."""
        if image_size not in self.caches:
            self.caches[image_size] = self._fill_prefix_cache(self.folder, image_size)
        return self.caches[image_size]

    def _fill_prefix_cache(self, folder: Path, image_size: int):
        """Outputs of the frozen backbone for train and val (reused from ``folder`` when already computed)."""
        import dataclasses

        from mame_transfer.models import backbones
        from mame_transfer.models.build import build_model, frozen_boundary
        from mame_transfer.training import prefix_cache

        b = dataclasses.replace(self.base, image_size=image_size)
        net = build_model(b.arch, max(2, self.num_classes), image_size=b.image_size, weights=b.weights,
                          head=b.head, dropout=b.dropout, l2=b.l2, freeze_until="all", alpha=b.alpha,
                          pooling=b.pooling)
        plan = prefix_cache.plan_phase(net, frozen_boundary(net, b.arch, "all"), mode="disk",
                                       n_train=len(self.train_t), n_val=len(self.val_t), augment=False,
                                       augment_copies=0, epochs=b.epochs, dtype=b.prefix_cache_dtype,
                                       disk_dir=folder)
        if plan.cut is None:
            raise ConfigError(f"{self.spec.source}: the cached-features route needs the prefix cache, which does not "
                              f"apply: {plan.reason}. Set tuner.features: off.")
        phase = prefix_cache.build_phase(plan, train_table=self.train_t, val_table=self.val_t,
                                         image_size=b.image_size, preprocess=backbones.get(b.arch).preprocess,
                                         batch_size=b.batch_size, seed=b.seed, augment=False,
                                         dtype=b.prefix_cache_dtype, cache_dir=folder)
        log.info("cached features: prefix %s, train %d / val %d rows (%.1f s)", plan.cut.layer_name,
                 phase.caches[0].rows, phase.caches[1].rows, phase.fill_seconds)
        return phase.caches

    def trial_model(self, conf: TrainConfig):
        """The model one trial trains: the full network, or (cached route) its suffix after the frozen prefix."""
        from mame_transfer.models.build import build_model, frozen_boundary
        from mame_transfer.training.prefix_cache import find_cut

        # On the cached route only the suffix is trained: its initial weights are what matters, not the backbone's.
        weights = "none" if self.cached else conf.weights
        net = build_model(conf.arch, self.num_classes, image_size=conf.image_size, weights=weights, head=conf.head,
                          dropout=conf.dropout, l2=conf.l2, freeze_until=conf.freeze_until, alpha=conf.alpha,
                          pooling=conf.pooling)
        if not self.cached:
            return net
        cut, why = find_cut(net, frozen_boundary(net, conf.arch, "all"))
        if cut is None:
            raise ConfigError(f"cannot cut {conf.arch} after its backbone: {why}")
        return cut.suffix

    def val_inputs(self, conf: TrainConfig):
        if self.cached:
            return np.asarray(self.caches_for(conf.image_size)[1].array)
        return self.pipelines(conf)[1].map(lambda x, y: x)

    def pipelines(self, conf: TrainConfig):
        """``(train dataset, val dataset, val labels)`` for one trial's batch size."""
        if self.cached:
            from mame_transfer.training.prefix_cache import cached_pipeline

            train_cache, val_cache = self.caches_for(conf.image_size)
            return (cached_pipeline(train_cache, self.train_labels, batch_size=conf.batch_size, shuffle=True,
                                    seed=conf.seed),
                    cached_pipeline(val_cache, self.val_labels, batch_size=conf.batch_size), self.val_labels)
        from mame_transfer.training.trainer import image_pipelines

        return (*image_pipelines(conf, self.train_t, self.val_t), self.val_labels)


def make_hypermodel(spec: SearchSpec, search_data: SearchData, overrides: dict):
    """The ``keras_tuner.HyperModel`` of a search (its class is made here, so importing this module stays cheap).

    ``build(hp)`` declares the space (defaults = the untuned TrainConfig) and builds the trial's model;
    ``fit`` feeds the batch size the trial drew, with the same callbacks ``finetune`` uses.
    """
    import keras_tuner as kt

    from mame_transfer.training.compile import (
        class_weights,
        compile_model,
        schedule_callbacks,
    )

    class MameHyperModel(kt.HyperModel):
        def __init__(self):
            super().__init__(name=f"mame_{spec.name}", tunable=True)
            self.spec, self.data, self.overrides = spec, search_data, dict(overrides)

        def config(self, hp) -> TrainConfig:
            return trial_config(self.spec, declare(hp, self.spec), **self.overrides)

        def build(self, hp):
            import keras

            conf = self.config(hp)
            keras.utils.set_random_seed(conf.seed)
            net = self.data.trial_model(conf)
            steps = self.data.steps(conf.batch_size, conf.steps_per_epoch)
            compile_model(net, conf, self.data.num_classes, total_steps=steps * conf.epochs)
            return net

        def fit(self, hp, model, *args, **kwargs):
            conf = self.config(hp)
            train_ds, val_ds, val_y = self.data.pipelines(conf)
            own = []
            if self.spec.tuner.objective == "val_macro_f1":
                own.append(_macro_f1_callback(self.data.val_inputs(conf), val_y, conf.batch_size))
            own += list(schedule_callbacks(conf, monitor=self.spec.tuner.objective).values())
            kwargs["callbacks"] = own + list(kwargs.get("callbacks") or [])
            kwargs.setdefault("epochs", conf.epochs)
            cw = class_weights(self.data.train_labels, self.data.num_classes, conf.class_weight)
            steps = conf.steps_per_epoch if conf.steps_per_epoch else None
            if steps:
                train_ds = train_ds.repeat()
            kwargs["verbose"] = kwargs.get("verbose", conf.verbose)
            return model.fit(train_ds, validation_data=val_ds, class_weight=cw, steps_per_epoch=steps, **kwargs)

    return MameHyperModel()
