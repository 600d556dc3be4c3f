"""Scoring finished runs: one run on any split (``evaluate``) and several runs averaged (``ensemble``).

The ensemble follows Gonthier, Gousseau & Ladjal 2020 ("An analysis of the transfer learning of convolutional
neural networks for artistic images", Table 1): each member's scores are reported beside the ensemble's. With
``weighted`` a member's weight is its validation top-1 (from its ``metrics.json``; computed when missing).
Weighting by val accuracy and then scoring on val is optimistic: report ``split="test"`` when the set has one.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.core.fileio import atomic_path, claim, markdown_table, output_folder, write_json, write_text
from mame_transfer.inference.metrics import (
    CONFUSION,
    PREDICTIONS,
    REPORT,
    align_to_classes,
    compute_metrics,
    split_file,
    write_split_artifacts,
)
from mame_transfer.inference.predict import predict_proba, prediction_options
from mame_transfer.training import runs

ENSEMBLE_COLUMNS = ("model", "weight", "n", "top1", "top1_ci", "top3", "top5", "macro_f1", "macro_f1_ci")
EVALUATION_KIND = "evaluation"  # owner kinds of an evaluate --out folder and of an ensemble folder
ENSEMBLE_KIND = "ensemble"


def split_table(config, classes: Sequence[str], split: str, *, data_path: str | None = None,
                toy: bool | None = None, source: str = "", run_dir: str | Path | None = None) -> pd.DataFrame:
    """Rows of ``split`` of a run's own dataset (or of ``data_path``), labels indexed by the run's classes.

    ``run_dir``: the run, whose recorded ``splits.csv`` is used when its data were flat class folders.
    """
    if data_path:
        config.data, config.demo = str(data_path), False
        run_dir = None
    if toy is not None:
        config.toy = toy
    table = runs.dataset_for(config, require=(split,), run_dir=run_dir).split(split)
    return align_to_classes(table, classes, source or str(config.data or "demo"))


def run_proba(model, config, table: pd.DataFrame, *, batch_size: int | None = None, **options) -> np.ndarray:
    """A run's class probabilities on ``table``, fed the way it was trained (size, shape, preprocessing)."""
    image_size = config.image_size or model.input_shape[1]
    return predict_proba(model, table, arch=config.arch, image_size=image_size,
                         batch_size=batch_size or config.batch_size, **prediction_options(config), **options)


def evaluate_run(run_dir: str | Path, *, split: str = "test", data_path: str | None = None, toy: bool | None = None,
                 out: str | Path | None = None, batch_size: int | None = None, verbose: int = 1,
                 tta: str = "none", patch_scales: str = "1.0,0.7,0.5", patch_power: float = 5.0) -> dict:
    """Recompute metrics and plots of a saved run on ``split`` of its own dataset or of ``data_path``.

    With ``tta`` other than ``none`` the results are stored under ``<split>_<tta>`` (e.g. ``val_patches``).
    ``out`` (default: the run directory) collects evaluations: it must be new, empty or an earlier ``out`` of
    evaluate; any other folder is refused.
    """
    run_dir = Path(run_dir)
    if out is not None and Path(out).resolve() != run_dir.resolve():
        claim(out, EVALUATION_KIND, additive=True, what="folder of evaluations", command="evaluate",
              legacy=lambda p: _only_split_files(p, (runs.METRICS,)))
    model, config, classes = runs.load_run(run_dir)
    table = split_table(config, classes, split, data_path=data_path, toy=toy, run_dir=run_dir)
    proba = run_proba(model, config, table, batch_size=batch_size, verbose=verbose, tta=tta,
                      patch_scales=patch_scales, patch_power=patch_power)
    key = split if tta == "none" else f"{split}_{tta}"
    out_dir = Path(out) if out else run_dir
    metrics = write_split_artifacts(out_dir, key, table, proba, classes, final=False)
    runs.update_metrics(out_dir, key, metrics)
    return metrics


def _only_split_files(folder: Path, extra: Sequence[str]) -> bool:
    """Whether every file in ``folder`` is one evaluate or ensemble writes (outputs from before owner files)."""
    names = [split_file(n, "*") for n in (PREDICTIONS, REPORT, CONFUSION)] + list(extra)
    entries = list(folder.iterdir())
    return bool(entries) and all(p.is_file() and any(fnmatch.fnmatch(p.name, n) for n in names) for p in entries)


def check_same_classes(members: Sequence[str | Path]) -> list[str]:
    """The members' common class list; an error names the first run that differs and how."""
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs. Received: {[str(r) for r in members]}")
    first = runs.read_classes(runs.check_finished(members[0], (runs.CLASS_INDEX,)))
    for run in members[1:]:
        other = runs.read_classes(runs.check_finished(run, (runs.CLASS_INDEX,)))
        if other != first:
            only_a, only_b = sorted(set(first) - set(other)), sorted(set(other) - set(first))
            detail = (f"only in {members[0]}: {only_a}; only in {run}: {only_b}" if only_a or only_b
                      else "same names in another order")
            raise ConfigError(f"ensemble members must share classes: {run} differs from {members[0]} ({detail})")
    return first


def average(probas: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of ``[n, classes]`` probability arrays (weights normalised to sum to 1)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probas])
    w = np.ones(len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stack),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(stack)} non-negative numbers, not all zero. Received: {weights}")
    return np.tensordot(w / w.sum(), stack, axes=1)


def _val_top1(run: Path, model, config, classes, batch_size) -> float:
    saved = runs.read_metrics(run)
    if "top1" in saved.get("val", {}):
        return float(saved["val"]["top1"])
    table = split_table(config, classes, "val", source=str(run), run_dir=run)
    proba = run_proba(model, config, table, batch_size=batch_size)
    return float((proba.argmax(1) == table["label_index"].to_numpy()).mean())


def ensemble_runs(members: Sequence[str | Path], *, split: str = "val", weighted: bool = False,
                  data_path: str | None = None, out: str | Path | None = None, batch_size: int | None = None,
                  tta: str = "none", verbose: int = 0, overwrite: bool = False) -> tuple[pd.DataFrame, dict]:
    """Predict ``split`` with every run, average, score members and ensemble, write the outputs to ``out``.

    Top-3 / top-5 columns appear only with more classes than k; ``verbose`` 1 shows Keras's prediction bars.

    Writes (when ``out`` is given): ``ensemble_<split>.csv`` and ``.md`` (one row per member plus the ensemble),
    ``metrics.json`` (full metrics of every member and of the ensemble), and the ensemble's
    ``predictions_<split>.csv``, ``classification_report_<split>.txt`` and ``confusion_matrix_<split>.png``, as one
    folder written whole: new, empty, or an earlier ensemble replaced only with ``overwrite``.

    Returns:
        The comparison table (one row per member, then ``ensemble``) and the metrics dict written to JSON.
    """
    members = [Path(r) for r in members]
    if out is not None:
        with output_folder(out, ENSEMBLE_KIND, overwrite=overwrite, what="ensemble", command="ensemble",
                           legacy=lambda p: _only_split_files(p, (runs.METRICS, "ensemble_*.csv", "ensemble_*.md"))) \
                as existed, \
                atomic_path(out, kind=ENSEMBLE_KIND, replace=existed) as tmp:
            tmp.mkdir()
            return _ensemble(members, split, weighted, data_path, tmp, batch_size, tta, verbose)
    return _ensemble(members, split, weighted, data_path, None, batch_size, tta, verbose)


def _ensemble(members: list[Path], split, weighted, data_path, out: Path | None, batch_size, tta, verbose=0):
    classes = check_same_classes(members)
    probas, weights, names, member_metrics = [], [], [], {}
    table = None
    for run in members:
        model, config, _ = runs.load_run(run)
        member_table = split_table(config, classes, split, data_path=data_path, source=str(run), run_dir=run)
        if table is None:
            table = member_table
        elif list(member_table["image"]) != list(table["image"]):
            raise DataError(f"{run}: its {split} split ({config.data or 'demo'}) holds other images than "
                            f"{members[0]}'s; pass --data to score every member on the same set")
        proba = run_proba(model, config, table, batch_size=batch_size, tta=tta, verbose=verbose)
        name = run.name if run.name not in names else str(run)
        names.append(name)
        probas.append(proba)
        weights.append(_val_top1(run, model, config, classes, batch_size) if weighted else 1.0)
        member_metrics[name] = compute_metrics(table["label_index"].to_numpy(), proba, classes)
        del model
    mix = average(probas, weights)
    ens = compute_metrics(table["label_index"].to_numpy(), mix, classes)
    total = float(sum(weights))
    columns = [c for c in ENSEMBLE_COLUMNS if c in ("model", "weight") or c in ens]

    def cells(m: dict) -> dict:
        return {k: (f"[{m[k][0]:.4f}, {m[k][1]:.4f}]" if k.endswith("_ci") else m[k]) for k in columns[2:]}

    rows = [{"model": n, "weight": w / total, **cells(member_metrics[n])} for n, w in zip(names, weights)]
    rows.append({"model": "ensemble", "weight": 1.0, **cells(ens)})
    frame = pd.DataFrame(rows, columns=columns)
    result = {"split": split, "weighted": weighted, "tta": tta, "members": [str(r) for r in members],
              "weights": dict(zip(names, (w / total for w in weights))), "member_metrics": member_metrics,
              "ensemble": ens}
    if out is not None:
        write_text(out / f"ensemble_{split}.csv", frame.to_csv(index=False))
        write_text(out / f"ensemble_{split}.md", markdown_table(frame))
        write_split_artifacts(out, split, table, mix, classes)
        write_json(out / runs.METRICS, result)
    return frame, result
