"""Fine-tune a registry backbone with a dense head: ``python -m mame_transfer.finetune``.

Examples::

    python -m mame_transfer.finetune --demo --arch mobilenet --alpha 0.25 --image-size 96 --epochs 3
    python -m mame_transfer.finetune --arch vgg16 --data /path/to/MAMe --freeze-until block3 \\
        --head 512,256 --lr 5e-5 --l2 0.1 --dropout 0.5 --batch-size 32 --epochs 20
    python -m mame_transfer.finetune --config my_run.yaml --lr 1e-5

A run trains inside ``<run>.partial/`` and is renamed to ``<run>/`` only once every artefact is written, so a
directory without the suffix is always complete. Running the same command again after an interrupt (Ctrl-C,
``kill -9``, a crash) resumes from the last finished epoch: weights, optimizer state, learning-rate schedule,
early-stopping and best-checkpoint state are restored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import config as cfg
from .config import TrainConfig
from .errors import ConfigError, DataError, MameTransferError
from .fileio import atomic_path, write_json, write_text

log = logging.getLogger("mame_transfer")

STATE_DIR = "resume_state"
PARTIAL = ".partial"


# --------------------------------------------------------------------------------------------- data


def dataset_for(config: TrainConfig, require: Sequence[str] = ("train", "val")):
    """Load the dataset a config names (``--demo`` generates the demo set on first use)."""
    from . import data, demo

    if config.demo:
        path = demo.ensure_demo()
    elif config.data:
        path = config.data
    else:
        raise ConfigError("no dataset given: pass --data PATH (MAMe folder or class-per-folder set) or --demo")
    return data.load_dataset(path, toy=config.toy, images=config.images, museum=config.museum,
                             check_files=config.check_images, require=tuple(require))


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """``balanced``: n / (k * count_c), the weighting of scikit-learn; classes absent from train get 1."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 1.0)
    return {i: float(w) for i, w in enumerate(weights)}


# --------------------------------------------------------------------------------------------- model


def resolved_config(config: TrainConfig) -> TrainConfig:
    """Fill ``auto`` values (image size, freeze block) with what this run will actually use."""
    from . import backbones

    spec = backbones.get(config.arch)
    out = dataclasses.replace(config)
    out.arch = spec.name
    out.image_size = config.image_size or spec.default_size
    if config.freeze_until == "auto":
        out.freeze_until = spec.default_freeze
    elif config.freeze_until not in ("none", "all"):
        spec.check_block(config.freeze_until)
    return out


def make_optimizer(config: TrainConfig, *, total_steps: int | None = None):
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
    import keras

    optimizer = make_optimizer(config, total_steps=total_steps)
    if getattr(config, "block_lr", None):  # Lagunas & Garces: one learning rate per block group
        from .methods import block_optimizer

        optimizer = block_optimizer(model, config.arch, config.block_lr, config.lr, lambda lr: make_optimizer(
            dataclasses.replace(config, lr=lr, block_lr=None), total_steps=total_steps))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy()
        if not config.label_smoothing else _SmoothedSparseCE(config.label_smoothing, num_classes),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5")],
        jit_compile=True if getattr(config, "jit_compile", False) else "auto",  # auto: XLA on GPU, not on CPU
    )
    return model


class _SmoothedSparseCE:
    """Sparse labels with label smoothing (Keras's sparse loss has no ``label_smoothing``)."""

    def __init__(self, smoothing: float, num_classes: int):
        import keras

        self._loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
        self.num_classes = num_classes
        self.__name__ = "smoothed_sparse_categorical_crossentropy"

    def __call__(self, y_true, y_pred, sample_weight=None):
        from keras import ops

        y_true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
        return self._loss(y_true, y_pred, sample_weight=sample_weight)


def make_strategy(name: str):
    """``mirrored``: a ``tf.distribute.MirroredStrategy`` over every local GPU (or logical CPU device); else None."""
    if name != "mirrored":
        return None
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy()
    log.info("MirroredStrategy over %d device(s): %s", strategy.num_replicas_in_sync,
             ", ".join(strategy.extended.worker_devices))
    return strategy


def _scope(strategy):
    """Build and compile under the strategy's scope, so weights and optimizer variables are mirrored."""
    import contextlib

    return strategy.scope() if strategy is not None else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------- resume


class ResumeState:
    """Saves, after every epoch, what is needed to continue: weights, optimizer variables, callback state.

    Files in ``<run>.partial/resume_state/``: ``epoch-<n>.weights.h5``, ``epoch-<n>.optimizer.npz`` and
    ``state.json`` (written last, atomically, pointing at them), so a kill at any instant leaves either the
    previous consistent state or the new one.
    """

    def __init__(self, work_dir: Path):
        self.dir = Path(work_dir) / STATE_DIR
        self.path = self.dir / "state.json"

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = json.loads(self.path.read_text())
        if not (self.dir / state["weights"]).is_file():
            return None
        return state

    def save(self, model, epoch: int, phase: int, callbacks_state: dict, best: dict, weights_model=None) -> None:
        import keras  # noqa: F401  (model is a keras.Model)

        self.dir.mkdir(parents=True, exist_ok=True)
        weights = f"epoch-{epoch}.weights.h5"
        opt = f"epoch-{epoch}.optimizer.npz"
        with atomic_path(self.dir / weights) as tmp:
            (model if weights_model is None else weights_model).save_weights(tmp)  # full net, not a suffix
        with atomic_path(self.dir / opt) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, *[np.asarray(v) for v in model.optimizer.variables])
        write_json(self.path, {"epoch": epoch, "phase": phase, "weights": weights, "optimizer": opt,
                               "callbacks": callbacks_state, "best": best})
        for old in self.dir.iterdir():
            if old.name.startswith("epoch-") and not old.name.startswith(f"epoch-{epoch}."):
                old.unlink(missing_ok=True)

    def restore_optimizer(self, model, state: dict) -> bool:
        """Load optimizer variables if they match the freshly compiled optimizer (same phase)."""
        model.optimizer.build(model.trainable_variables)
        with np.load(self.dir / state["optimizer"]) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        variables = model.optimizer.variables
        if len(values) != len(variables) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
            return False
        for v, a in zip(variables, values):
            v.assign(a)
        return True


def _callback_state(cb) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v)
            for k, v in vars(cb).items() if k in ("wait", "best", "cooldown_counter", "stopped_epoch")
            and isinstance(v, (int, float, np.floating))}


def _make_epoch_callback(resume: ResumeState, phase: int, tracked: dict, best: dict, best_path: Path,
                         restore: dict | None, full_model=None):
    import keras

    class _EpochEnd(keras.callbacks.Callback):
        """Runs last: keeps the best weights (val accuracy), then saves the resume state."""

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


# --------------------------------------------------------------------------------------------- run dirs


def _config_key(config: TrainConfig) -> dict:
    d = config.to_dict()
    for k in ("out", "overwrite", "verbose", "runs_dir"):
        d.pop(k, None)
    return d


def find_work_dir(config: TrainConfig) -> tuple[Path, Path, bool]:
    """(final run dir, work dir, resuming?) for a resolved config."""
    if config.out:
        final = Path(config.out)
        work = final.with_name(final.name + PARTIAL)
        if final.exists() and any(final.iterdir()):
            if not config.overwrite:
                raise ConfigError(f"run directory {final} already exists; pass --overwrite to replace it or "
                                  f"choose another --out")
        return final, work, (work / STATE_DIR / "state.json").is_file()
    runs = Path(config.runs_dir)
    key = _config_key(config)
    if runs.is_dir():
        for cand in sorted(runs.glob(f"{config.arch}-*{PARTIAL}"), reverse=True):
            try:
                saved = cfg.load_yaml(cand / "config.yaml")
            except ConfigError:
                continue
            saved.pop("out", None)
            if {k: saved.get(k) for k in key} == key and (cand / STATE_DIR / "state.json").is_file():
                return cand.with_name(cand.name[: -len(PARTIAL)]), cand, True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = runs / f"{config.arch}-{stamp}"
    n = 1
    while final.exists() or final.with_name(final.name + PARTIAL).exists():
        n += 1
        final = runs / f"{config.arch}-{stamp}-{n}"
    return final, final.with_name(final.name + PARTIAL), False


def _setup_logging(work: Path, verbose: int) -> logging.Handler:
    log.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "_mame", False) for h in log.handlers):
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(logging.Formatter("[mame_transfer] %(message)s"))
        stream._mame = True  # type: ignore[attr-defined]
        log.addHandler(stream)
    for h in log.handlers:
        if getattr(h, "_mame", False):
            h.setLevel(logging.INFO if verbose else logging.WARNING)
    fh = logging.FileHandler(work / "run.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    return fh


# --------------------------------------------------------------------------------------------- training


def train(config: TrainConfig) -> Path:
    """Fine-tune according to ``config``; returns the finished run directory."""
    import keras

    from . import backbones, data, evaluate, methods, model as model_mod, plots, varshape
    from . import cache as prefix_cache

    config = resolved_config(config.validate())
    spec = backbones.get(config.arch)
    methods.check_config(config)
    keras.utils.set_random_seed(config.seed)
    dataset = dataset_for(config)
    classes = dataset.classes
    train_t, val_t = dataset.split("train"), dataset.split("val")

    final, work, resuming = find_work_dir(config)
    work.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(work, config.verbose)
    try:
        write_text(work / "config.yaml", cfg.dump_yaml(config))
        write_json(work / "class_index.json", dataset.class_index)
        log.info("%s %s: %d classes, train %d / val %d%s", "resuming" if resuming else "run", work, len(classes),
                 len(train_t), len(val_t), f" / test {len(dataset.split('test'))}" if "test" in dataset.subsets else "")

        if config.mixed_precision != "none":  # set before building: layers take the global policy
            keras.mixed_precision.set_global_policy(config.mixed_precision)
        strategy = make_strategy(config.strategy)
        with _scope(strategy):
            net = model_mod.build_model(config.arch, len(classes), image_size=config.image_size,
                                        weights=config.weights, head=config.head, dropout=config.dropout, l2=config.l2,
                                        freeze_until="all" if config.warmup_epochs else config.freeze_until,
                                        alpha=config.alpha, pooling=config.pooling,
                                        variable_shape=config.shape == "variable", keep_top=config.keep_top)
            if config.init_from:  # double fine-tuning (Gonthier et al.)
                methods.init_from_run(net, config.init_from, arch=config.arch, alpha=config.alpha)
            methods.reinit_until(net, config.arch, config.reinit_until, seed=config.seed)
        pipe = dict(image_size=config.image_size, preprocess=spec.preprocess, batch_size=config.batch_size,
                    seed=config.seed, cache=config.cache)
        if config.shape == "variable":  # aspect kept, pixel budget, batches bucketed by aspect ratio
            vs = dict(pixels=config.pixels, preprocess=spec.preprocess, batch_size=config.batch_size, seed=config.seed)
            train_ds = varshape.make_pipeline(train_t, training=True, augment=config.augment, **vs)
            val_ds = varshape.make_pipeline(val_t, training=False, **vs)
        else:
            train_ds = data.make_pipeline(train_t, training=True, augment=config.augment, **pipe)
            val_ds = data.make_pipeline(val_t, training=False, augment=False, **pipe)
        steps = config.steps_per_epoch or int(np.ceil(len(train_t) / config.batch_size))
        if config.steps_per_epoch:
            train_ds = train_ds.repeat()
        cw = class_weights(train_t["label_index"].to_numpy(), len(classes), config.class_weight)

        resume = ResumeState(work)
        state = resume.load() if resuming else None
        start = state["epoch"] if state else 0
        best = dict(state["best"]) if state else {}
        if state:
            net.load_weights(resume.dir / state["weights"])
            log.info("resuming after epoch %d (best val accuracy so far %.4f)", start, best.get("val_accuracy", 0))
            _truncate_history(work / "history.csv", start)
        phases = ([(0, config.warmup_epochs, "all")] if config.warmup_epochs else []) + \
            [(config.warmup_epochs, config.epochs, config.freeze_until)]
        stopped = False
        for phase, (p_start, p_end, freeze) in enumerate(phases):
            if start >= p_end or stopped:
                continue
            model_mod.set_trainable(net, config.arch, freeze)
            # The frozen-prefix cache (mame_transfer.cache) swaps in the suffix model and cached pipelines.
            fit_net, fit_train, fit_val, path = prefix_cache.phase_inputs(
                net, config, freeze, train_t, val_t, work, train_ds, val_ds, epochs=p_end - max(start, p_start))
            with _scope(strategy):  # optimizer variables must be mirrored like the model's
                compile_model(fit_net, config, len(classes), total_steps=steps * (p_end - p_start))
            restore = None
            if state and state["phase"] == phase and state["epoch"] >= p_start:
                if not resume.restore_optimizer(fit_net, state):
                    log.warning("optimizer state could not be restored; continuing with a fresh optimizer")
                restore = state["callbacks"]
            summary = model_mod.trainable_summary(net)
            log.info("phase %d: epochs %d-%d, freeze until %s, %s trainable / %s frozen parameters, path: %s",
                     phase + 1, max(start, p_start) + 1, p_end, freeze,
                     f"{summary['trainable_params']:,}", f"{summary['frozen_params']:,}", path)
            tracked = {}
            if config.early_stopping:
                tracked["early_stopping"] = keras.callbacks.EarlyStopping(
                    monitor="val_accuracy", mode="max", patience=config.early_stopping)
            if config.schedule == "plateau":
                tracked["plateau"] = keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=config.plateau_factor, patience=config.plateau_patience, min_lr=1e-7)
            callbacks = list(tracked.values()) + [
                keras.callbacks.CSVLogger(str(work / "history.csv"), append=True),
                _make_epoch_callback(resume, phase, tracked, best, work / "best.weights.h5", restore, full_model=net),
            ]
            history = fit_net.fit(fit_train, validation_data=fit_val, epochs=p_end, initial_epoch=max(start, p_start),
                              steps_per_epoch=steps if config.steps_per_epoch else None,
                              class_weight=cw, callbacks=callbacks, verbose=config.verbose,
                              shuffle=False)  # the tf.data pipeline shuffles (seeded) itself
            es = tracked.get("early_stopping")
            if es is not None and es.stopped_epoch:
                log.info("early stopping after epoch %d", es.stopped_epoch + 1)
                stopped = phase == len(phases) - 1
            del history

        if (work / "best.weights.h5").is_file():
            net.load_weights(work / "best.weights.h5")
            log.info("restored best weights: epoch %s, val accuracy %.4f", best.get("epoch"), best.get("val_accuracy", 0))
        finish_run(net, config, dataset, work)
        with atomic_path(work / "model.keras") as tmp:
            net.save(tmp)
    finally:
        if config.mixed_precision != "none":
            keras.mixed_precision.set_global_policy("float32")
        log.removeHandler(handler)
        handler.close()
    # Everything is written: drop the resume state and make the directory visible under its final name.
    import shutil

    shutil.rmtree(work / STATE_DIR, ignore_errors=True)
    shutil.rmtree(work / "prefix_cache", ignore_errors=True)
    (work / "best.weights.h5").unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    log.info("run complete: %s", final)
    return final


def finish_run(net, config: TrainConfig, dataset, work: Path) -> dict:
    """Evaluate on val and test (when present) and write metrics, reports, predictions and plots."""
    import pandas as pd

    from . import evaluate, plots

    splits = [s for s in ("val", "test") if s in dataset.subsets]
    metrics = {}
    for split in splits:
        table = dataset.split(split)
        options = evaluate.prediction_options(config)
        proba = evaluate.predict_proba(net, table, arch=config.arch, image_size=config.image_size,
                                       batch_size=config.batch_size, **options)
        metrics[split] = evaluate.write_split_artifacts(work, split, table, proba, dataset.classes,
                                                        final=split == splits[-1])
        log.info("%s: top-1 %.4f  top-5 %.4f  macro F1 %.4f", split, metrics[split]["top1"], metrics[split]["top5"],
                 metrics[split]["macro_f1"])
        if getattr(config, "tta", "none") != "none":  # test-time augmentation, reported beside the plain scores
            key = f"{split}_{config.tta}"
            proba = evaluate.predict_proba(net, table, arch=config.arch, image_size=config.image_size,
                                           batch_size=config.batch_size, **options, tta=config.tta,
                                           patch_scales=config.patch_scales, patch_power=config.patch_power)
            metrics[key] = evaluate.write_split_artifacts(work, key, table, proba, dataset.classes)
            log.info("%s: top-1 %.4f  top-5 %.4f  macro F1 %.4f", key, metrics[key]["top1"], metrics[key]["top5"],
                     metrics[key]["macro_f1"])
    write_json(work / "metrics.json", metrics)
    if (work / "history.csv").is_file():
        hist = pd.read_csv(work / "history.csv")
        plots.save(plots.training_curves_figure(hist, warmup_epochs=config.warmup_epochs), work / "training_curves.png")
    return metrics


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history rows of epochs that finished after the last saved state (killed in between)."""
    import pandas as pd

    if not path.is_file():
        return
    try:
        hist = pd.read_csv(path)
    except Exception:
        path.unlink()
        return
    if "epoch" in hist and (hist["epoch"] >= epochs_done).any():
        write_text(path, hist[hist["epoch"] < epochs_done].to_csv(index=False))


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mame_transfer.finetune",
                                     description="Fine-tune a backbone with a dense head on MAMe or any "
                                                 "class-per-folder image set.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file of options (flags given here override it)")
    parser.add_argument("--list-archs", action="store_true", help="print the registered backbones and exit")
    cfg.add_arguments(parser, TrainConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_archs:
        from . import backbones

        for name, spec in backbones.REGISTRY.items():
            print(f"{name:<16} {spec.default_size:>4}px  blocks {spec.block_names[0]}..{spec.block_names[-1]:<8} "
                  f"default freeze {spec.default_freeze:<7} {spec.description}")
        return 0
    try:
        config = cfg.resolve(TrainConfig, args, config_path=args.config)
        run = train(config)
    except MameTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    print(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
