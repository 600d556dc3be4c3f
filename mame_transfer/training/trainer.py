"""Fine-tuning: phases (head-only warm-up, then down to ``--freeze-until``), resume, best weights, final scores.

:func:`train` is what ``python -m mame_transfer.finetune`` runs. The run directory's format is
:mod:`mame_transfer.training.runs`; the optimizer, loss and callbacks are :mod:`mame_transfer.training.compile`;
a phase whose frozen layers can be computed once goes through :mod:`mame_transfer.training.prefix_cache`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mame_transfer.core.cli import log_to_stdout
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.fileio import atomic_path, write_json
from mame_transfer.training import runs
from mame_transfer.training.compile import (
    class_weights,
    compile_model,
    make_strategy,
    schedule_callbacks,
    strategy_scope,
)

log = logging.getLogger("mame_transfer")


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
                        restore: dict | None, full_model=None):
    """The last callback of every epoch: keeps the best weights (val accuracy), then saves the resume state."""
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
            if score is not None and score > best.get("val_accuracy", -1.0):
                best.update({"val_accuracy": float(score), "epoch": int(epoch) + 1})
                with atomic_path(best_path) as tmp:
                    (self.model if full_model is None else full_model).save_weights(tmp)
            resume.save(self.model, epoch + 1, phase, {n: _callback_state(c) for n, c in tracked.items()}, best,
                        weights_model=full_model)

    return _EpochEnd()


def build_net(config: TrainConfig, num_classes: int, strategy):
    """The flat model of a run, with the transfer methods' initialisation applied."""
    from mame_transfer.models.build import build_model
    from mame_transfer.training import methods

    with strategy_scope(strategy):
        net = build_model(config.arch, num_classes, image_size=config.image_size, weights=config.weights,
                          head=config.head, dropout=config.dropout, l2=config.l2,
                          freeze_until="all" if config.warmup_epochs else config.freeze_until, alpha=config.alpha,
                          pooling=config.pooling, variable_shape=config.shape == "variable", keep_top=config.keep_top)
        if config.init_from:  # double fine-tuning (Gonthier et al.)
            methods.init_from_run(net, config.init_from, arch=config.arch, alpha=config.alpha)
        methods.reinit_until(net, config.arch, config.reinit_until, seed=config.seed)
    return net


def image_pipelines(config: TrainConfig, train_t, val_t):
    """Train and val ``tf.data`` pipelines: fixed shape, or aspect kept with a pixel budget (``--shape variable``)."""
    from mame_transfer.datasets import varshape
    from mame_transfer.datasets.pipeline import make_pipeline
    from mame_transfer.models import backbones

    preprocess = backbones.get(config.arch).preprocess
    if config.shape == "variable":  # batches bucketed by aspect ratio
        vs = dict(pixels=config.pixels, preprocess=preprocess, batch_size=config.batch_size, seed=config.seed)
        return (varshape.make_pipeline(train_t, training=True, augment=config.augment, **vs),
                varshape.make_pipeline(val_t, training=False, **vs))
    pipe = dict(image_size=config.image_size, preprocess=preprocess, batch_size=config.batch_size, seed=config.seed,
                cache=config.image_cache)
    return (make_pipeline(train_t, training=True, augment=config.augment, **pipe),
            make_pipeline(val_t, training=False, augment=False, **pipe))


def train(config: TrainConfig) -> Path:
    """Fine-tune according to ``config``; returns the finished run directory."""
    import keras

    from mame_transfer.models.build import set_trainable, trainable_summary
    from mame_transfer.training import methods, prefix_cache

    config = runs.resolved_config(config.validate())
    methods.check_config(config)
    keras.utils.set_random_seed(config.seed)
    dataset = runs.dataset_for(config)
    classes = dataset.classes
    train_t, val_t = dataset.split("train"), dataset.split("val")

    final, work, resuming = runs.find_work_dir(config)
    runs.start(work, config, dataset.class_index)
    handler = log_to_file(config.verbose, work / runs.RUN_LOG)
    try:
        log.info("%s %s: %d classes, train %d / val %d%s", "resuming" if resuming else "run", work, len(classes),
                 len(train_t), len(val_t), f" / test {len(dataset.split('test'))}" if "test" in dataset.subsets else "")
        if config.mixed_precision != "none":  # set before building: layers take the global policy
            keras.mixed_precision.set_global_policy(config.mixed_precision)
        strategy = make_strategy(config.strategy)
        net = build_net(config, len(classes), strategy)
        train_ds, val_ds = image_pipelines(config, train_t, val_t)
        steps = config.steps_per_epoch or int(np.ceil(len(train_t) / config.batch_size))
        if config.steps_per_epoch:
            train_ds = train_ds.repeat()
        cw = class_weights(train_t["label_index"].to_numpy(), len(classes), config.class_weight)

        resume = runs.ResumeState(work)
        state = resume.load() if resuming else None
        start = state["epoch"] if state else 0
        best = dict(state["best"]) if state else {}
        if state:
            net.load_weights(resume.dir / state["weights"])
            log.info("resuming after epoch %d (best val accuracy so far %.4f)", start, best.get("val_accuracy", 0))
            runs.truncate_history(work / runs.HISTORY, start)
        phases = ([(0, config.warmup_epochs, "all")] if config.warmup_epochs else []) + \
            [(config.warmup_epochs, config.epochs, config.freeze_until)]
        stopped = False
        for phase, (p_start, p_end, freeze) in enumerate(phases):
            if start >= p_end or stopped:
                continue
            set_trainable(net, config.arch, freeze)
            # The frozen-prefix cache swaps in the suffix model and cached pipelines when it applies.
            fit_net, fit_train, fit_val, route = prefix_cache.phase_inputs(
                net, config, freeze, train_t, val_t, work, train_ds, val_ds, epochs=p_end - max(start, p_start))
            with strategy_scope(strategy):  # optimizer variables must be mirrored like the model's
                compile_model(fit_net, config, len(classes), total_steps=steps * (p_end - p_start))
            restore = None
            if state and state["phase"] == phase and state["epoch"] >= p_start:
                if not resume.restore_optimizer(fit_net, state):
                    log.warning("optimizer state could not be restored; continuing with a fresh optimizer")
                restore = state["callbacks"]
            summary = trainable_summary(net)
            log.info("phase %d: epochs %d-%d, freeze until %s, %s trainable / %s frozen parameters, route: %s",
                     phase + 1, max(start, p_start) + 1, p_end, freeze,
                     f"{summary['trainable_params']:,}", f"{summary['frozen_params']:,}", route)
            tracked = schedule_callbacks(config)
            callbacks = list(tracked.values()) + [
                keras.callbacks.CSVLogger(str(work / runs.HISTORY), append=True),
                epoch_end_callback(resume, phase, tracked, best, work / runs.BEST_WEIGHTS, restore, full_model=net),
            ]
            fit_net.fit(fit_train, validation_data=fit_val, epochs=p_end, initial_epoch=max(start, p_start),
                        steps_per_epoch=steps if config.steps_per_epoch else None, class_weight=cw,
                        callbacks=callbacks, verbose=config.verbose,
                        shuffle=False)  # the tf.data pipeline shuffles (seeded) itself
            es = tracked.get("early_stopping")
            if es is not None and es.stopped_epoch:
                log.info("early stopping after epoch %d", es.stopped_epoch + 1)
                stopped = phase == len(phases) - 1

        if (work / runs.BEST_WEIGHTS).is_file():
            net.load_weights(work / runs.BEST_WEIGHTS)
            log.info("restored best weights: epoch %s, val accuracy %.4f", best.get("epoch"),
                     best.get("val_accuracy", 0))
        finish_run(net, config, dataset, work)
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


def finish_run(net, config: TrainConfig, dataset, work: Path) -> dict:
    """Evaluate on val and test (when present) and write metrics, reports, predictions and plots."""
    import pandas as pd

    from mame_transfer.core import plots
    from mame_transfer.inference.metrics import write_split_artifacts
    from mame_transfer.inference.predict import predict_proba, prediction_options

    splits = [s for s in ("val", "test") if s in dataset.subsets]
    options = dict(arch=config.arch, image_size=config.image_size, batch_size=config.batch_size,
                   **prediction_options(config))
    tta = {"none": {}} if config.tta == "none" else \
        {"none": {}, config.tta: dict(tta=config.tta, patch_scales=config.patch_scales,
                                      patch_power=config.patch_power)}
    metrics = {}
    for split in splits:
        table = dataset.split(split)
        for mode, extra in tta.items():  # test-time augmentation is reported beside the plain scores
            key = split if mode == "none" else f"{split}_{mode}"
            proba = predict_proba(net, table, **options, **extra)
            metrics[key] = write_split_artifacts(work, key, table, proba, dataset.classes,
                                                 final=mode == "none" and split == splits[-1])
            log.info("%s: top-1 %.4f  top-5 %.4f  macro F1 %.4f", key, metrics[key]["top1"], metrics[key]["top5"],
                     metrics[key]["macro_f1"])
    write_json(work / runs.METRICS, metrics)
    if (work / runs.HISTORY).is_file():
        hist = pd.read_csv(work / runs.HISTORY)
        plots.save(plots.training_curves_figure(hist, warmup_epochs=config.warmup_epochs),
                   work / runs.TRAINING_CURVES)
    return metrics
