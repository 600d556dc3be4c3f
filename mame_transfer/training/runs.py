"""The run directory: one module owns its format (create, resume, finish, load) and the names of its files.

A run trains inside ``<run>.partial/`` and is renamed to ``<run>/`` only once every artefact is written, so a
directory without the suffix is always complete. While training, ``<run>.partial/resume_state/`` holds what an
interrupted run needs to continue (:class:`ResumeState`).

Files of a finished run::

    model.keras            the model with the best val accuracy (input: preprocessed images)
    config.yaml            the resolved TrainConfig (``finetune --config`` reproduces the run)
    class_index.json       class name -> output index
    history.csv            one row per epoch; training_curves.png plots it
    metrics.json           per evaluated split: top-k, F1, per-class report, confusion matrix
    predictions[_S].csv, classification_report[_S].txt, confusion_matrix[_S].png   per split S
    run.log                what ran: sizes, phases, resume, training route
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import PARTIAL, atomic_path, write_json, write_text

MODEL = "model.keras"
CONFIG = "config.yaml"
CLASS_INDEX = "class_index.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
TRAINING_CURVES = "training_curves.png"
RUN_LOG = "run.log"
BEST_WEIGHTS = "best.weights.h5"
STATE_DIR = "resume_state"
PREFIX_CACHE_DIR = "prefix_cache"
FINISHED = (MODEL, CONFIG, CLASS_INDEX)  # what every finished run holds (metrics.json too, since 0.1)


# --------------------------------------------------------------------------------------------- configs and data


def dataset_for(config: TrainConfig, require: Sequence[str] = ("train", "val"), *, check_images: bool | None = None):
    """Load the dataset a config names (``--demo`` generates the demo set on first use).

    A fold of a cross-validation (``config.fold`` > 0) gets its own train/val split of train+val
    (:func:`mame_transfer.datasets.folds.fold_dataset`: stratified by ``config.seed``), so every reader of the run
    (evaluate, ensemble, report) sees the split it was trained on.

    Args:
        require: splits that must be present.
        check_images: override ``config.check_images`` (readers of a finished run skip the image check).
    """
    from mame_transfer.datasets import demo
    from mame_transfer.datasets.layouts import load_dataset

    if config.demo:
        path = demo.ensure_demo()
    elif config.data:
        path = config.data
    else:
        raise ConfigError("no dataset given: pass --data PATH (MAMe folder or class-per-folder set) or --demo")
    check = config.check_images if check_images is None else check_images
    if config.fold:
        from mame_transfer.datasets.folds import fold_dataset

        dataset = load_dataset(path, toy=config.toy, images=config.images, museum=config.museum, check_files=check,
                               require=tuple(s for s in require if s not in ("train", "val")))
        dataset = fold_dataset(dataset, config.folds, config.fold, config.seed)
        for split in require:
            dataset.split(split)  # the same error as load_dataset's when a required split is empty
        return dataset
    return load_dataset(path, toy=config.toy, images=config.images, museum=config.museum, check_files=check,
                        require=tuple(require))


def resolved_config(config: TrainConfig) -> TrainConfig:
    """Fill ``auto`` values (image size, freeze block) with what this run will actually use."""
    from mame_transfer.models import backbones

    spec = backbones.get(config.arch)
    largest = max(int(s) for s in str(config.scales).split(",") if s.strip()) if config.scales else None
    return dataclasses.replace(config, arch=spec.name, image_size=config.image_size or largest or spec.default_size,
                               freeze_until=spec.resolve_freeze(config.freeze_until))


# --------------------------------------------------------------------------------------------- creating


def _config_key(config: TrainConfig) -> dict:
    """The fields that identify a run's configuration (not where it is written or how verbosely)."""
    d = config.to_dict()
    for k in ("out", "overwrite", "verbose", "runs_dir"):
        d.pop(k, None)
    return d


def find_work_dir(config: TrainConfig) -> tuple[Path, Path, bool]:
    """``(final run dir, work dir, resuming?)`` for a resolved config.

    With ``--out`` the work dir is ``<out>.partial``; without, an interrupted run with the same configuration in
    ``--runs-dir`` is resumed, else a new ``<arch>-<timestamp>`` directory is chosen.
    """
    if config.out:
        final = Path(config.out)
        work = final.with_name(final.name + PARTIAL)
        if final.exists() and any(final.iterdir()):
            if not config.overwrite:
                raise ConfigError(f"run directory {final} already exists; pass --overwrite to replace it or "
                                  f"choose another --out")
        return final, work, ResumeState(work).exists()
    runs = Path(config.runs_dir)
    key = _config_key(config)
    if runs.is_dir():
        for cand in sorted(runs.glob(f"{config.arch}-*{PARTIAL}"), reverse=True):
            try:
                saved = cfg.load_yaml(cand / CONFIG)
            except ConfigError:
                continue
            saved.pop("out", None)
            if {k: saved.get(k) for k in key} == key and ResumeState(cand).exists():
                return cand.with_name(cand.name[: -len(PARTIAL)]), cand, True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = runs / f"{config.arch}-{stamp}"
    n = 1
    while final.exists() or final.with_name(final.name + PARTIAL).exists():
        n += 1
        final = runs / f"{config.arch}-{stamp}-{n}"
    return final, final.with_name(final.name + PARTIAL), False


def start(work: Path, config: TrainConfig, class_index: dict[str, int]) -> None:
    """Create the work dir and write what identifies the run (``config.yaml``, ``class_index.json``)."""
    work.mkdir(parents=True, exist_ok=True)
    write_text(work / CONFIG, cfg.dump_yaml(config))
    write_json(work / CLASS_INDEX, class_index)


def finish(work: Path, final: Path) -> Path:
    """Drop the resume state and caches of a fully written work dir and give it its final name."""
    shutil.rmtree(work / STATE_DIR, ignore_errors=True)
    shutil.rmtree(work / PREFIX_CACHE_DIR, ignore_errors=True)
    (work / BEST_WEIGHTS).unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return final


# --------------------------------------------------------------------------------------------- resuming


class ResumeState:
    """Saves, after every epoch, what is needed to continue: weights, optimizer variables, callback state.

    Files in ``<run>.partial/resume_state/``: ``epoch-<n>.weights.h5``, ``epoch-<n>.optimizer.npz`` and
    ``state.json`` (written last, atomically, pointing at them), so a kill at any instant leaves either the
    previous consistent state or the new one.
    """

    def __init__(self, work_dir: Path):
        self.dir = Path(work_dir) / STATE_DIR
        self.path = self.dir / "state.json"

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = json.loads(self.path.read_text())
        if not (self.dir / state["weights"]).is_file():
            return None
        return state

    def save(self, model, epoch: int, phase: int, callbacks_state: dict, best: dict, weights_model=None) -> None:
        """Save after ``epoch``; ``weights_model`` is the full network when ``model`` is a cached-route suffix."""
        self.dir.mkdir(parents=True, exist_ok=True)
        weights = f"epoch-{epoch}.weights.h5"
        opt = f"epoch-{epoch}.optimizer.npz"
        with atomic_path(self.dir / weights) as tmp:
            (model if weights_model is None else weights_model).save_weights(tmp)
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


def truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history rows of epochs that finished after the last saved state (killed in between)."""
    import pandas as pd

    if not path.is_file():
        return
    try:
        hist = pd.read_csv(path)
    except Exception:  # noqa: BLE001  (a history cut mid-line is rewritten from the next epoch)
        path.unlink()
        return
    if "epoch" in hist and (hist["epoch"] >= epochs_done).any():
        write_text(path, hist[hist["epoch"] < epochs_done].to_csv(index=False))


# --------------------------------------------------------------------------------------------- reading


def check_finished(run_dir: str | Path, files: Sequence[str] = FINISHED) -> Path:
    """``run_dir`` as a Path if it holds ``files``; else a ConfigError naming the first missing one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a finished run directory: it does not exist")
    for name in files:
        if not (run_dir / name).is_file():
            hint = (f" (a '{PARTIAL}' run is still training or was interrupted: rerun the same finetune command)"
                    if run_dir.name.endswith(PARTIAL) else "")
            raise ConfigError(f"{run_dir} is not a finished run directory: {name} is missing{hint}")
    return run_dir


def read_config(run_dir: str | Path) -> TrainConfig:
    """The resolved configuration a run was trained with."""
    path = Path(run_dir) / CONFIG
    return cfg.from_dict(TrainConfig, cfg.load_yaml(path), source=str(path))


def read_classes(run_dir: str | Path) -> list[str]:
    """Class names in output order, from ``class_index.json``."""
    index = json.loads((Path(run_dir) / CLASS_INDEX).read_text())
    return [c for c, _ in sorted(index.items(), key=lambda kv: kv[1])]


def read_metrics(run_dir: str | Path) -> dict:
    """``metrics.json`` of a run ({} when absent)."""
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run_dir: str | Path, key: str, metrics: dict) -> dict:
    """Add or replace one entry (a split, e.g. ``test`` or ``val_flip``) of ``metrics.json``."""
    allm = read_metrics(run_dir)
    allm[key] = metrics
    write_json(Path(run_dir) / METRICS, allm)
    return allm


def load_run(run_dir: str | Path):
    """``(model, resolved config, class list)`` of a finished run directory."""
    import keras

    run_dir = check_finished(run_dir)
    model = keras.models.load_model(run_dir / MODEL, compile=False)
    return model, read_config(run_dir), read_classes(run_dir)
