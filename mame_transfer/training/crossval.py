"""K-fold cross-validation of a fine-tuning recipe: ``finetune --folds K``.

Train+val is cut into K stratified, seeded folds (:mod:`mame_transfer.datasets.folds`); the test split is never
touched. Fold ``i`` trains on the other folds, picks its best epoch and stops early on a stratified slice of its
own training images (``--select-on train-holdout`` is implied), and is scored once on fold ``i``. Every fold is an
ordinary run directory; the cross-validation folder holds them and the summary::

    <cv>/config.yaml             the resolved configuration (folds: K, fold: 0)
    <cv>/class_index.json
    <cv>/fold-1/ ... fold-K/     one finished run per fold (its val = its fold)
    <cv>/cv_summary.json, .md    per fold and over folds: mean and 95 % Student-t interval of top-1 and macro F1;
                                 the pooled out-of-fold scores (each train+val image scored once) with bootstrap
                                 intervals; per-fold test scores and the fold ensemble's test score
    <cv>/oof_predictions.csv     image, label, fold, predicted class and every class's probability (+ _flip ...)
    <cv>/ensemble/               the fold models' averaged probabilities on test: metrics.json and per-split files

The folder trains as ``<cv>.partial`` and gets its final name with the summary. Rerunning the command resumes: a
finished fold is kept, an interrupted one continues from its last epoch. ``--fold i`` trains one fold only (e.g.
one per machine, same ``--out`` on a shared disk); the run without ``--fold`` then writes the summary. With the
prefix cache, the frozen layers are computed once for every train+val image and shared by all folds
(:mod:`mame_transfer.training.routes`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import (
    PARTIAL,
    check_output,
    locked,
    mark,
    markdown_table,
    replace_folder,
    write_json,
    write_text,
)
from mame_transfer.inference.metrics import (
    PREDICTIONS,
    PROBABILITIES,
    compute_metrics,
    format_ci,
    mean_ci,
    split_file,
    write_split_artifacts,
)
from mame_transfer.training import runs

log = logging.getLogger("mame_transfer")
SUMMARY_JSON, SUMMARY_MD, OOF = "cv_summary.json", "cv_summary.md", "oof_predictions.csv"
CV_KIND = "cross-validation"  # the owner kind of a cross-validation folder
ENSEMBLE_DIR = "ensemble"
POOL_SUBSETS = ("train", "val")


def fold_dir(root: Path, fold: int) -> Path:
    return Path(root) / f"fold-{fold}"


def _key(config: TrainConfig) -> dict:
    d = config.to_dict()
    for k in ("out", "overwrite", "verbose", "runs_dir", "fold"):
        d.pop(k, None)
    return d


def find_cv_dir(config: TrainConfig) -> tuple[Path, Path]:
    """``(final folder, work folder)``: ``--out``, else an interrupted cross-validation of the same configuration in
    ``--runs-dir``, else a new ``<arch>-cv<K>-<timestamp>``."""
    if config.out:
        final = Path(config.out)
        return final, final.with_name(final.name + PARTIAL)
    parent = Path(config.runs_dir)
    for cand in sorted(parent.glob(f"{config.arch}-cv{config.folds}-*{PARTIAL}"), reverse=True):
        try:
            saved = cfg.from_dict(TrainConfig, cfg.load_yaml(cand / runs.CONFIG))
        except ConfigError:
            continue
        if _key(saved) == _key(config):
            return cand.with_name(cand.name[: -len(PARTIAL)]), cand
    final = parent / f"{config.arch}-cv{config.folds}-{time.strftime('%Y%m%d-%H%M%S')}"
    return final, final.with_name(final.name + PARTIAL)


def cross_validate(config: TrainConfig) -> Path:
    """Train the folds of ``config`` (all, or ``config.fold``) and, when all are done, write the summary.

    Returns:
        The finished cross-validation folder, or the ``.partial`` work folder after a single ``--fold``.
    """
    from mame_transfer.core.cli import log_to_stdout

    config = runs.resolved_config(config.validate())
    if not config.folds:
        raise ConfigError("cross_validate needs folds >= 2")
    log_to_stdout(config.verbose)
    dataset = runs.dataset_for(dataclasses.replace(config, fold=0), require=("train",))  # val is optional here
    final, work = find_cv_dir(config)
    # One process holds the folder, except with --fold: K machines then train one fold each in the same --out
    # (each fold's run directory has its own lock).
    with contextlib.nullcontext() if config.fold else locked(final, "finetune --folds"):
        # --overwrite replaces only an earlier cross-validation; any other folder is refused whatever the flags.
        check_output(final, CV_KIND, overwrite=config.overwrite, legacy=lambda p: (p / SUMMARY_JSON).is_file(),
                     what="cross-validation")
        check_output(work, CV_KIND, additive=True, legacy=lambda p: (p / runs.CONFIG).is_file(),
                     what="interrupted cross-validation", flag="--out (its .partial folder)")
        return _cross_validate(config, dataset, final, work)


def _cross_validate(config: TrainConfig, dataset, final: Path, work: Path) -> Path:
    """The body of :func:`cross_validate`, with its folders checked (and locked unless one ``--fold`` runs)."""
    from mame_transfer.training.trainer import train

    if config.overwrite:
        shutil.rmtree(work, ignore_errors=True)  # our own interrupted cross-validation (checked)
    elif (work / runs.CONFIG).is_file() and _key(runs.read_config(work)) != _key(config):
        raise ConfigError(f"{work} holds an interrupted cross-validation of another configuration; rerun that "
                          f"command to finish it, or pass --overwrite to start this one there")
    runs.start(work, dataclasses.replace(config, fold=0), dataset)
    mark(work, CV_KIND)
    pool = dataset.table[dataset.table["subset"].isin(POOL_SUBSETS)].reset_index(drop=True)
    todo = [config.fold] if config.fold else list(range(1, config.folds + 1))
    for i in todo:
        out = fold_dir(work, i)
        if (out / runs.METRICS).is_file() and (out / runs.MODEL).is_file():
            log.info("fold %d of %d: finished earlier (%s)", i, config.folds, out)
            continue
        log.info("fold %d of %d -> %s", i, config.folds, out)
        train(dataclasses.replace(config, fold=i, out=str(out), overwrite=False), pool=(pool, work))
    missing = [i for i in range(1, config.folds + 1) if not (fold_dir(work, i) / runs.METRICS).is_file()]
    if missing:
        log.info("folds still to train: %s; rerun without --fold to train them and write the summary",
                 ", ".join(map(str, missing)))
        return work
    summary = summarize(work, config, dataset.classes, dataset)
    shutil.rmtree(work / runs.PREFIX_CACHE_DIR, ignore_errors=True)
    replace_folder(work, final)  # an earlier cross-validation at --out (checked) is replaced only now
    log.info("cross-validation complete: %s (val top-1 %s over %d folds)", final,
             format_ci(summary["over_folds"]["val"]["top1"]["mean"], summary["over_folds"]["val"]["top1"]["ci"]),
             config.folds)
    return final


def _oof(work: Path, k: int, key: str, classes) -> tuple[pd.DataFrame, np.ndarray]:
    """Out-of-fold rows of one metrics key (``val``, ``val_flip``...): every pool image once, by its fold's model."""
    frames, probas = [], []
    for i in range(1, k + 1):
        preds = pd.read_csv(fold_dir(work, i) / split_file(PREDICTIONS, key))
        frames.append(pd.DataFrame({"image": preds["image"], "label": preds["true"], "fold": i}))
        probas.append(np.load(fold_dir(work, i) / split_file(PROBABILITIES, key)))
    return pd.concat(frames, ignore_index=True), np.concatenate(probas)


def summarize(work: Path, config: TrainConfig, classes, dataset) -> dict:
    """Write ``cv_summary.json`` / ``.md``, ``oof_predictions.csv`` and the fold ensemble on test; return the summary."""
    k = config.folds
    per_fold = [runs.read_metrics(fold_dir(work, i)) for i in range(1, k + 1)]
    keys = [key for key in per_fold[0] if key != "holdout" and all(key in m for m in per_fold)]
    index = {c: i for i, c in enumerate(classes)}
    summary = {"folds": k, "seed": config.seed, "test_untouched": True, "per_fold": [], "over_folds": {},
               "out_of_fold": {}}
    for i, m in enumerate(per_fold, start=1):
        row = {"fold": i}
        for key in keys + (["holdout"] if "holdout" in m else []):
            row[key] = {f: m[key][f] for f in ("n", "top1", "top1_ci", "macro_f1", "macro_f1_ci") if f in m[key]}
        summary["per_fold"].append(row)
    for key in keys:
        summary["over_folds"][key] = {f: mean_ci([m[key][f] for m in per_fold]) for f in ("top1", "macro_f1")}
    oof_frame = None
    for key in (k_ for k_ in keys if k_.startswith("val")):
        frame, proba = _oof(work, k, key, classes)
        y = frame["label"].map(index).to_numpy()
        m = compute_metrics(y, proba, classes)
        summary["out_of_fold"][key] = {f: m[f] for f in ("n", "top1", "top1_ci", "macro_f1", "macro_f1_ci")}
        suffix = key[len("val"):]
        if oof_frame is None:
            oof_frame = frame
        oof_frame[f"predicted{suffix}"] = np.asarray(classes)[proba.argmax(1)]
        for c, col in zip(classes, proba.T):
            oof_frame[f"p{suffix}:{c}"] = np.round(col, 6)
    write_text(work / OOF, oof_frame.to_csv(index=False))
    if "test" in dataset.subsets:
        summary["ensemble_test"] = _ensemble_test(work, k, classes, dataset)
    write_json(work / SUMMARY_JSON, summary)
    write_text(work / SUMMARY_MD, summary_markdown(summary))
    return summary


def _ensemble_test(work: Path, k: int, classes, dataset) -> dict:
    """The mean of the fold models' test probabilities (each written by its run), scored on test."""
    table = dataset.split("test")
    mix = np.mean([np.load(fold_dir(work, i) / split_file(PROBABILITIES, "test")) for i in range(1, k + 1)], axis=0)
    m = write_split_artifacts(work / ENSEMBLE_DIR, "test", table, mix, classes, final=True)
    write_json(work / ENSEMBLE_DIR / runs.METRICS, {"test": m, "members": [f"fold-{i}" for i in range(1, k + 1)]})
    return {f: m[f] for f in ("n", "top1", "top1_ci", "macro_f1", "macro_f1_ci")}


def summary_markdown(summary: dict) -> str:
    """The summary as Markdown: one row per fold and metric key, then the mean over folds and the pooled scores."""
    rows = []
    for fold in summary["per_fold"]:
        for key, m in fold.items():
            if key == "fold":
                continue
            rows.append({"fold": str(fold["fold"]), "scored on": key, "n": m["n"],
                         "top-1 [95% CI]": format_ci(m["top1"], m.get("top1_ci")),
                         "macro F1 [95% CI]": format_ci(m["macro_f1"], m.get("macro_f1_ci"))})
    for key, m in summary["over_folds"].items():
        rows.append({"fold": f"mean of {summary['folds']}", "scored on": key, "n": summary["folds"],
                     "top-1 [95% CI]": format_ci(m["top1"]["mean"], m["top1"]["ci"]),
                     "macro F1 [95% CI]": format_ci(m["macro_f1"]["mean"], m["macro_f1"]["ci"])})
    for key, m in summary["out_of_fold"].items():
        rows.append({"fold": "pooled out-of-fold", "scored on": key, "n": m["n"],
                     "top-1 [95% CI]": format_ci(m["top1"], m["top1_ci"]),
                     "macro F1 [95% CI]": format_ci(m["macro_f1"], m["macro_f1_ci"])})
    if "ensemble_test" in summary:
        m = summary["ensemble_test"]
        rows.append({"fold": f"ensemble of {summary['folds']} folds", "scored on": "test", "n": m["n"],
                     "top-1 [95% CI]": format_ci(m["top1"], m["top1_ci"]),
                     "macro F1 [95% CI]": format_ci(m["macro_f1"], m["macro_f1_ci"])})
    head = (f"# {summary['folds']}-fold cross-validation (seed {summary['seed']})\n\n"
            "Each fold trains on the other folds (best epoch picked on a slice of its own training images) and is "
            "scored once on its fold. Mean over folds: Student-t 95 % interval; single folds and pooled "
            "out-of-fold scores: percentile-bootstrap 95 % intervals. The test split is never used for a choice.\n\n")
    return head + markdown_table(pd.DataFrame(rows))
