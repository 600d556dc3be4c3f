"""Fine-tuning: phases (head-only warm-up, then down to ``--freeze-until``), resume, best weights, final scores.

:func:`train` is what ``python -m mame_transfer.finetune`` runs. The run directory's format is
:mod:`mame_transfer.training.runs`; the optimizer, loss and callbacks are :mod:`mame_transfer.training.compile`;
a phase whose frozen layers can be computed once goes through :mod:`mame_transfer.training.prefix_cache`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from mame_transfer.core.cli import log_to_stdout
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError, MameTransferError
from mame_transfer.core.fileio import atomic_path, write_json
from mame_transfer.datasets.images import named_image_errors
from mame_transfer.training import runs
from mame_transfer.training.compile import (
    class_weights,
    compile_model,
    make_strategy,
    require_tensorboard,
    schedule_callbacks,
    strategy_scope,
    tensorboard_callback,
)
from mame_transfer.training.phases import augment_spec, plan_phases
from mame_transfer.training.probe import check_probe_config, fit_probe, is_probe_only

log = logging.getLogger("mame_transfer")


class TrainingDiverged(MameTransferError, RuntimeError):
    """The training loss became NaN or infinite: the run is left incomplete (``.partial``)."""


def log_to_file(verbose: int, file: Path) -> logging.Handler:
    """Package log lines on stdout (warnings only when not verbose) and in the run's ``run.log``."""
    log_to_stdout(verbose)
    fh = logging.FileHandler(file, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    return fh


def _callback_state(cb) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v)
            for k, v in vars(cb).items() if k in ("wait", "best", "cooldown_counter", "stopped_epoch")
            and isinstance(v, (int, float, np.floating))}


def epoch_end_callback(resume: runs.ResumeState, phase: int, tracked: dict, best: dict, best_path: Path,
                       restore: dict | None, full_model=None, track_best: bool = True):
    """The last callback of every epoch: keeps the best weights (selection accuracy), then saves the resume state.

    ``track_best`` is False in progressive-resizing phases below the final size (their scores are not comparable).
    """
    import keras

    class _EpochEnd(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            # Other callbacks reset their counters in their own on_train_begin; put the saved ones back.
            if restore:
                for name, values in restore.items():
                    if name in tracked:
                        for k, v in values.items():
                            setattr(tracked[name], k, v)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            score = logs.get("val_accuracy")
            if track_best and score is not None and score > best.get("val_accuracy", -1.0):
                best.update({"val_accuracy": float(score), "epoch": int(epoch) + 1})
                with atomic_path(best_path) as tmp:
                    (self.model if full_model is None else full_model).save_weights(tmp)
            resume.save(self.model, epoch + 1, phase, {n: _callback_state(c) for n, c in tracked.items()}, best,
                        weights_model=full_model)

    return _EpochEnd()


def _stop_on_nan(work: Path, config: TrainConfig):
    """Stop at the first batch whose loss is not finite, before that epoch's weights are saved as resume state."""
    import keras

    class _StopOnNaN(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(float(loss)):
                raise TrainingDiverged(
                    f"training diverged: the loss is {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1} "
                    f"(--lr {config.lr}{f', --block-lr {config.block_lr}' if config.block_lr else ''}). The run is "
                    f"left incomplete in {work}; lower the learning rate (or check the data), then rerun with "
                    f"--overwrite to start over.")

    return _StopOnNaN()


def build_net(config: TrainConfig, num_classes: int, strategy):
    """The flat model of a run, with the transfer methods' initialisation applied (at ``config.image_size``)."""
    from mame_transfer.models.build import build_model
    from mame_transfer.training import methods

    with strategy_scope(strategy):
        net = build_model(config.arch, num_classes, image_size=config.image_size, weights=config.weights,
                          head=config.head, dropout=config.dropout, l2=config.l2,
                          freeze_until="all" if config.warmup_epochs else config.freeze_until, alpha=config.alpha,
                          pooling=config.pooling, variable_shape=config.shape == "variable", keep_top=config.keep_top,
                          scales=config.scales)
        if config.init_from:  # double fine-tuning (Gonthier et al.)
            methods.init_from_run(net, config.init_from, arch=config.arch, alpha=config.alpha)
        methods.reinit_until(net, config.arch, config.reinit_until, seed=config.seed)
    return net


def _resized(net, config: TrainConfig, num_classes: int, size: int, strategy):
    """The same network at another input size (progressive resizing): same layers, the current weights."""
    from mame_transfer.models.build import build_model

    with strategy_scope(strategy):
        other = build_model(config.arch, num_classes, image_size=size, weights="none", head=config.head,
                            dropout=config.dropout, l2=config.l2, freeze_until="all", alpha=config.alpha,
                            pooling=config.pooling)
    other.set_weights(net.get_weights())
    return other


def image_pipelines(config: TrainConfig, train_t, val_t, num_classes: int | None = None):
    """Train and val ``tf.data`` pipelines: fixed shape, or aspect kept with a pixel budget (``--shape variable``).

    ``num_classes`` is needed when the augmentations mix labels (MixUp, CutMix).
    """
    from mame_transfer.datasets import augment as augmentation
    from mame_transfer.datasets import varshape
    from mame_transfer.datasets.pipeline import make_pipeline
    from mame_transfer.models import backbones

    preprocess = backbones.get(config.arch).preprocess
    if config.shape == "variable":  # batches bucketed by aspect ratio
        vs = dict(pixels=config.pixels, preprocess=preprocess, batch_size=config.batch_size, seed=config.seed)
        if config.augment and config.augmentations not in ("flip", augmentation.DEFAULT):
            log.warning("--shape variable augments with a horizontal flip only (--augmentations %r not applied)",
                        config.augmentations)
        return (varshape.make_pipeline(train_t, training=True, augment=config.augment, **vs),
                varshape.make_pipeline(val_t, training=False, **vs))
    pipe = dict(image_size=config.image_size, preprocess=preprocess, batch_size=config.batch_size, seed=config.seed,
                cache=config.image_cache)
    return (make_pipeline(train_t, training=True, augment=augment_spec(config), num_classes=num_classes, **pipe),
            make_pipeline(val_t, training=False, augment=False, **pipe))


def _train_stream(config: TrainConfig, train_t, start_epoch: int, steps: int, image_size: int):
    """The training batches from ``start_epoch`` on, each epoch seeded by its number (``None``: not available).

    With it a run resumed after ``kill -9`` sees the same order and augmentation as an uninterrupted one. The
    variable-shape and in-memory image cache pipelines, and augmentations other than the default flip + rotation
    (Keras layers with stateful generators), keep tf.data's own reshuffling (None).
    """
    from mame_transfer.datasets import augment as augmentation
    from mame_transfer.datasets.pipeline import make_epochs
    from mame_transfer.models import backbones

    if config.shape != "fixed" or config.image_cache:
        return None
    if config.augment and augmentation.parse(config.augmentations) != augmentation.parse(augmentation.DEFAULT):
        return None
    return make_epochs(train_t, start_epoch=start_epoch, steps=steps, image_size=image_size,
                       preprocess=backbones.get(config.arch).preprocess, batch_size=config.batch_size,
                       augment=config.augment, seed=config.seed)


def _reseed_each_epoch(seed: int):
    """Set every dropout layer's random state from ``(seed, epoch)`` when an epoch begins (see :func:`_train_stream`)."""
    import keras

    from mame_transfer.datasets.pipeline import epoch_seed

    class _Reseed(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            for i, layer in enumerate(self.model.layers):
                generator = getattr(layer, "seed_generator", None)
                if generator is not None:
                    state = generator.state
                    state.assign(np.array([epoch_seed(seed, epoch, 2 + i), 0]).astype(state.dtype))

    return _Reseed()


def train(config: TrainConfig, *, pool=None) -> Path:
    """Fine-tune according to ``config``; returns the finished run directory.

    Args:
        pool: ``(table, folder)``: compute prefix caches over every image of ``table`` (a superset of this run's
            train and selection rows) in ``folder``, where runs on other subsets of it reuse them (the folds of a
            cross-validation).
    """
    import keras

    from mame_transfer.training import methods

    config = runs.resolved_config(config.validate())
    methods.check_config(config)
    if config.tensorboard:
        require_tensorboard()
    keras.utils.set_random_seed(config.seed)
    _, work, resuming = runs.find_work_dir(config)
    # A resumed run on flat class folders keeps the split it started with (images may have been added since).
    dataset = runs.dataset_for(config, run_dir=work if resuming else None)
    with runs.open_run(config, dataset) as (final, work, resuming), named_image_errors():  # locked, checked
        return _train(config, dataset, final, work, resuming, pool)


def _train(config: TrainConfig, dataset, final: Path, work: Path, resuming: bool, pool=None) -> Path:
    """The body of :func:`train`, with the run's folders locked and checked."""
    import keras

    from mame_transfer.datasets.folds import holdout_split
    from mame_transfer.models.build import set_trainable, trainable_summary
    from mame_transfer.training import routes

    phases = plan_phases(config)
    if config.head_solver == "logreg":
        check_probe_config(config)
    fixed = config.shape == "fixed"  # a variable-shape net takes any size: never rebuilt at a phase's size
    classes = dataset.classes
    train_t, val_t = dataset.split("train"), dataset.split("val")
    select_t = val_t
    # val stays untouched until the final scores; the linear probe selects nothing on a slice (its C comes from
    # cross-validation on train), so it keeps every training image (LP-FT's epochs select on the slice as usual)
    probe_only = is_probe_only(config)
    if (config.select_on == "train-holdout" or config.folds) and not probe_only:
        train_t, select_t = holdout_split(train_t, config.holdout_fraction, config.seed)
    handler = log_to_file(config.verbose, work / runs.RUN_LOG)
    try:
        log.info("%s %s: %d classes, train %d / val %d%s", "resuming" if resuming else "run", work, len(classes),
                 len(train_t), len(val_t), f" / test {len(dataset.split('test'))}" if "test" in dataset.subsets else "")
        if config.folds:
            log.info("fold %d of %d (seed %d): val is this fold's share of train+val", config.fold, config.folds,
                     config.seed)
        if probe_only:
            log.info("linear probe: C is chosen by cross-validation on train; val is scored only at the end")
        elif select_t is not val_t:
            log.info("early stopping, schedule and best epoch watch a train holdout of %d images (the val_* columns "
                     "of %s); val is scored only at the end", len(select_t), runs.HISTORY)
        if config.mixed_precision != "none":  # set before building: layers take the global policy
            keras.mixed_precision.set_global_policy(config.mixed_precision)
        strategy = make_strategy(config.strategy)
        net = build_net(config, len(classes), strategy)
        steps = config.steps_per_epoch or int(np.ceil(len(train_t) / config.batch_size))
        cw = class_weights(train_t["label_index"].to_numpy(), len(classes), config.class_weight)

        resume = runs.ResumeState(work)
        state = resume.load() if resuming else None
        start = state["epoch"] if state else 0
        best = dict(state["best"]) if state else {}
        if state:
            net.load_weights(resume.dir / state["weights"])
            log.info("resuming after epoch %d (best val accuracy so far %.4f)", start, best.get("val_accuracy", 0))
            runs.truncate_history(work / runs.HISTORY, start)
        stopped = False
        for phase, (p_start, p_end, freeze, size) in enumerate((p.start, p.end, p.freeze, p.size) for p in phases):
            if start >= p_end or stopped:
                continue
            if fixed and net.input_shape[1] != size:  # progressive resizing: same weights, another input size
                net = _resized(net, config, len(classes), size, strategy)
            sized = dataclasses.replace(config, image_size=size)
            train_ds, val_ds = image_pipelines(sized, train_t, select_t, len(classes))
            if config.steps_per_epoch:
                train_ds = train_ds.repeat()
            set_trainable(net, config.arch, freeze)
            stream = _train_stream(config, train_t, max(start, p_start), steps, size)
            phase_ds = stream if stream is not None else train_ds
            # The frozen-prefix cache swaps in the suffix model and cached pipelines when it applies.
            probe = config.head_solver == "logreg" and freeze == "all"  # no epochs: softmax fitted on cached features
            fit_net, fit_train, fit_val, route = routes.phase_inputs(
                net, dataclasses.replace(sized, augment=False) if probe else sized,  # the probe fits each image once
                freeze, train_t, select_t, work, phase_ds, val_ds, epochs=p_end - max(start, p_start), pool=pool)
            epochwise = stream is not None and fit_train is stream  # endless: steps_per_epoch bounds each epoch
            if probe:
                if fit_net is net:
                    raise ConfigError(f"--head-solver logreg needs the prefix cache; this phase runs the {route}")
                log.info("phase %d: linear probe on %s", phase + 1, route)
                fit_probe(fit_net, fit_train, len(classes), seed=config.seed, class_weight=config.class_weight,
                          work=work)
                continue
            with strategy_scope(strategy):  # optimizer variables must be mirrored like the model's
                compile_model(fit_net, config, len(classes), total_steps=steps * (p_end - p_start))
            restore = None
            if state and state["phase"] == phase and state["epoch"] >= p_start:
                if not resume.restore_optimizer(fit_net, state):
                    log.warning("optimizer state could not be restored; continuing with a fresh optimizer")
                restore = state["callbacks"]
            summary = trainable_summary(net)
            log.info("phase %d: epochs %d-%d, freeze until %s, %d px, %s trainable / %s frozen parameters, route: %s",
                     phase + 1, max(start, p_start) + 1, p_end, freeze, size,
                     f"{summary['trainable_params']:,}", f"{summary['frozen_params']:,}", route)
            tracked = schedule_callbacks(config)
            callbacks = [_stop_on_nan(work, config), _reseed_each_epoch(config.seed)] + list(tracked.values()) + [
                keras.callbacks.CSVLogger(str(work / runs.HISTORY), append=True),
                *([tensorboard_callback(work / runs.TENSORBOARD_DIR)] if config.tensorboard else []),
                epoch_end_callback(resume, phase, tracked, best, work / runs.BEST_WEIGHTS, restore, full_model=net,
                                   track_best=size == config.image_size),
            ]
            fit_net.fit(fit_train, validation_data=fit_val, epochs=p_end, initial_epoch=max(start, p_start),
                        steps_per_epoch=steps if config.steps_per_epoch or epochwise else None, class_weight=cw,
                        callbacks=callbacks, verbose=config.verbose,
                        shuffle=False)  # the tf.data pipeline shuffles (seeded) itself
            es = tracked.get("early_stopping")
            if es is not None and es.stopped_epoch:
                log.info("early stopping after epoch %d", es.stopped_epoch + 1)
                stopped = phase == len(phases) - 1

        if fixed and net.input_shape[1] != config.image_size:  # stopped early in a smaller progressive phase
            net = _resized(net, config, len(classes), config.image_size, strategy)
        if (work / runs.BEST_WEIGHTS).is_file():
            net.load_weights(work / runs.BEST_WEIGHTS)
            log.info("restored best weights: epoch %s, %s accuracy %.4f", best.get("epoch"),
                     "val" if select_t is val_t else "holdout", best.get("val_accuracy", 0))
        finish_run(net, config, dataset, work, holdout=None if select_t is val_t else select_t)
        with atomic_path(work / runs.MODEL) as tmp:
            net.save(tmp)
    finally:
        if config.mixed_precision != "none":
            keras.mixed_precision.set_global_policy("float32")
        log.removeHandler(handler)
        handler.close()
    runs.finish(work, final)  # everything is written: the directory appears under its final name
    log.info("run complete: %s", final)
    return final


def finish_run(net, config: TrainConfig, dataset, work: Path, holdout=None) -> dict:
    """Evaluate on val and test (when present) and write metrics, reports, predictions and plots.

    ``holdout``: the train slice that picked the best epoch (``--select-on train-holdout``), scored as ``holdout``.
    """
    import pandas as pd

    from mame_transfer.core import plots
    from mame_transfer.inference.metrics import score_line, write_split_artifacts
    from mame_transfer.inference.predict import predict_proba, prediction_options

    splits = [s for s in ("val", "test") if s in dataset.subsets]
    options = dict(arch=config.arch, image_size=config.image_size, batch_size=config.batch_size,
                   **prediction_options(config))
    tta = {"none": {}} if config.tta == "none" else \
        {"none": {}, config.tta: dict(tta=config.tta, patch_scales=config.patch_scales,
                                      patch_power=config.patch_power)}
    metrics = {}
    if holdout is not None:
        proba = predict_proba(net, holdout, **options)
        metrics["holdout"] = write_split_artifacts(work, "holdout", holdout, proba, dataset.classes)
    for split in splits:
        table = dataset.split(split)
        for mode, extra in tta.items():  # test-time augmentation is reported beside the plain scores
            key = split if mode == "none" else f"{split}_{mode}"
            proba = predict_proba(net, table, **options, **extra)
            metrics[key] = write_split_artifacts(work, key, table, proba, dataset.classes,
                                                 final=mode == "none" and split == splits[-1])
            log.info("%s: %s", key, score_line(metrics[key]))
    write_json(work / runs.METRICS, metrics)
    if (work / runs.HISTORY).is_file():
        hist = pd.read_csv(work / runs.HISTORY)
        plots.save(plots.training_curves_figure(hist, warmup_epochs=config.warmup_epochs),
                   work / runs.TRAINING_CURVES)
    return metrics
