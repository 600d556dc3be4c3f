"""The run directory: one module owns its format (create, resume, finish, load) and the names of its files.

A run trains inside ``<run>.partial/`` and is renamed to ``<run>/`` only once every artefact is written, so a
directory without the suffix is always complete. While training, ``<run>.partial/resume_state/`` holds what an
interrupted run needs to continue (:class:`ResumeState`) and the :func:`fingerprint` of the configuration and data
it was started with: a rerun with another one is refused instead of mixing two runs. :func:`open_run` holds the
run's lock (one writer at a time) and refuses any ``--out`` folder that is not a run directory.

Files of a finished run::

    model.keras            the model with the best val accuracy (input: preprocessed images)
    config.yaml            the resolved TrainConfig (``finetune --config`` reproduces the run; data path absolute)
    class_index.json       class name -> output index
    splits.csv             every image of the run's dataset: file (absolute), label, subset (``--data`` accepts it)
    history.csv            one row per epoch; training_curves.png plots it
    metrics.json           per evaluated split: top-k, F1, per-class report, confusion matrix
    predictions[_S].csv, classification_report[_S].txt, confusion_matrix[_S].png   per split S
    run.log                what ran: sizes, phases, resume, training route
    tensorboard/           with ``--tensorboard``: TensorBoard event files (train/ and validation/)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError, OutputError
from mame_transfer.core.fileio import (
    PARTIAL,
    atomic_path,
    check_output,
    locked,
    mark,
    replace_folder,
    write_json,
    write_text,
)

log = logging.getLogger("mame_transfer")

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
FINGERPRINT = "fingerprint.json"  # in STATE_DIR: the configuration and data the interrupted run was started with
TENSORBOARD_DIR = "tensorboard"  # with --tensorboard: the run's TensorBoard logs
SPLITS = "splits.csv"
FINISHED = (MODEL, CONFIG, CLASS_INDEX)  # what every finished run holds (metrics.json too, since 0.1)
RUN_KIND = "run"  # the owner kind of a run directory (mame_transfer.core.fileio.check_output)
# Options that do not change what a run computes: a resumed run may differ in them (more epochs, less output).
NOT_FINGERPRINTED = ("epochs", "verbose", "out", "overwrite", "runs_dir", "check_images", "image_cache", "data",
                     "images")


# --------------------------------------------------------------------------------------------- configs and data


def dataset_for(config: TrainConfig, require: Sequence[str] = ("train", "val"), *, check_images: bool | None = None,
                run_dir: str | Path | None = None):
    """Load the dataset a config names (``--demo`` generates the demo set on first use).

    A fold of a cross-validation (``config.fold`` > 0) gets its own train/val split of train+val
    (:func:`mame_transfer.datasets.folds.fold_dataset`: stratified by ``config.seed``), so every reader of the run
    (evaluate, ensemble, report) sees the split it was trained on.

    Args:
        require: splits that must be present.
        check_images: override ``config.check_images`` (readers of a finished run skip the image check).
        run_dir: a finished run trained on this config: when its data were flat class folders (split on reading),
            the split recorded in its ``splits.csv`` is read instead, so images added to the folders since can
            never move a training image into val or test.
    """
    from mame_transfer.datasets import demo
    from mame_transfer.datasets.layouts import detect_layout, load_dataset

    if config.demo:
        path = demo.ensure_demo()
    elif config.data:
        path = config.data
    else:
        raise ConfigError("no dataset given: pass --data PATH (MAMe folder or class-per-folder set) or --demo")
    check = config.check_images if check_images is None else check_images
    if run_dir is not None and (Path(run_dir) / SPLITS).is_file() and not config.demo \
            and detect_layout(path) == "flat":
        return load_dataset(Path(run_dir) / SPLITS, museum=config.museum, check_files=check, require=tuple(require))
    if config.fold:
        from mame_transfer.datasets.folds import fold_dataset

        dataset = load_dataset(path, toy=config.toy, images=config.images, museum=config.museum, check_files=check,
                               require=tuple(s for s in require if s not in ("train", "val")),
                               val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                               split_seed=config.split_seed)
        dataset = fold_dataset(dataset, config.folds, config.fold, config.seed)
        for split in require:
            dataset.split(split)  # the same error as load_dataset's when a required split is empty
        return dataset
    return load_dataset(path, toy=config.toy, images=config.images, museum=config.museum, check_files=check,
                        require=tuple(require), val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                        split_seed=config.split_seed)


def resolved_config(config: TrainConfig) -> TrainConfig:
    """Fill ``auto`` values (image size, freeze block) with what this run will actually use; data paths absolute
    (so ``evaluate`` and ``predict`` work from any folder)."""
    from mame_transfer.models import backbones

    spec = backbones.get(config.arch)
    largest = max(int(s) for s in str(config.scales).split(",") if s.strip()) if config.scales else None
    return dataclasses.replace(config, arch=spec.name, image_size=config.image_size or largest or spec.default_size,
                               freeze_until=spec.resolve_freeze(config.freeze_until),
                               data=os.path.abspath(config.data) if config.data else config.data,
                               images=os.path.abspath(config.images) if config.images else config.images)


# --------------------------------------------------------------------------------------------- creating


def _config_key(config: TrainConfig) -> dict:
    """The fields that identify a run's configuration (not where it is written or how verbosely)."""
    d = config.to_dict()
    for k in ("out", "overwrite", "verbose", "runs_dir", "tensorboard"):
        d.pop(k, None)
    return d


def fingerprint(config: TrainConfig, dataset) -> dict:
    """What a run computes from: every option that changes the result, and the identity of its data.

    Data identity: the dataset's source and image folder, classes, rows per split and a hash of every row's image,
    label, split and file size/mtime (:func:`~mame_transfer.datasets.tables.content_hash`). Not included:
    :data:`NOT_FINGERPRINTED` (``--epochs``, verbosity, where the run is written...).
    """
    from mame_transfer.datasets.tables import content_hash

    def resolved(value):  # the same file named by two spellings of its path is the same input
        return str(Path(value).resolve()) if value and Path(str(value)).exists() else value

    options = {k: v for k, v in config.to_dict().items() if k not in NOT_FINGERPRINTED}
    options["weights"], options["init_from"] = resolved(options["weights"]), resolved(options["init_from"])
    data = {"source": str(dataset.source), "images": str(dataset.image_root), "classes": list(dataset.classes),
            "rows": {s: int((dataset.table["subset"] == s).sum()) for s in dataset.subsets},
            "files": content_hash(dataset.table)}
    return json.loads(json.dumps({"options": options, "data": data}, default=str))


def fingerprint_changes(saved: dict, now: dict) -> list[str]:
    """What differs between two fingerprints, one ``name: saved -> now`` item per option or data field."""
    out = []
    for section in ("options", "data"):
        a, b = saved.get(section, {}), now.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                what = key if section == "options" else f"data {key}"
                if key == "files":
                    out.append("data files (an image was added, removed, relabelled or modified)")
                elif key == "classes" and isinstance(a.get(key), list) and isinstance(b.get(key), list):
                    out.append(f"data classes {_short(a[key])} -> {_short(b[key])}")
                else:
                    out.append(f"{what}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def _short(items: list) -> str:
    return "[" + ", ".join(map(repr, items[:6])) + (f", ... ({len(items)} in all)" if len(items) > 6 else "") + "]"


def is_run_dir(path: Path) -> bool:
    """A run directory (finished or ``.partial``) written before folders carried an owner file."""
    return (path / CONFIG).is_file() and ((path / CLASS_INDEX).is_file() or (path / STATE_DIR).is_dir())


def find_work_dir(config: TrainConfig, fp: dict | None = None) -> tuple[Path, Path, bool]:
    """``(final run dir, work dir, resuming?)`` for a resolved config.

    With ``--out`` the work dir is ``<out>.partial``; without, an interrupted run in ``--runs-dir`` with the same
    configuration (and, given ``fp``, the same :func:`fingerprint`) is resumed, else a new
    ``<arch>-<timestamp>`` directory is chosen. The folders are checked by :func:`open_run`, under the run's lock.
    """
    if config.out:
        final = Path(config.out)
        work = final.with_name(final.name + PARTIAL)
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
            if {k: saved.get(k) for k in key} == key and ResumeState(cand).exists() and \
                    (fp is None or ResumeState(cand).fingerprint() in (None, fp)):
                return cand.with_name(cand.name[: -len(PARTIAL)]), cand, True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = runs / f"{config.arch}-{stamp}"
    n = 1
    while final.exists() or final.with_name(final.name + PARTIAL).exists():
        n += 1
        final = runs / f"{config.arch}-{stamp}-{n}"
    return final, final.with_name(final.name + PARTIAL), False


@contextlib.contextmanager
def open_run(config: TrainConfig, dataset) -> Iterator[tuple[Path, Path, bool]]:
    """Lock the run, check its folders and fingerprint, create the work dir; yields ``(final, work, resuming)``.

    * ``--out`` must be new, empty or a run directory (replaced only with ``--overwrite``); ``<out>.partial``
      must be an interrupted run. Any other folder is refused, with or without ``--overwrite``.
    * An interrupted run is resumed only when its :func:`fingerprint` equals this one; otherwise the rerun is
      refused, naming what differs, unless ``--overwrite`` discards the interrupted run.
    * A second process on the same run stops at once, naming the one holding the lock.
    """
    fp = fingerprint(config, dataset)
    final, work, resuming = find_work_dir(config, fp)
    with locked(final, "finetune"):
        check_output(final, RUN_KIND, overwrite=config.overwrite, legacy=is_run_dir, what="finished run",
                     flag="--out")
        check_output(work, RUN_KIND, additive=True, legacy=is_run_dir, what="interrupted run",
                     flag="--out (its .partial folder)")
        resume = ResumeState(work)
        resuming = resume.exists()
        if resuming:
            saved = resume.fingerprint()
            changes = fingerprint_changes(saved, fp) if saved is not None else \
                _legacy_changes(work, config, dataset.class_index)
            if changes and not config.overwrite:
                raise OutputError(
                    f"{work} holds an interrupted run started with another configuration or other data: "
                    f"{'; '.join(changes)}. Continuing it would mix two runs. Pass --overwrite to discard it and "
                    f"start over, or choose another --out.")
            if changes:
                log.warning("%s: discarding the interrupted run (--overwrite): %s", work, "; ".join(changes))
                resuming = False
        if not resuming:  # a fresh start: nothing of an earlier attempt may leak into this run
            for stale in (STATE_DIR, HISTORY, BEST_WEIGHTS):
                target = work / stale
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        start(work, config, dataset)
        write_json(resume.dir / FINGERPRINT, fp)
        yield final, work, resuming


def _legacy_changes(work: Path, config: TrainConfig, class_index: dict) -> list[str]:
    """Differences to an interrupted run saved before fingerprints existed (its config.yaml and classes)."""
    try:
        saved = _config_key(cfg.from_dict(TrainConfig, cfg.load_yaml(work / CONFIG), source=str(work / CONFIG)))
        classes = json.loads((work / CLASS_INDEX).read_text())
    except (ConfigError, OSError, ValueError):
        return [f"{work / CONFIG} or {CLASS_INDEX} is unreadable"]
    now = _config_key(config)
    out = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(now)
           if k not in NOT_FINGERPRINTED and saved.get(k) != now.get(k)]
    return out + ([f"classes {sorted(classes)} -> {sorted(class_index)}"] if classes != class_index else [])


def start(work: Path, config: TrainConfig, dataset) -> None:
    """Create the work dir and write what identifies the run (``config.yaml``, ``class_index.json``, ``splits.csv``)."""
    from mame_transfer.datasets.folders import write_split_list

    work.mkdir(parents=True, exist_ok=True)
    mark(work, RUN_KIND)
    write_text(work / CONFIG, cfg.dump_yaml(config))
    write_json(work / CLASS_INDEX, dataset.class_index)
    write_split_list(dataset, work / SPLITS)


def finish(work: Path, final: Path) -> Path:
    """Drop the resume state and caches of a fully written work dir and give it its final name.

    An existing ``final`` is the run's own earlier output, checked by :func:`open_run`; it is replaced only now
    that the new run is complete.
    """
    shutil.rmtree(work / STATE_DIR, ignore_errors=True)
    shutil.rmtree(work / PREFIX_CACHE_DIR, ignore_errors=True)
    (work / BEST_WEIGHTS).unlink(missing_ok=True)
    return replace_folder(work, final)


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

    def fingerprint(self) -> dict | None:
        """The :func:`fingerprint` the run was started with (None for runs saved before fingerprints)."""
        try:
            return json.loads((self.dir / FINGERPRINT).read_text())
        except (OSError, ValueError):
            return None

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
    path = run_dir / MODEL
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path} is corrupt: not a complete .keras archive ({path.stat().st_size} bytes; cut short by "
                          f"a copy or a full disk?). Copy it again or retrain the run.")
    try:  # safe_mode (the default) stays on: a .keras file from a stranger runs no Python of its own
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001  (Keras raises ValueError, OSError, KeyError... on damaged archives)
        raise ConfigError(f"{path} is corrupt or not a mame_transfer model ({type(exc).__name__}: "
                          f"{str(exc).strip()[:300]}). Copy it again or retrain the run.") from None
    return model, read_config(run_dir), read_classes(run_dir)
