"""Metrics, predictions and plots of a trained model on any split; ``python -m mame_transfer.evaluate RUN``.

A run directory holds ``metrics.json`` with one entry per evaluated split. Per split ``S`` it also holds
``predictions_S.csv``, ``classification_report_S.txt`` and ``confusion_matrix_S.png``; the unsuffixed
``predictions.csv``, ``classification_report.txt`` and ``confusion_matrix.png`` are those of the final split
(test when the dataset has one, else val).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .fileio import write_json, write_text


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Top-1, top-3, top-5, macro / weighted F1, balanced accuracy, per-class P/R/F/support, confusion matrix."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    n_classes = len(classes)
    if proba.ndim != 2 or proba.shape[1] != n_classes or len(proba) != len(y_true):
        raise ValueError(f"probabilities of shape {proba.shape} do not match {len(y_true)} labels x {n_classes} classes")
    y_pred = proba.argmax(axis=1)
    order = np.argsort(-proba, axis=1)
    labels = np.arange(n_classes)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {"n": int(len(y_true)), "top1": float((y_pred == y_true).mean()) if len(y_true) else 0.0}
    for k in (3, 5):
        kk = min(k, n_classes)
        out[f"top{k}"] = float((order[:, :kk] == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0
    out["macro_f1"] = float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    out["weighted_f1"] = float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0))
    out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0
    out["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def predictions_frame(table: pd.DataFrame, proba: np.ndarray, classes: Sequence[str], top: int = 5) -> pd.DataFrame:
    """One row per image: file, true and predicted class, and the top-k classes with their probabilities."""
    classes = np.asarray(classes)
    order = np.argsort(-proba, axis=1)[:, : min(top, len(classes))]
    df = pd.DataFrame({
        "image": table["image"].to_numpy(),
        "true": table["label"].to_numpy(),
        "predicted": classes[order[:, 0]],
    })
    df["correct"] = df["true"] == df["predicted"]
    df["probability"] = proba[np.arange(len(proba)), order[:, 0]]
    for k in range(order.shape[1]):
        df[f"top{k + 1}"] = classes[order[:, k]]
        df[f"top{k + 1}_prob"] = np.round(proba[np.arange(len(proba)), order[:, k]], 6)
    return df


def classification_report_text(metrics: dict, split: str) -> str:
    rows = [f"{'class':<28}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, m in metrics["per_class"].items():
        rows.append(f"{name:<28}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    rows.append("")
    rows.append(f"split {split}: n={metrics['n']}  top-1 {metrics['top1']:.4f}  top-3 {metrics['top3']:.4f}  "
                f"top-5 {metrics['top5']:.4f}  macro F1 {metrics['macro_f1']:.4f}  "
                f"balanced accuracy {metrics['balanced_accuracy']:.4f}")
    return "\n".join(rows) + "\n"


def prediction_options(config) -> dict:
    """The input-shape options of a run's config that prediction must reproduce (``shape``, ``pixels``)."""
    return {"shape": getattr(config, "shape", "fixed"), "pixels": getattr(config, "pixels", 65536)}


def predict_proba(model, table: pd.DataFrame, *, arch: str, image_size: int, batch_size: int = 32,
                  verbose: int = 0, shape: str = "fixed", pixels: int = 65536, tta: str = "none",
                  patch_scales: str = "1.0,0.7,0.5", patch_power: float = 5.0) -> np.ndarray:
    """Class probabilities for every row of ``table`` (no augmentation, registry preprocessing).

    Args:
        shape: ``fixed`` (square ``image_size`` resize) or ``variable`` (aspect kept, about ``pixels`` pixels).
        tta: ``none``; ``flip`` averages each image with its mirror image; ``patches`` is Oquab et al.'s
            multi-patch scoring (:mod:`mame_transfer.tta`) at ``patch_scales`` with power ``patch_power``.
    """
    from . import backbones, data, tta as tta_mod, varshape

    preprocess = backbones.get(arch).preprocess
    if tta not in tta_mod.MODES:
        raise ConfigError(f"tta must be one of {', '.join(tta_mod.MODES)}. Received: tta={tta!r}")
    if tta == "patches":
        return tta_mod.predict_patches(model, table, preprocess=preprocess, image_size=image_size,
                                       scales=patch_scales, power=patch_power, batch_size=batch_size, verbose=verbose)
    if shape == "variable":
        return varshape.predict_proba(model, table, pixels=pixels, preprocess=preprocess, flip=tta == "flip")
    pipeline = data.make_pipeline(table, image_size=image_size, preprocess=backbones.get(arch).preprocess,
                                  batch_size=batch_size, training=False, augment=False, with_labels=False)
    if tta == "flip":
        return tta_mod.flip_average(model, pipeline)
    return np.asarray(model.predict(pipeline, verbose=verbose))


def write_split_artifacts(run_dir: Path, split: str, table: pd.DataFrame, proba: np.ndarray,
                          classes: Sequence[str], *, final: bool = False) -> dict:
    """Compute metrics for one split and write its report, predictions and confusion matrix."""
    from . import plots

    run_dir = Path(run_dir)
    metrics = compute_metrics(table["label_index"].to_numpy(), proba, classes)
    preds = predictions_frame(table, proba, classes)
    report = classification_report_text(metrics, split)
    fig = plots.confusion_matrix_figure(np.array(metrics["confusion_matrix"]), classes,
                                        title=f"{split}: top-1 {metrics['top1']:.3f}, macro F1 {metrics['macro_f1']:.3f}")
    names = [f"_{split}"] + ([""] if final else [])
    for suffix in names:
        write_text(run_dir / f"predictions{suffix}.csv", preds.to_csv(index=False))
        write_text(run_dir / f"classification_report{suffix}.txt", report)
        plots.save(fig, run_dir / f"confusion_matrix{suffix}.png")
    return metrics


def update_metrics_json(run_dir: Path, split: str, metrics: dict) -> dict:
    path = Path(run_dir) / "metrics.json"
    allm = json.loads(path.read_text()) if path.exists() else {}
    allm[split] = metrics
    write_json(path, allm)
    return allm


def load_run(run_dir: str | Path):
    """Model, resolved config and class list of a finished run directory."""
    import keras

    from . import config as cfg

    run_dir = Path(run_dir)
    for name in ("model.keras", "config.yaml", "class_index.json"):
        if not (run_dir / name).is_file():
            hint = " (a '.partial' run is still training or was interrupted: rerun the same finetune command)" \
                if run_dir.name.endswith(".partial") else ""
            raise ConfigError(f"{run_dir} is not a finished run directory: {name} is missing{hint}")
    config = cfg.from_dict(cfg.TrainConfig, cfg.load_yaml(run_dir / "config.yaml"), source=str(run_dir / "config.yaml"))
    class_index = json.loads((run_dir / "class_index.json").read_text())
    classes = [c for c, _ in sorted(class_index.items(), key=lambda kv: kv[1])]
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    return model, config, classes


def align_to_classes(table: pd.DataFrame, classes: Sequence[str], source: str) -> pd.DataFrame:
    """Re-index labels of another dataset onto a run's classes; unknown labels are an error."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(index))
    if unknown:
        raise DataError(f"{source}: labels {unknown} are not among the run's classes {list(classes)}")
    table = table.copy()
    table["label_index"] = table["label"].map(index).astype(int)
    return table


def evaluate_run(run_dir: str | Path, *, split: str = "test", data_path: str | None = None, toy: bool | None = None,
                 out: str | Path | None = None, batch_size: int | None = None, verbose: int = 1,
                 tta: str = "none", patch_scales: str = "1.0,0.7,0.5", patch_power: float = 5.0) -> dict:
    """Recompute metrics and plots of a saved run on ``split`` of its own dataset or of ``data_path``.

    With ``tta`` other than ``none`` the results are stored under ``<split>_<tta>`` (e.g. ``val_patches``).
    """
    from . import data as data_mod
    from .finetune import dataset_for

    run_dir = Path(run_dir)
    model, config, classes = load_run(run_dir)
    if data_path:
        config.data, config.demo = str(data_path), False
    if toy is not None:
        config.toy = toy
    dataset = dataset_for(config, require=(split,))
    table = align_to_classes(dataset.split(split), classes, str(config.data or "demo"))
    out_dir = Path(out) if out else run_dir
    image_size = config.image_size or model.input_shape[1]
    proba = predict_proba(model, table, arch=config.arch, image_size=image_size,
                          batch_size=batch_size or config.batch_size, verbose=verbose, **prediction_options(config),
                          tta=tta, patch_scales=patch_scales, patch_power=patch_power)
    key = split if tta == "none" else f"{split}_{tta}"
    metrics = write_split_artifacts(out_dir, key, table, proba, classes, final=False)
    update_metrics_json(out_dir, key, metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mame_transfer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory (saved_models/<run>)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--data", help="evaluate on another dataset (same class names)")
    parser.add_argument("--toy", action=argparse.BooleanOptionalAction, default=None, help="MAMe toy CSV")
    parser.add_argument("--out", help="where to write (default: the run directory)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--verbose", type=int, default=1)
    parser.add_argument("--tta", default="none", choices=("none", "flip", "patches"),
                        help="test-time augmentation: mirror-image averaging, or Oquab et al.'s multi-patch scoring")
    parser.add_argument("--patch-scales", default="1.0,0.7,0.5", help="--tta patches: sides as fractions of the short side")
    parser.add_argument("--patch-power", type=float, default=5.0, help="--tta patches: k in mean over patches of y(C|P)^k")
    args = parser.parse_args(argv)
    try:
        m = evaluate_run(args.run, split=args.split, data_path=args.data, toy=args.toy, out=args.out,
                         batch_size=args.batch_size, verbose=args.verbose, tta=args.tta,
                         patch_scales=args.patch_scales, patch_power=args.patch_power)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.split}{'' if args.tta == 'none' else '_' + args.tta}: n={m['n']} top-1 {m['top1']:.4f} top-5 {m['top5']:.4f} macro F1 {m['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
