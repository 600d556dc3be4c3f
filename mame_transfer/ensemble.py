"""Average the predicted probabilities of several runs: ``python -m mame_transfer.ensemble RUN RUN ...``.

Follows the pattern of Gonthier, Gousseau & Ladjal 2020 ("An analysis of the transfer learning of convolutional
neural networks for artistic images", Table 1): each member's scores are reported beside the ensemble's.
With ``--weighted`` a member's weight is its validation top-1 (from its ``metrics.json``; computed when missing).
Weighting by val accuracy and then scoring on val is optimistic: report ``--split test`` when the set has one.

Examples::

    python -m mame_transfer.ensemble saved_models/a saved_models/b --split val --out ensembles/ab
    python -m mame_transfer.ensemble saved_models/a saved_models/b saved_models/c --weighted --split test

Writes to ``--out`` (atomically): ``ensemble_<split>.csv`` and ``.md`` (one row per member plus the ensemble),
``metrics.json`` (full metrics of every member and of the ensemble), and the ensemble's
``predictions_<split>.csv``, ``classification_report_<split>.txt`` and ``confusion_matrix_<split>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError, MameTransferError
from .fileio import markdown_table, write_json, write_text

COLUMNS = ("model", "weight", "top1", "top3", "top5", "macro_f1")


def run_classes(run_dir: str | Path) -> list[str]:
    """Class list of a run, from its ``class_index.json``."""
    path = Path(run_dir) / "class_index.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a finished run directory: class_index.json is missing")
    index = json.loads(path.read_text())
    return [c for c, _ in sorted(index.items(), key=lambda kv: kv[1])]


def check_same_classes(runs: Sequence[str | Path]) -> list[str]:
    """The members' common class list; an error names the first run that differs and how."""
    if len(runs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs. Received: {[str(r) for r in runs]}")
    first = run_classes(runs[0])
    for run in runs[1:]:
        other = run_classes(run)
        if other != first:
            only_a, only_b = sorted(set(first) - set(other)), sorted(set(other) - set(first))
            detail = (f"only in {runs[0]}: {only_a}; only in {run}: {only_b}" if only_a or only_b
                      else "same names in another order")
            raise ConfigError(f"ensemble members must share classes: {run} differs from {runs[0]} ({detail})")
    return first


def average(probas: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of ``[n, classes]`` probability arrays (weights normalised to sum to 1)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probas])
    w = np.ones(len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stack),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(stack)} non-negative numbers, not all zero. Received: {weights}")
    return np.tensordot(w / w.sum(), stack, axes=1)


def _val_top1(run: Path, model, config, classes, batch_size) -> float:
    from . import evaluate
    from .finetune import dataset_for

    path = run / "metrics.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if "val" in saved and "top1" in saved["val"]:
            return float(saved["val"]["top1"])
    table = evaluate.align_to_classes(dataset_for(config, require=("val",)).split("val"), classes, str(run))
    proba = evaluate.predict_proba(model, table, arch=config.arch, image_size=config.image_size,
                                   batch_size=batch_size or config.batch_size, **evaluate.prediction_options(config))
    return float((proba.argmax(1) == table["label_index"].to_numpy()).mean())


def ensemble_runs(runs: Sequence[str | Path], *, split: str = "val", weighted: bool = False,
                  data_path: str | None = None, out: str | Path | None = None, batch_size: int | None = None,
                  tta: str = "none") -> tuple[pd.DataFrame, dict]:
    """Predict ``split`` with every run, average, score members and ensemble, write the outputs to ``out``.

    Returns:
        The comparison table (one row per member, then ``ensemble``) and the metrics dict written to JSON.
    """
    from . import evaluate
    from .finetune import dataset_for

    runs = [Path(r) for r in runs]
    classes = check_same_classes(runs)
    probas, weights, names, member_metrics = [], [], [], {}
    table = None
    for run in runs:
        model, config, _ = evaluate.load_run(run)
        if data_path:
            config.data, config.demo = str(data_path), False
        member_table = evaluate.align_to_classes(dataset_for(config, require=(split,)).split(split), classes, str(run))
        if table is None:
            table = member_table
        elif list(member_table["image"]) != list(table["image"]):
            raise DataError(f"{run}: its {split} split ({config.data or 'demo'}) holds other images than {runs[0]}'s; "
                            f"pass --data to score every member on the same set")
        proba = evaluate.predict_proba(model, table, arch=config.arch, image_size=config.image_size,
                                       batch_size=batch_size or config.batch_size,
                                       **evaluate.prediction_options(config), tta=tta)
        name = run.name if run.name not in names else str(run)
        names.append(name)
        probas.append(proba)
        weights.append(_val_top1(run, model, config, classes, batch_size) if weighted else 1.0)
        member_metrics[name] = evaluate.compute_metrics(table["label_index"].to_numpy(), proba, classes)
        del model
    mix = average(probas, weights)
    y = table["label_index"].to_numpy()
    ens = evaluate.compute_metrics(y, mix, classes)
    total = float(sum(weights))
    rows = [{"model": n, "weight": w / total, **{k: member_metrics[n][k] for k in COLUMNS[2:]}}
            for n, w in zip(names, weights)]
    rows.append({"model": "ensemble", "weight": 1.0, **{k: ens[k] for k in COLUMNS[2:]}})
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    result = {"split": split, "weighted": weighted, "tta": tta, "members": [str(r) for r in runs],
              "weights": dict(zip(names, (w / total for w in weights))), "member_metrics": member_metrics,
              "ensemble": ens}
    if out is not None:
        out = Path(out)
        write_text(out / f"ensemble_{split}.csv", frame.to_csv(index=False))
        write_text(out / f"ensemble_{split}.md", markdown_table(frame))
        evaluate.write_split_artifacts(out, split, table, mix, classes)
        write_json(out / "metrics.json", result)
    return frame, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mame_transfer.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories (saved_models/<run>), same classes")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--weighted", action="store_true", help="weight each member by its val top-1")
    parser.add_argument("--data", help="score every member on this dataset (same class names)")
    parser.add_argument("--tta", default="none", choices=("none", "flip", "patches"), help="test-time augmentation")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--out", help="output folder (default <parent of the first run>/ensemble-<timestamp>)")
    args = parser.parse_args(argv)
    out = args.out or Path(args.runs[0]).resolve().parent / f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        frame, _ = ensemble_runs(args.runs, split=args.split, weighted=args.weighted, data_path=args.data, out=out,
                                 batch_size=args.batch_size, tta=args.tta)
    except MameTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
