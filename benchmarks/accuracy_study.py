"""The study behind the ``best-cpu`` recipe: each lever measured by 5-fold cross-validation on one image set.

Every lever is a named variant of one base recipe (MobileNet alpha 0.75, ImageNet weights, frozen through
block11, cached prefix with augmented views) or an analysis of finished cross-validations; all use the same
folds (seed 0), so their out-of-fold predictions can be compared and combined image by image. Results are appended
to ``<out>/results.jsonl`` as each lever finishes; a lever already there is skipped, and an interrupted one
resumes (the package's cross-validation resumes), so the whole study can be stopped and rerun. ``table`` prints the
Markdown table of docs/accuracy.md.

    python benchmarks/accuracy_study.py --data /tmp/l14/louvre_mame --out /tmp/l14/study run offshelf-224 ft-448 ...
    python benchmarks/accuracy_study.py --data /tmp/l14/louvre_mame --out /tmp/l14/study table

``--test-data`` (for ``folds-ensemble-*``): the set with its val split renamed test (class-per-folder: a folder
holding ``train -> <set>/train`` and ``test -> <set>/val``).

Needs ``KERAS_HOME`` pointing at the MobileNet 0.75 ImageNet weights (``../shared/keras_home``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

BASE = dict(arch="mobilenet", alpha=0.75, weights="imagenet", image_size=448, freeze_until="block11", head="256",
            dropout=0.5, lr=1e-4, epochs=8, batch_size=32, augment=True, augmentations="flip,rotation:10",
            augment_copies=3, prefix_cache="auto", prefix_cache_dtype="float16", seed=0, verbose=2)
FOLDS = 5
TEST_DATA = None  # --test-data

# name -> (kind, what it changes). kinds: ft (finetune --folds), offshelf (features + classify --folds),
# tta (a finished ft lever's folds re-scored with test-time augmentation), svc (LinearSVC on a finished ft lever's
# fine-tuned features, alone and averaged with the fine-tuned softmax), mix (out-of-fold probabilities of levers
# averaged). HEAD_ONLY: the backbone frozen whole, so only the head trains, on cached pooled features.
HEAD_ONLY = {"freeze_until": "all", "head": "none", "lr": 1e-3, "epochs": 15}
PROBE = {"freeze_until": "all", "head": "none", "augment": False, "head_solver": "logreg"}
LEVERS: dict[str, tuple[str, dict]] = {
    **{f"offshelf-{s}": ("offshelf", {"image_size": s}) for s in (224, 320, 448, 512)},
    **{f"ft-{s}": ("ft", {"image_size": s}) for s in (448, 320, 224)},
    "ft-448-head-only": ("ft", HEAD_ONLY),
    "ft-448-head-only-head-256": ("ft", {**HEAD_ONLY, "head": "256"}),
    "ft-448-head-only-smooth-0.1": ("ft", {**HEAD_ONLY, "label_smoothing": 0.1}),
    "ft-448-head-only-no-augment": ("ft", {**HEAD_ONLY, "augment": False}),
    "ft-448-head-only-progressive": ("ft", {**HEAD_ONLY, "progressive": "224:5"}),
    "ms-224-320-448": ("ft", {**HEAD_ONLY, "scales": "224,320,448"}),
    "ms-224-320-448-head-256": ("ft", {**HEAD_ONLY, "scales": "224,320,448", "head": "256"}),
    # the softmax fitted by logistic regression on the frozen features (--head-solver logreg, no epochs)
    # first measured while the probe still left a 10 % train holdout unused (before commit "probe keeps every
    # training image"); kept as measured, not rerun
    "probe-448-holdout": ("ft", {**PROBE}),
    "probe-ms-224-320-448-holdout": ("ft", {**PROBE, "scales": "224,320,448"}),
    "probe-448": ("ft", {**PROBE}),
    "probe-ms-224-320-448": ("ft", {**PROBE, "scales": "224,320,448"}),
    "probe-ms-224-320-448-512": ("ft", {**PROBE, "image_size": 512, "scales": "224,320,448,512"}),
    # the best-cpu recipe's 5 fold models (trained on the set's train split only) and their ensemble, scored on its val
    "folds-ensemble-probe": ("ft", {**PROBE, "scales": "224,320,448", "data": "@test-data"}),
    "ft-320-freeze-block9": ("ft", {"image_size": 320, "freeze_until": "block9"}),
    # Keras 3's label-mixing layers (the full network runs every epoch: no prefix cache)
    "ft-224-mixup": ("ft", {"image_size": 224, "augmentations": "flip,rotation:10,mixup:0.2"}),
    "ft-224-cutmix": ("ft", {"image_size": 224, "augmentations": "flip,rotation:10,cutmix:1.0"}),
    # LP-FT: the probe replaces the warm-up, then blocks 12-13 fine-tune from it (lr 1e-5, set before measuring)
    "lpft-448": ("ft", {"head": "none", "head_solver": "logreg", "warmup_epochs": 1, "epochs": 9, "lr": 1e-5}),
    "ft-224-block-lr": ("ft", {"image_size": 224, "block_lr": "block12-block13:1e-5,head:1e-3"}),
    "ft-224-head-only": ("ft", {**HEAD_ONLY, "image_size": 224}),
    "ft-224-head-only-zoom": ("ft", {**HEAD_ONLY, "image_size": 224, "augmentations": "flip,rotation:10,zoom:0.2"}),
    "ft-224-head-only-randaugment": ("ft", {**HEAD_ONLY, "image_size": 224, "augmentations": "flip,randaugment:0.3"}),
    "ft-224-head-only-mixup": ("ft", {**HEAD_ONLY, "image_size": 224, "epochs": 8,
                                      "augmentations": "flip,rotation:10,mixup:0.2"}),
    "ft-224-head-only-cutmix": ("ft", {**HEAD_ONLY, "image_size": 224, "epochs": 8,
                                       "augmentations": "flip,rotation:10,cutmix:1.0"}),
    # train = the set's train split, test = its val split (--test-data): the fold ensemble scored on unseen images
    "folds-ensemble-ms": ("ft", {**HEAD_ONLY, "scales": "224,320,448", "data": "@test-data", "tta": "flip"}),
    "tta-ms-flip": ("tta", {"of": "ms-224-320-448", "tta": "flip"}),
    "tta-448-head-only-flip": ("tta", {"of": "ft-448-head-only", "tta": "flip"}),
    "tta-224-patches": ("tta", {"of": "ft-224", "tta": "patches"}),
    "tta-320-flip": ("tta", {"of": "ft-320", "tta": "flip"}),
    "svc-224": ("svc", {"of": "ft-224"}),
    "svc-320": ("svc", {"of": "ft-320"}),
    "mix-ft-320+448": ("mix", {"of": ["ft-320", "ft-448"]}),
    "mix-ft-448+offshelf-448": ("mix", {"of": ["ft-448", "offshelf-448"]}),
    "mix-ft-320+offshelf-448": ("mix", {"of": ["ft-320", "offshelf-448"]}),
    "mix-offshelf-320+448": ("mix", {"of": ["offshelf-320", "offshelf-448"]}),
    "mix-ms+ft-448": ("mix", {"of": ["ms-224-320-448", "ft-448"]}),
    "mix-probe-ms+lpft-448": ("mix", {"of": ["probe-ms-224-320-448", "lpft-448"]}),
}


def _done(out: Path) -> dict:
    path = out / "results.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["lever"]: r for r in rows}


def _record(out: Path, row: dict) -> None:
    with open(out / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"[study] {row['lever']}: {json.dumps({k: v for k, v in row.items() if k != 'lever'})}", flush=True)


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _ft_config(data: str, out: Path, change: dict):
    from mame_transfer.core.config import TrainConfig

    values = {**BASE, **change, "data": data, "folds": FOLDS, "out": str(out)}
    return TrainConfig(**values)


def _score(summary: dict, key: str = "val") -> dict:
    over, oof = summary["over_folds"][key], summary["out_of_fold"][key]
    return {"mean_top1": over["top1"]["mean"], "mean_top1_ci": over["top1"]["ci"],
            "mean_macro_f1": over["macro_f1"]["mean"], "mean_macro_f1_ci": over["macro_f1"]["ci"],
            "fold_top1": [f[key]["top1"] for f in summary["per_fold"]], "oof_n": oof["n"],
            "oof_top1": oof["top1"], "oof_top1_ci": oof["top1_ci"], "oof_macro_f1": oof["macro_f1"]}


def run_ft(name: str, change: dict, data: str, out: Path) -> dict:
    from mame_transfer.core.fileio import PARTIAL, mark, owner
    from mame_transfer.training.crossval import CV_KIND, SUMMARY_JSON, cross_validate
    from mame_transfer.training.runs import PREFIX_CACHE_DIR

    # Every lever reads and writes one prefix-cache folder: a cut already computed (same layer, weights, size,
    # augmentation) for another lever is reused; file names tell them apart.
    shared = out / "prefix-cache"
    shared.mkdir(exist_ok=True)
    link = out / f"{name}{PARTIAL}" / PREFIX_CACHE_DIR
    link.parent.mkdir(exist_ok=True)
    if owner(link.parent) is None:  # the cross-validation's own folder (its owner mark), before the shared link
        mark(link.parent, CV_KIND)
    if not link.exists():
        link.symlink_to(shared, target_is_directory=True)
    change = dict(change)
    if change.pop("data", None) == "@test-data":
        if not TEST_DATA:
            raise SystemExit(f"{name} needs --test-data (a set whose test split is this set's val split)")
        data = TEST_DATA
    folder = cross_validate(_ft_config(data, out / name, change))
    summary = json.loads((folder / SUMMARY_JSON).read_text())
    result = _score(summary)
    if "ensemble_test" in summary:  # the set has a test split: each fold's score on it, and the fold ensemble's
        result.update(test_fold_top1=[f["test"]["top1"] for f in summary["per_fold"]],
                      test_mean_top1=summary["over_folds"]["test"]["top1"]["mean"],
                      test_mean_top1_ci=summary["over_folds"]["test"]["top1"]["ci"],
                      ensemble_test_top1=summary["ensemble_test"]["top1"],
                      ensemble_test_top1_ci=summary["ensemble_test"]["top1_ci"], test_n=summary["ensemble_test"]["n"])
    return result


def _oof_proba(out: Path, lever: str, key: str = "val"):
    """(images, labels, folds, probabilities) of a finished lever, ordered by image name."""
    import pandas as pd

    if lever.startswith("offshelf"):
        frame = pd.read_csv(out / lever / "oof_proba.csv")
        cols = [c for c in frame.columns if c.startswith("p:")]
    else:
        frame = pd.read_csv(out / lever / "oof_predictions.csv")
        suffix = key[len("val"):]
        cols = [c for c in frame.columns if c.startswith(f"p{suffix}:")]
    frame = frame.sort_values("image").reset_index(drop=True)
    return frame["image"].to_numpy(), frame["label"].to_numpy(), frame["fold"].to_numpy(), frame[cols].to_numpy()


def _oof_score(labels, proba, classes) -> dict:
    from mame_transfer.inference.metrics import compute_metrics

    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[v] for v in labels])
    m = compute_metrics(y, proba, classes)
    return {"oof_n": m["n"], "oof_top1": m["top1"], "oof_top1_ci": m["top1_ci"], "oof_macro_f1": m["macro_f1"]}


def _fold_means(labels, folds, proba, classes) -> dict:
    from mame_transfer.inference.metrics import mean_ci

    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[v] for v in labels])
    per = [float((proba[folds == f].argmax(1) == y[folds == f]).mean()) for f in sorted(set(folds))]
    m = mean_ci(per)
    return {"mean_top1": m["mean"], "mean_top1_ci": m["ci"], "fold_top1": per}


def run_offshelf(name: str, change: dict, data: str, out: Path) -> dict:
    """Off-the-shelf ImageNet features at one size + the classify comparison (LinearSVC, LogReg) by 5-fold CV;
    also writes out-of-fold LogReg probabilities (for the mixes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mame_transfer.classifiers.comparison import source_from_store
    from mame_transfer.classifiers.crossval import cross_validate, fold_sources
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.store.export import export
    from mame_transfer.store.store import load_store

    store_dir = out / f"store-{change['image_size']}"
    store = load_store(store_dir) if (store_dir / "manifest.json").is_file() else \
        export(store_dir, load_dataset(data), arch=BASE["arch"], alpha=BASE["alpha"], weights=BASE["weights"],
               image_size=change["image_size"], batch_size=32, verbose=0)
    source = source_from_store(store)
    cv = cross_validate(source, folds=FOLDS, out=out / name, seed=BASE["seed"], feature_sets=["embeddings"],
                        classifiers=["linear_svc", "logreg"], verbose=0)
    best = cv.iloc[0]
    sources, pool = fold_sources(source, FOLDS, BASE["seed"])
    proba = np.zeros((len(pool), len(source.classes)))
    for i, src in enumerate(sources, start=1):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
        clf.fit(src.embeddings["train"], src.metadata["train"]["label_index"])
        proba[pool["fold"].to_numpy() == i] = clf.predict_proba(src.embeddings["val"])
    frame = pool[["image", "label", "fold"]].copy()
    for c, col in zip(source.classes, proba.T):
        frame[f"p:{c}"] = col
    frame.to_csv(out / name / "oof_proba.csv", index=False)
    rows = {r["classifier"]: r for r in cv.to_dict("records")}
    return {"best": best["classifier"], "mean_top1": best["val_top1_mean"], "mean_top1_ci": list(best["val_top1_ci"]),
            "oof_top1": best["oof_top1"], "oof_top1_ci": list(best["oof_top1_ci"]), "oof_n": int(best["oof_n"]),
            "linear_svc_mean_top1": rows["linear_svc"]["val_top1_mean"], "logreg_mean_top1": rows["logreg"]["val_top1_mean"]}


def run_tta(name: str, change: dict, data: str, out: Path) -> dict:
    """Re-score a finished lever's fold models on their folds with test-time augmentation."""
    from mame_transfer.training import runs
    from mame_transfer.training.crossval import fold_dir, summarize
    from mame_transfer.training.evaluation import evaluate_run

    folder = out / change["of"]
    key = f"val_{change['tta']}"
    for i in range(1, FOLDS + 1):
        if key not in runs.read_metrics(fold_dir(folder, i)):
            evaluate_run(fold_dir(folder, i), split="val", tta=change["tta"], verbose=0)
    config = runs.read_config(folder)
    dataset = runs.dataset_for(dataclasses.replace(config, fold=0), require=("train",))
    summary = summarize(folder, config, dataset.classes, dataset)
    return _score(summary, key)


def run_svc(name: str, change: dict, data: str, out: Path) -> dict:
    """LinearSVC (C by 3-fold CV inside the fold, sigmoid-calibrated) on each fold model's pooled features, alone
    and averaged with that model's softmax."""
    import pandas as pd
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from mame_transfer.datasets.folds import assign_folds
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.store.export import export
    from mame_transfer.store.store import load_store
    from mame_transfer.training.crossval import fold_dir

    folder = out / change["of"]
    images, labels, folds, ft = _oof_proba(out, change["of"])
    dataset = load_dataset(data)
    classes = dataset.classes
    svc_proba = np.zeros_like(ft)
    order = {img: i for i, img in enumerate(images)}
    for i in range(1, FOLDS + 1):
        store_dir = out / name / f"features-fold-{i}"
        store = export(store_dir, dataset, run=fold_dir(folder, i), layer="global_pool", batch_size=32, verbose=0) \
            if not (store_dir / "manifest.json").is_file() else load_store(store_dir)
        meta = pd.concat([store.metadata(s) for s in ("train", "val")], ignore_index=True)
        X = np.concatenate([np.asarray(store.embeddings(s)) for s in ("train", "val")])
        fold = assign_folds(meta, FOLDS, BASE["seed"]) + 1
        train, val = fold != i, fold == i
        grid = GridSearchCV(make_pipeline(StandardScaler(), LinearSVC(max_iter=5000)),
                            {"linearsvc__C": [1e-3, 1e-2, 1e-1]}, cv=3).fit(X[train], meta["label_index"][train])
        clf = CalibratedClassifierCV(grid.best_estimator_, cv=3).fit(X[train], meta["label_index"][train])
        rows = [order[img] for img in meta["image"][val]]
        svc_proba[rows] = clf.predict_proba(X[val])
    both = (ft + svc_proba) / 2
    result = {f"svc_{k}": v for k, v in {**_fold_means(labels, folds, svc_proba, classes),
                                          **_oof_score(labels, svc_proba, classes)}.items()}
    result.update(_fold_means(labels, folds, both, classes))
    result.update(_oof_score(labels, both, classes))
    return result


def run_mix(name: str, change: dict, data: str, out: Path) -> dict:
    """The average of several levers' out-of-fold probabilities (same folds, same images)."""
    from mame_transfer.datasets.layouts import load_dataset

    classes = load_dataset(data).classes
    parts = [_oof_proba(out, lever) for lever in change["of"]]
    for p in parts[1:]:
        if list(p[0]) != list(parts[0][0]) or list(p[2]) != list(parts[0][2]):
            raise SystemExit(f"{name}: the levers do not share images and folds")
    images, labels, folds, _ = parts[0]
    mixed = np.mean([p[3] for p in parts], axis=0)
    return {**_fold_means(labels, folds, mixed, classes), **_oof_score(labels, mixed, classes)}


RUNNERS = {"ft": run_ft, "offshelf": run_offshelf, "tta": run_tta, "svc": run_svc, "mix": run_mix}


def table(out: Path) -> str:
    """The study's Markdown table, levers in study order."""
    from mame_transfer.inference.metrics import format_ci

    done = _done(out)
    lines = ["| lever | what changes | 5-fold mean top-1 [95% CI] | pooled out-of-fold top-1 [95% CI] (n) | "
             "CPU min | wall min |", "|---|---|---|---|---|---|"]
    for name, (kind, change) in LEVERS.items():
        if name not in done:
            continue
        r = done[name]
        what = ", ".join(f"{k}={v}" for k, v in change.items())
        lines.append(f"| {name} | {kind}: {what} | {format_ci(r['mean_top1'], r.get('mean_top1_ci'))} | "
                     f"{format_ci(r['oof_top1'], r.get('oof_top1_ci'))} ({r.get('oof_n', '')}) | "
                     f"{r['cpu_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the image set (MAMe layout or class-per-folder)")
    parser.add_argument("--out", required=True, help="study folder (results.jsonl + one folder per lever)")
    parser.add_argument("--test-data", help="the same images with val moved to a test split (folds-ensemble-*)")
    parser.add_argument("command", choices=("run", "table", "list"))
    parser.add_argument("levers", nargs="*")
    args = parser.parse_args(argv)
    global TEST_DATA
    TEST_DATA = args.test_data
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "list":
        for name, (kind, change) in LEVERS.items():
            print(f"{name:<24} {kind:<9} {change}")
        return 0
    if args.command == "table":
        print(table(out), end="")
        return 0
    unknown = [lv for lv in args.levers if lv not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; see 'list'")
    for name in args.levers:
        if name in _done(out):
            print(f"[study] {name}: done earlier", flush=True)
            continue
        kind, change = LEVERS[name]
        t0, c0 = time.perf_counter(), _cpu()
        result = RUNNERS[kind](name, change, args.data, out)
        _record(out, {"lever": name, **result, "wall_s": round(time.perf_counter() - t0, 1),
                      "cpu_s": round(_cpu() - c0, 1), "load": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
