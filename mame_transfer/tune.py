"""KerasTuner search over learning rate, L2, dropout (and optionally head, freeze block, optimizer, batch size).

Examples::

    python -m mame_transfer.tune --config tuner_configs/vgg16.yaml --data /path/to/MAMe
    python -m mame_transfer.tune --config tuner_configs/vgg16.yaml --resume       # continue after an interrupt
    python -m mame_transfer.finetune --config tuning/vgg16/best.yaml              # retrain the winner

A search YAML has three sections: ``base`` (fixed :class:`~mame_transfer.config.TrainConfig` options of every
trial), ``tuner`` (algorithm, objective, budget, seed) and ``space`` (the searched options; the default of each
is the untuned ``TrainConfig`` default). Outputs go to ``tuning/<name>/``: ``trials.csv``/``trials.md``,
``score_per_trial.png``, ``score_vs_lr.png``, ``best.yaml`` (a ``finetune --config`` file) and ``search.json``.

Distributed search uses KerasTuner's own chief/worker engine: start one process with
``KERASTUNER_TUNER_ID=chief`` and one per worker with ``KERASTUNER_TUNER_ID=tuner<i>``, all with the same
``KERASTUNER_ORACLE_IP``/``KERASTUNER_ORACLE_PORT`` and the same ``--out`` folder (a shared file system).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import config as cfg
from .config import TrainConfig
from .errors import ConfigError, MameTransferError
from .fileio import atomic_path, markdown_table, write_json, write_text

log = logging.getLogger("mame_transfer")

ALGORITHMS = ("random", "hyperband", "bayesian")
OBJECTIVES = ("val_accuracy", "val_macro_f1")
SEARCHABLE = ("lr", "l2", "dropout", "head", "freeze_until", "optimizer", "batch_size")
REQUIRED_SPACE = ("lr", "l2", "dropout")
CACHED, FULL = "cached-features", "full-network"
PROJECT = "kt"  # KerasTuner's project folder inside the tuning folder
TRIAL_INFO = "mame_trial.json"


class TuneError(MameTransferError, RuntimeError):
    """The search could not produce a trustworthy result (failed trials, nothing completed)."""


# --------------------------------------------------------------------------------------------- search spec


@dataclass
class TunerSettings:
    """The ``tuner:`` section of a search YAML."""

    algorithm: str = "hyperband"
    objective: str = "val_accuracy"
    max_trials: int = 20
    max_epochs: int | None = None  # hyperband; default: base epochs
    factor: int = 3
    hyperband_iterations: int = 1
    num_initial_points: int | None = None  # bayesian
    executions_per_trial: int = 1
    max_consecutive_failed_trials: int = 3
    seed: int = 0
    features: str = "auto"  # auto | on | off: cached backbone features when the backbone is frozen whole

    def validate(self, source: str) -> "TunerSettings":
        for name, choices in (("algorithm", ALGORITHMS), ("objective", OBJECTIVES), ("features", ("auto", "on", "off"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{source}: tuner.{name} must be one of {', '.join(choices)}. "
                                  f"Received: {name}={getattr(self, name)!r}")
        for name in ("max_trials", "factor", "executions_per_trial", "max_consecutive_failed_trials"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{source}: tuner.{name} must be >= 1. Received: {name}={getattr(self, name)!r}")
        return self


@dataclass
class SearchSpec:
    """A whole search: name, fixed TrainConfig options, tuner settings and the searched space."""

    name: str
    base: dict[str, Any]
    tuner: TunerSettings
    space: dict[str, dict[str, Any]]
    source: str = "search config"

    def base_config(self, **overrides) -> TrainConfig:
        values = {**self.base, **{k: v for k, v in overrides.items() if v is not None}}
        return cfg.from_dict(TrainConfig, values, source=self.source)

    def to_dict(self) -> dict:
        return {"name": self.name, "base": dict(self.base), "tuner": dataclasses.asdict(self.tuner),
                "space": copy.deepcopy(self.space)}


def load_spec(path: str | Path) -> SearchSpec:
    """Read and check a search YAML (``name``, ``base``, ``tuner``, ``space``)."""
    path = Path(path)
    raw = cfg.load_yaml(path)
    unknown = sorted(set(raw) - {"name", "base", "tuner", "space"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; expected name, base, tuner, space")
    return spec_from_dict(raw, source=str(path), default_name=path.stem)


def spec_from_dict(raw: dict, *, source: str = "search config", default_name: str = "search") -> SearchSpec:
    base = {str(k).replace("-", "_"): v for k, v in (raw.get("base") or {}).items()}
    cfg.from_dict(TrainConfig, base, source=f"{source} base")  # unknown keys / bad values fail here
    tuner_raw = {str(k).replace("-", "_"): v for k, v in (raw.get("tuner") or {}).items()}
    names = {f.name for f in dataclasses.fields(TunerSettings)}
    bad = sorted(set(tuner_raw) - names)
    if bad:
        raise ConfigError(f"{source}: unknown tuner option(s) {', '.join(bad)}. Valid: {', '.join(sorted(names))}")
    tuner = TunerSettings(**tuner_raw).validate(source)
    space = {str(k).replace("-", "_"): dict(v or {}) for k, v in (raw.get("space") or {}).items()}
    missing = [k for k in REQUIRED_SPACE if k not in space]
    if missing:
        raise ConfigError(f"{source}: space must search {', '.join(REQUIRED_SPACE)}; missing {', '.join(missing)}")
    for key, entry in space.items():
        if key not in SEARCHABLE:
            raise ConfigError(f"{source}: space.{key} cannot be searched. Searchable: {', '.join(SEARCHABLE)}")
        if key in base:
            raise ConfigError(f"{source}: {key} is both fixed in base and searched in space; keep one")
        _check_entry(key, entry, source)
    return SearchSpec(str(raw.get("name") or default_name), base, tuner, space, source)


def default_of(key: str, base: dict | None = None) -> Any:
    """The untuned default of a searched option: the TrainConfig default (``freeze_until`` auto -> registry)."""
    value = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[key]
    if key == "freeze_until" and value == "auto" and base is not None:
        from . import backbones

        value = backbones.get(base.get("arch", TrainConfig.arch)).default_freeze
    return value


def _check_entry(key: str, entry: dict, source: str) -> None:
    allowed = {"min", "max", "sampling", "step", "values"}
    bad = sorted(set(entry) - allowed)
    if bad:
        raise ConfigError(f"{source}: space.{key} has unknown field(s) {', '.join(bad)}; use min/max/sampling/step "
                          f"or values")
    if "values" in entry:
        if not entry["values"]:
            raise ConfigError(f"{source}: space.{key}.values is empty")
        return
    if key not in ("lr", "l2", "dropout"):
        raise ConfigError(f"{source}: space.{key} needs a list of values. Received: {entry}")
    try:
        lo, hi = float(entry["min"]), float(entry["max"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{source}: space.{key} needs numeric min and max (or values). Received: {entry}") from None
    if not lo < hi:
        raise ConfigError(f"{source}: space.{key}: min must be < max. Received: min={lo}, max={hi}")
    sampling = entry.get("sampling", "linear")
    if sampling not in ("linear", "log"):
        raise ConfigError(f"{source}: space.{key}.sampling must be linear or log. Received: {sampling!r}")
    if sampling == "log" and lo <= 0:
        raise ConfigError(f"{source}: space.{key}: log sampling needs min > 0. Received: min={lo}")


def declare(hp, spec: SearchSpec) -> dict[str, Any]:
    """Declare the space on ``hp`` (defaults = untuned TrainConfig defaults); returns the chosen values."""
    values = {}
    for key, entry in spec.space.items():
        default = default_of(key, spec.base)
        if "values" in entry:
            choices = [str(v) if key in ("head", "freeze_until", "optimizer") else v for v in entry["values"]]
            if key == "batch_size":
                choices = [int(v) for v in choices]
            if default not in choices:
                raise ConfigError(f"{spec.source}: space.{key}.values {choices} must contain the untuned default "
                                  f"{default!r}")
            values[key] = hp.Choice(key, choices, default=default, ordered=key == "batch_size")
        else:
            lo, hi = float(entry["min"]), float(entry["max"])
            if not lo <= default <= hi:
                raise ConfigError(f"{spec.source}: space.{key} [{lo}, {hi}] must contain the untuned default {default}")
            step = entry.get("step")
            values[key] = hp.Float(key, lo, hi, step=float(step) if step else None,
                                   sampling=entry.get("sampling", "linear"), default=default)
    return values


def trial_config(spec: SearchSpec, values: dict, **overrides) -> TrainConfig:
    """The TrainConfig a trial trains with (base + searched values + overrides such as data)."""
    from . import finetune

    clean = {k: v for k, v in values.items() if k in SEARCHABLE}
    config = spec.base_config(**overrides)
    config = dataclasses.replace(config, **{k: (float(v) if k in ("lr", "l2", "dropout") else v)
                                            for k, v in clean.items()})
    return finetune.resolved_config(config)


def uses_cached_features(spec: SearchSpec) -> bool:
    """Whether trials train the head on cached global_pool features instead of the images."""
    frozen_whole = spec.base.get("freeze_until") == "all" and "freeze_until" not in spec.space
    if spec.tuner.features == "on" and not frozen_whole:
        raise ConfigError(f"{spec.source}: tuner.features on needs base.freeze_until: all and freeze_until out of the "
                          f"space (the backbone must be frozen whole)")
    return frozen_whole and spec.tuner.features != "off"


# --------------------------------------------------------------------------------------------- hypermodel


def _keras_tuner():
    import keras_tuner

    return keras_tuner


def _macro_f1_callback(val_x, val_y, batch_size: int):
    import keras

    from . import evaluate

    class MacroF1(keras.callbacks.Callback):
        """Adds ``val_macro_f1`` to the epoch logs (before the tuner's callbacks read them)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            proba = self.model.predict(val_x, batch_size=batch_size, verbose=0)
            classes = [str(i) for i in range(proba.shape[1])]
            logs["val_macro_f1"] = float(evaluate.compute_metrics(val_y, proba, classes)["macro_f1"])

    return MacroF1()


class MameHyperModel:
    """Factory of the ``keras_tuner.HyperModel`` (created lazily so importing this module stays cheap)."""

    def __new__(cls, spec: SearchSpec, search_data: "SearchData", overrides: dict):
        kt = _keras_tuner()

        class _HyperModel(kt.HyperModel):
            """``build(hp)`` reuses :func:`mame_transfer.model.build_model`; ``fit`` picks the batch size."""

            def __init__(self):
                super().__init__(name=f"mame_{spec.name}", tunable=True)
                self.spec, self.data, self.overrides = spec, search_data, dict(overrides)

            def config(self, hp) -> TrainConfig:
                return trial_config(self.spec, declare(hp, self.spec), **self.overrides)

            def build(self, hp):
                import keras

                from . import finetune, model as model_mod

                conf = self.config(hp)
                keras.utils.set_random_seed(conf.seed)
                weights = conf.weights if not self.data.cached else "none"  # head init is what matters
                net = model_mod.build_model(conf.arch, self.data.num_classes, image_size=conf.image_size,
                                            weights=weights, head=conf.head, dropout=conf.dropout, l2=conf.l2,
                                            freeze_until=conf.freeze_until, alpha=conf.alpha, pooling=conf.pooling)
                if self.data.cached:
                    # Same head layers (same initial weights) applied to the cached global_pool features.
                    inputs = x = keras.Input((self.data.feature_dim,), name="features")
                    after = False
                    for layer in net.layers:
                        if after:
                            x = layer(x)
                        after = after or layer.name == "global_pool"
                    net = keras.Model(inputs, x, name=f"{conf.arch}_head")
                steps = self.data.steps(conf.batch_size, conf.steps_per_epoch)
                finetune.compile_model(net, conf, self.data.num_classes, total_steps=steps * conf.epochs)
                return net

            def fit(self, hp, model, *args, **kwargs):
                import keras

                from . import finetune

                conf = self.config(hp)
                train_ds, val_ds, val_y = self.data.pipelines(conf)
                own = []
                if self.spec.tuner.objective == "val_macro_f1":
                    own.append(_macro_f1_callback(self.data.val_inputs(conf), val_y, conf.batch_size))
                if conf.early_stopping:
                    own.append(keras.callbacks.EarlyStopping(monitor=self.spec.tuner.objective, mode="max",
                                                             patience=conf.early_stopping))
                if conf.schedule == "plateau":
                    own.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=conf.plateau_factor,
                                                                 patience=conf.plateau_patience, min_lr=1e-7))
                kwargs["callbacks"] = own + list(kwargs.get("callbacks") or [])
                kwargs.setdefault("epochs", conf.epochs)
                cw = finetune.class_weights(self.data.train_labels, self.data.num_classes, conf.class_weight)
                steps = conf.steps_per_epoch if conf.steps_per_epoch else None
                if steps:
                    train_ds = train_ds.repeat()
                kwargs["verbose"] = kwargs.get("verbose", conf.verbose)
                return model.fit(train_ds, validation_data=val_ds, class_weight=cw, steps_per_epoch=steps, **kwargs)

        return _HyperModel()


# --------------------------------------------------------------------------------------------- data


class SearchData:
    """Train/val inputs of a search: image pipelines, or cached ``global_pool`` features (computed once)."""

    def __init__(self, spec: SearchSpec, folder: Path, overrides: dict):
        from . import finetune

        self.spec = spec
        base = trial_config(spec, {}, **overrides)
        self.base = base
        self.dataset = finetune.dataset_for(base)
        self.train_t, self.val_t = self.dataset.split("train"), self.dataset.split("val")
        self.num_classes = len(self.dataset.classes)
        self.train_labels = self.train_t["label_index"].to_numpy()
        self.val_labels = self.val_t["label_index"].to_numpy()
        self.cached = uses_cached_features(spec)
        self.feature_dim = None
        self.features: dict[str, np.ndarray] = {}
        if self.cached:
            self._load_features(folder / "features")

    @property
    def path(self) -> str:
        return CACHED if self.cached else FULL

    def steps(self, batch_size: int, limit: int | None) -> int:
        return limit or int(math.ceil(len(self.train_t) / batch_size))

    def _load_features(self, folder: Path) -> None:
        """Compute (or reload) pooled backbone features of train and val, augmentation off."""
        from . import backbones, data, model as model_mod

        b = self.base
        key = {"arch": b.arch, "alpha": b.alpha, "weights": b.weights, "image_size": b.image_size,
               "pooling": b.pooling, "train": self.train_t["path"].astype(str).tolist(),
               "val": self.val_t["path"].astype(str).tolist()}
        file = folder / "features.npz"
        if file.is_file() and (folder / "key.json").is_file():
            if json.loads((folder / "key.json").read_text()) == key:
                with np.load(file) as saved:
                    self.features = {k: saved[k] for k in ("train", "val")}
                self.feature_dim = int(self.features["train"].shape[1])
                log.info("cached features reloaded from %s", file)
                return
        import keras

        t0 = time.time()
        spec = backbones.get(b.arch)
        net = model_mod.build_model(b.arch, max(2, self.num_classes), image_size=b.image_size, weights=b.weights,
                                    head="none", dropout=0.0, l2=0.0, freeze_until="all", alpha=b.alpha,
                                    pooling=b.pooling)
        extractor = keras.Model(net.inputs, net.get_layer("global_pool").output)
        for split, table in (("train", self.train_t), ("val", self.val_t)):
            ds = data.make_pipeline(table, image_size=b.image_size, preprocess=spec.preprocess,
                                    batch_size=b.batch_size, training=False, augment=False, with_labels=False)
            self.features[split] = extractor.predict(ds, verbose=0).astype(np.float32)
        self.feature_dim = int(self.features["train"].shape[1])
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.features)
        write_json(folder / "key.json", key)
        log.info("cached features: train %s, val %s in %.1f s", self.features["train"].shape,
                 self.features["val"].shape, time.time() - t0)

    def val_inputs(self, conf: TrainConfig):
        if self.cached:
            return self.features["val"]
        return self.pipelines(conf)[1].map(lambda x, y: x)

    def pipelines(self, conf: TrainConfig):
        """(train dataset, val dataset, val labels) for one trial's batch size."""
        import tensorflow as tf

        from . import backbones, data

        if self.cached:
            train = tf.data.Dataset.from_tensor_slices((self.features["train"], self.train_labels.astype(np.int32)))
            train = train.shuffle(len(self.train_labels), seed=conf.seed, reshuffle_each_iteration=True)
            val = tf.data.Dataset.from_tensor_slices((self.features["val"], self.val_labels.astype(np.int32)))
            return (train.batch(conf.batch_size).prefetch(2), val.batch(conf.batch_size).prefetch(2),
                    self.val_labels)
        spec = backbones.get(conf.arch)
        pipe = dict(image_size=conf.image_size, preprocess=spec.preprocess, batch_size=conf.batch_size,
                    seed=conf.seed, cache=conf.cache)
        return (data.make_pipeline(self.train_t, training=True, augment=conf.augment, **pipe),
                data.make_pipeline(self.val_t, training=False, augment=False, **pipe), self.val_labels)


# --------------------------------------------------------------------------------------------- tuner


def _worker_index(tuner_id: str) -> int:
    match = re.search(r"(\d+)$", tuner_id)
    return int(match.group(1)) if match else -1


def make_tuner(spec: SearchSpec, data: SearchData, folder: Path, *, overwrite: bool = False, overrides=None):
    """The KerasTuner tuner of ``spec.tuner.algorithm`` with the package's trial logic mixed in."""
    kt = _keras_tuner()
    from keras_tuner.src.distribute import utils as dist_utils

    t = spec.tuner
    objective = kt.Objective(t.objective, "max")
    base_cls = {"random": kt.RandomSearch, "hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization}[t.algorithm]

    class MameTuner(base_cls):
        """Adds: no TensorBoard import, failures that count, per-trial info, checkpoint pruning, fast chief."""

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            # KerasTuner imports tensorboard here for every trial; without tensorboard installed that ImportError
            # makes every trial INVALID. We pass no TensorBoard callback, so there is nothing to configure.
            if any(cb.__class__.__name__ == "TensorBoard" for cb in callbacks):
                super()._configure_tensorboard_dir(callbacks, trial, execution)

        def run_trial(self, trial, *args, **kwargs):
            t0 = time.time()
            try:
                histories = super().run_trial(trial, *args, **kwargs)
            except kt.errors.FatalError:
                raise
            except Exception as exc:  # counted by max_consecutive_failed_trials (INVALID would not be)
                raise kt.errors.FailedTrialError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
            from keras_tuner.src.engine import tuner_utils

            metrics = tuner_utils.convert_to_metrics_dict(histories, self.oracle.objective)
            epochs = sum(len(h.history.get("loss", [])) for h in histories)
            info = {"tuner_id": self.tuner_id, "epochs": epochs, "seconds": round(time.time() - t0, 2),
                    "path": data.path}
            metrics = {**{k: float(v) for k, v in metrics.items()}, "trial_epochs": float(epochs),
                       "trial_seconds": info["seconds"], "worker_index": float(_worker_index(self.tuner_id))}
            write_json(Path(self.get_trial_dir(trial.trial_id)) / TRIAL_INFO, info)
            return metrics

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self._ran = getattr(self, "_ran", set()) | {trial.trial_id}
            self.prune(only=self._ran)

        def prune(self, only=None, final: bool = False) -> None:
            """Delete checkpoints of trials that are not the best (and cannot be continued by Hyperband)."""
            try:
                best = self.oracle.get_best_trials(1)
            except Exception:  # noqa: BLE001  (no completed trial yet)
                return
            keep = {b.trial_id for b in best}
            if t.algorithm == "hyperband" and not final:
                brackets = getattr(self.oracle, "_brackets", None)
                if brackets is None:
                    return  # distributed worker: bracket state lives on the chief; pruned at the end
                keep |= {e.get(k) for br in brackets for rnd in br["rounds"] for e in rnd for k in ("id", "past_id")}
            trials_dir = Path(self.project_dir)
            for d in trials_dir.glob("trial_*"):
                tid = d.name[len("trial_"):]
                if tid in keep or (only is not None and tid not in only):
                    continue
                for f in d.glob("checkpoint*"):
                    f.unlink(missing_ok=True)

        def search(self, *fit_args, **fit_kwargs):
            if dist_utils.is_chief_oracle():
                self.save()
                serve_chief(self.oracle)
                return
            super().search(*fit_args, **fit_kwargs)

    kwargs = dict(objective=objective, seed=t.seed, overwrite=overwrite, directory=str(folder), project_name=PROJECT,
                  executions_per_trial=t.executions_per_trial,
                  max_consecutive_failed_trials=t.max_consecutive_failed_trials)
    hm = MameHyperModel(spec, data, overrides or {})
    if t.algorithm == "hyperband":
        return MameTuner(hm, max_epochs=t.max_epochs or data.base.epochs, factor=t.factor,
                         hyperband_iterations=t.hyperband_iterations, **kwargs)
    if t.algorithm == "bayesian":
        return MameTuner(hm, max_trials=t.max_trials, num_initial_points=t.num_initial_points, **kwargs)
    return MameTuner(hm, max_trials=t.max_trials, **kwargs)


def serve_chief(oracle, poll_s: float = 0.5) -> None:
    """KerasTuner's chief gRPC server (its ``OracleServicer``), stopping within ``poll_s`` of the last trial.

    ``keras_tuner``'s own ``start_server`` polls every 20 s once the oracle has stopped; this loop is the same
    server with a short poll.
    """
    import grpc
    from concurrent import futures

    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    ip, port = os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(f"{ip}:{port}"):
        raise TuneError(f"chief could not listen on {ip}:{port} (KERASTUNER_ORACLE_IP/PORT); is the port taken?")
    server.start()
    log.info("chief oracle listening on %s:%s", ip, port)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=2)


# --------------------------------------------------------------------------------------------- results


def trials_table(oracle, folder: Path, spec: SearchSpec):
    """One row per trial: id, status, worker, path, every hyperparameter, score, epochs, seconds."""
    import pandas as pd

    rows = []
    for tid, trial in sorted(oracle.trials.items()):
        info_file = Path(folder) / PROJECT / f"trial_{tid}" / TRIAL_INFO
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}

        def metric(name):
            try:
                value = trial.metrics.get_best_value(name)
            except (ValueError, KeyError):
                return None
            return None if value is None else float(value)

        row = {"trial": tid, "status": str(trial.status)}
        worker = metric("worker_index")
        row["worker"] = info.get("tuner_id") or (f"tuner{int(worker)}" if worker is not None else None)
        row["path"] = info.get("path")
        for name, value in trial.hyperparameters.values.items():
            row[name] = value
        row["score"] = trial.score
        for name in ("val_accuracy", "val_macro_f1"):
            if metric(name) is not None:
                row[name] = metric(name)
        epochs, seconds = metric("trial_epochs"), metric("trial_seconds")
        row["epochs"] = int(epochs) if epochs is not None else info.get("epochs")
        row["seconds"] = seconds if seconds is not None else info.get("seconds")
        rows.append(row)
    return pd.DataFrame(rows)


def score_per_trial_figure(table, objective: str):
    """Score of each trial in run order, with the running best."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    done = table[table["score"].notna()]
    x = np.arange(1, len(done) + 1)
    ax.plot(x, done["score"], "o", label="trial")
    ax.plot(x, np.maximum.accumulate(done["score"].to_numpy(dtype=float)), "-", label="best so far")
    ax.set_xlabel("trial (in id order)")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def score_vs_lr_figure(table, objective: str):
    """Score against learning rate (log axis)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    done = table[table["score"].notna()]
    ax.scatter(done["lr"], done["score"], c="#4477aa")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_results(tuner, spec: SearchSpec, data: SearchData, folder: Path, overrides: dict) -> dict:
    """Check every trial really trained, then write the table, plots, best.yaml and search.json."""
    from . import plots

    oracle = tuner.oracle
    table = trials_table(oracle, folder, spec)
    if table.empty:
        raise TuneError(f"{folder}: the search ran no trial")
    write_text(folder / "trials.csv", table.to_csv(index=False))
    write_text(folder / "trials.md", markdown_table(table, float_format="{:.4g}", nan=""))
    bad = table[table["status"] != "COMPLETED"]
    if len(bad):
        first = oracle.trials[bad["trial"].iloc[0]]
        raise TuneError(f"{len(bad)} of {len(table)} trials did not complete "
                        f"({', '.join(f'{t}: {s}' for t, s in zip(bad['trial'], bad['status']))}); see "
                        f"{folder / 'trials.csv'}. First error:\n{(first.message or '')[-2000:]}")
    plots.save(score_per_trial_figure(table, spec.tuner.objective), folder / "score_per_trial.png")
    plots.save(score_vs_lr_figure(table, spec.tuner.objective), folder / "score_vs_lr.png")
    best = oracle.get_best_trials(1)[0]
    values = {k: v for k, v in best.hyperparameters.values.items() if k in SEARCHABLE}
    best_conf = trial_config(spec, values, **overrides)
    best_conf = dataclasses.replace(best_conf, out=None, overwrite=False, verbose=2)
    if data.cached:
        best_conf.augment = False  # the search trained without augmentation (features computed once)
    header = (f"# best trial {best.trial_id} of {folder} ({spec.tuner.algorithm}, {data.path}): "
              f"{spec.tuner.objective} {best.score:.4f}\n# retrain: python -m mame_transfer.finetune --config "
              f"{folder / 'best.yaml'}\n")
    write_text(folder / "best.yaml", header + cfg.dump_yaml(best_conf))
    tuner.prune(final=True)
    summary = {"name": spec.name, "algorithm": spec.tuner.algorithm, "objective": spec.tuner.objective,
               "path": data.path, "trials": int(len(table)), "completed": int((table["status"] == "COMPLETED").sum()),
               "best_trial": best.trial_id, "best_score": float(best.score), "best_values": values,
               "best_weights": str(Path(tuner.get_trial_dir(best.trial_id)) / "checkpoint.weights.h5"),
               "workers": sorted(str(w) for w in table["worker"].dropna().unique())}
    write_json(folder / "search.json", summary)
    return summary


# --------------------------------------------------------------------------------------------- entry points


def run_search(spec: SearchSpec, folder: str | Path, *, overwrite: bool = False, verbose: int = 1,
               **overrides) -> dict | None:
    """Run (or continue) a search in ``folder``; returns the summary (None on a distributed worker)."""
    from keras_tuner.src.distribute import utils as dist_utils

    folder = Path(folder)
    if overwrite and folder.exists() and not dist_utils.has_chief_oracle():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.setdefault("verbose", verbose)
    write_text(folder / "search.yaml", _yaml({**spec.to_dict(), "overrides": overrides}))
    data = SearchData(spec, folder, overrides)
    log.info("search %s: %s, objective %s, path %s, %d classes", spec.name, spec.tuner.algorithm,
             spec.tuner.objective, data.path, data.num_classes)
    tuner = make_tuner(spec, data, folder, overwrite=False, overrides=overrides)
    try:
        tuner.search(verbose=verbose)
    except RuntimeError as exc:
        if "consecutive failures" in str(exc):
            raise TuneError(f"search aborted: {exc}") from exc
        raise
    if dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle():
        return None  # the chief writes the merged results
    return write_results(tuner, spec, data, folder, overrides)


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mame_transfer.tune",
                                description="KerasTuner search over learning rate, L2, dropout and more.")
    p.add_argument("--config", help="search YAML (see tuner_configs/); optional with --resume")
    p.add_argument("--data", help="dataset folder (MAMe layout or class-per-folder)")
    p.add_argument("--demo", action="store_true", help="use the built-in demo set")
    p.add_argument("--out", help="tuning folder (default tuning/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the search saved in the tuning folder")
    p.add_argument("--overwrite", action="store_true", help="delete the tuning folder and start over")
    p.add_argument("--algorithm", choices=ALGORITHMS)
    p.add_argument("--objective", choices=OBJECTIVES)
    p.add_argument("--max-trials", type=int)
    p.add_argument("--epochs", type=int, help="epochs per trial (base.epochs)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int, help="seed of the tuner and of every trial")
    p.add_argument("--verbose", type=int, default=1, help="Keras verbosity inside trials")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("mame_transfer").setLevel(logging.INFO)
    if not logging.getLogger("mame_transfer").handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("[mame_transfer] %(message)s"))
        logging.getLogger("mame_transfer").addHandler(h)
    try:
        if args.resume and args.overwrite:
            raise ConfigError("--resume continues a search and --overwrite deletes it; pass one of them")
        saved_overrides: dict = {}
        if args.config:
            spec = load_spec(args.config)
        elif args.resume and args.out:
            saved = cfg.load_yaml(Path(args.out) / "search.yaml")
            saved_overrides = saved.pop("overrides", {}) or {}
            spec = spec_from_dict(saved, source=str(Path(args.out) / "search.yaml"))
        else:
            raise ConfigError("pass --config SEARCH.yaml (or --resume --out FOLDER)")
        folder = Path(args.out or Path("tuning") / spec.name)
        if args.resume:
            if not (folder / "search.yaml").is_file():
                raise ConfigError(f"--resume: no search to continue in {folder} (search.yaml missing)")
            saved = cfg.load_yaml(folder / "search.yaml")
            saved_overrides = {**(saved.get("overrides") or {}), **saved_overrides}
        for key, value in (("algorithm", args.algorithm), ("objective", args.objective),
                           ("max_trials", args.max_trials), ("seed", args.seed)):
            if value is not None:
                setattr(spec.tuner, key, value)
        spec.tuner.validate(spec.source)
        if args.seed is not None:
            spec.base["seed"] = args.seed
        if args.epochs is not None:
            spec.base["epochs"] = args.epochs
        if args.image_size is not None:
            spec.base["image_size"] = args.image_size
        overrides = {**saved_overrides, **{k: v for k, v in (("data", args.data), ("demo", args.demo or None))
                                           if v is not None}}
        overrides.pop("verbose", None)
        if overrides.get("data"):
            overrides["data"] = str(Path(overrides["data"]).resolve())
        summary = run_search(spec, folder, overwrite=args.overwrite, verbose=args.verbose, **overrides)
    except MameTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun with --resume to continue the search", file=sys.stderr)
        return 130
    if summary:
        print(f"best trial {summary['best_trial']}: {summary['objective']} {summary['best_score']:.4f} "
              f"({summary['trials']} trials, {summary['path']}); retrain with: python -m mame_transfer.finetune "
              f"--config {folder / 'best.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
