"""The classifier comparison: feature sets x classifiers, tuned on train, ranked on val, scored on test.

Every classifier is a ``Pipeline(StandardScaler, estimator)`` (:mod:`.estimators`) whose hyperparameters are chosen
by ``GridSearchCV`` (stratified 3-fold) on the training split only; val and test are only scored. Feature sets:

* ``embeddings``: the store's vectors (Razavian et al. 2014, "CNN features off-the-shelf");
* ``embeddings+metadata``: plus width, height, product size (log), aspect ratio and museum one-hot
  (:func:`mame_transfer.classifiers.inputs.metadata_features`);
* ``embeddings+metadata+umap``: plus UMAP coordinates of the embeddings, UMAP fitted on train, applied to val/test;
* ``metadata``: the metadata columns alone.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mame_transfer.classifiers.estimators import (
    CLASSIFIERS,
    FAST_FIXED,
    FAST_GRIDS,
    GRIDS,
    classifier_pipeline,
    save_pipeline,
)
from mame_transfer.core.cli import choices_list
from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.core.fileio import atomic_path, output_folder, write_json, write_text

FEATURE_SETS = ("embeddings", "embeddings+metadata", "embeddings+metadata+umap", "metadata")


@dataclass
class Inputs:
    """Design matrices per split for one feature set, labels, and column names."""

    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    names: list[str]


@dataclass
class Source:
    """What the comparison reads: per split an embedding matrix (or None) and a metadata table."""

    classes: list[str]
    embeddings: dict[str, np.ndarray | None]
    metadata: dict[str, pd.DataFrame]
    description: str = ""

    @property
    def splits(self) -> list[str]:
        return [s for s in ("train", "val", "test") if s in self.metadata]


def source_from_store(store, feature_set: str = "embeddings") -> Source:
    """Read a feature store (path or :class:`~mame_transfer.store.store.FeatureStore`) into memory."""
    from mame_transfer.store.store import MANIFEST, FeatureStore, check_one_dataset, load_store

    store = store if isinstance(store, FeatureStore) else load_store(store)
    check_one_dataset(store)
    if "train" not in store.splits:
        raise DataError(f"{store.path / MANIFEST}: the comparison needs a 'train' split "
                        f"(present: {', '.join(store.splits)}).")
    emb = {s: np.asarray(store.embeddings(s, feature_set), dtype=np.float32) for s in store.splits}
    meta = {s: store.metadata(s) for s in store.splits}
    m = store.manifest
    desc = f"{m.get('arch')} {m.get('layer')} ({feature_set}) from {store.path}"
    return Source(store.classes, emb, meta, desc)


def source_from_dataset(dataset) -> Source:
    """Metadata only (no images needed): a :class:`mame_transfer.datasets.tables.Dataset`."""
    meta = {s: dataset.split(s) for s in dataset.subsets}
    return Source(list(dataset.classes), {s: None for s in meta}, meta, f"metadata of {dataset.source}")


def build_inputs(source: Source, feature_set: str, *, umap_components: int = 8, seed: int = 0,
                 umap_cache: dict | None = None, umap_factory: Callable | None = None) -> Inputs:
    """Design matrices of one feature set; UMAP is fitted on train only and applied to the other splits."""
    from mame_transfer.classifiers.inputs import metadata_features

    if feature_set not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set {feature_set!r}. Choose from: {', '.join(FEATURE_SETS)}")
    splits = source.splits
    y = {s: source.metadata[s]["label_index"].to_numpy(dtype=int) for s in splits}
    parts: dict[str, list[np.ndarray]] = {s: [] for s in splits}
    names: list[str] = []
    uses_emb = feature_set.startswith("embeddings")
    if uses_emb:
        if source.embeddings.get("train") is None:
            raise ConfigError(f"feature set {feature_set!r} needs embeddings; {source.description} has none")
        for s in splits:
            parts[s].append(source.embeddings[s])
        names += [f"e{i}" for i in range(source.embeddings["train"].shape[1])]
    if "metadata" in feature_set:
        museums = sorted(source.metadata["train"]["museum"].astype(str).unique())
        for s in splits:
            table = source.metadata[s].copy()
            table["museum"] = table["museum"].astype(str)
            X, meta_names = metadata_features(table, museums)
            parts[s].append(X)
        names += meta_names
    if feature_set.endswith("+umap"):
        cache = umap_cache if umap_cache is not None else {}
        key = ("umap", umap_components, seed)
        if key not in cache:
            cache[key] = fit_umap(source.embeddings, splits, umap_components, seed, umap_factory)
        for s in splits:
            parts[s].append(cache[key][s])
        names += [f"umap{i}" for i in range(umap_components)]
    X = {s: np.hstack(parts[s]).astype(np.float32) for s in splits}
    return Inputs(X, y, names)


def fit_umap(embeddings: dict[str, np.ndarray], splits: Sequence[str], n_components: int, seed: int,
             factory: Callable | None = None) -> dict:
    """UMAP coordinates: fitted on standardised train embeddings, ``transform`` for the other splits.

    Args:
        factory: ``(n_components, n_neighbors, seed) -> reducer`` with ``fit_transform``/``transform``;
            default ``umap.UMAP`` (McInnes et al. 2018).
    """
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(embeddings["train"])
    n_train = len(embeddings["train"])
    if factory is None:
        import umap

        def factory(n, k, s):
            return umap.UMAP(n_components=n, n_neighbors=k, random_state=s, n_jobs=1)

    reducer = factory(n_components, min(15, n_train - 1), seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {"train": reducer.fit_transform(scaler.transform(embeddings["train"]))}
        for s in splits:
            if s != "train":
                out[s] = reducer.transform(scaler.transform(embeddings[s]))
    return {s: np.asarray(v, dtype=np.float32) for s, v in out.items()}


def scores(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class scores ``[n, n_classes]`` for ranking: probabilities, else decision function (LinearSVC, SVC)."""
    if hasattr(estimator, "predict_proba") and _has_proba(estimator):
        raw = estimator.predict_proba(X)
    else:
        raw = estimator.decision_function(X)
        if raw.ndim == 1:  # binary: positive-class margin
            raw = np.column_stack([-raw, raw])
    out = np.full((len(X), n_classes), -np.inf)
    out[:, np.asarray(estimator.classes_, dtype=int)] = raw
    return out


def _has_proba(estimator) -> bool:
    try:
        clf = estimator[-1] if hasattr(estimator, "steps") else estimator
        return not (hasattr(clf, "probability") and not clf.probability) and hasattr(clf, "predict_proba") \
            and type(clf).__name__ != "LinearSVC"
    except Exception:
        return False


def split_metrics(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray) -> dict:
    """n, top-1 (from predict), top-5 (from score ranks; only with more than 5 classes), macro F1, and the
    bootstrap 95 % intervals of top-1 and macro F1 (as text, ``[low, high]``)."""
    from sklearn.metrics import f1_score

    from mame_transfer.inference.metrics import bootstrap_ci

    labels = np.arange(score.shape[1])
    ci = bootstrap_ci(y_true, y_pred, score.shape[1])
    out = {"n": int(len(y_true)), "top1": float((y_pred == y_true).mean()),
           "top1_ci": f"[{ci['top1'][0]:.4f}, {ci['top1'][1]:.4f}]"}
    if score.shape[1] > 5:  # with 5 classes or fewer every image is in its top 5
        top = np.argsort(-score, axis=1)[:, :5]
        out["top5"] = float((top == y_true[:, None]).any(axis=1).mean())
    out["macro_f1"] = float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    out["macro_f1_ci"] = f"[{ci['macro_f1'][0]:.4f}, {ci['macro_f1'][1]:.4f}]"
    return out


def cv_folds(y: np.ndarray, folds: int = 3, seed: int = 0):
    from sklearn.model_selection import StratifiedKFold

    smallest = np.bincount(y)[np.bincount(y) > 0].min()
    k = int(min(folds, smallest))
    if k < 2:
        raise DataError(f"a class has {smallest} training example(s); cross-validation needs at least 2 per class")
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def fit_one(name: str, inputs: Inputs, n_classes: int, *, fast: bool = False, seed: int = 0, n_jobs: int = 1):
    """Grid-search one pipeline on train; returns (fitted best pipeline, result row dict, predictions per split)."""
    from sklearn.model_selection import GridSearchCV

    grid = (FAST_GRIDS if fast else GRIDS)[name]
    pipe = classifier_pipeline(name, seed)
    if fast and name in FAST_FIXED:
        pipe.set_params(**FAST_FIXED[name])
    Xtr, ytr = inputs.X["train"], inputs.y["train"]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of LinearSVC/LogisticRegression on small grids
        if grid:
            search = GridSearchCV(pipe, grid, cv=cv_folds(ytr, 3, seed), scoring="accuracy", n_jobs=n_jobs,
                                  refit=True, error_score=np.nan)
            search.fit(Xtr, ytr)
            best, cv_score, params = search.best_estimator_, float(search.best_score_), search.best_params_
        else:
            best, cv_score, params = pipe.fit(Xtr, ytr), float("nan"), {}
    fit_s = time.perf_counter() - t0
    row = {"classifier": name, "cv_top1": cv_score,
           "params": json.dumps({k.replace("clf__", ""): v for k, v in params.items()}), "fit_s": fit_s}
    preds = {}
    predict_s = 0.0
    for split in ("val", "test"):
        if split not in inputs.X:
            row.update({f"{split}_{k}": np.nan for k in ("n", "top1", "top1_ci", "top5", "macro_f1", "macro_f1_ci")})
            continue
        t0 = time.perf_counter()
        y_pred = best.predict(inputs.X[split])
        sc = scores(best, inputs.X[split], n_classes)
        predict_s += time.perf_counter() - t0
        m = split_metrics(inputs.y[split], y_pred, sc)
        row.update({f"{split}_{k}": v for k, v in m.items()})
        preds[split] = y_pred
    row["predict_s"] = predict_s
    return best, row, preds


@dataclass
class Comparison:
    """Result of :func:`compare`: the table and the best pipeline (by val top-1).

    Attributes:
        predictions: ``{(feature_set, classifier): {split: predicted class indices}}`` of every pipeline, for
            per-class scores and paired tests (:mod:`mame_transfer.classifiers.significance`).
    """

    table: pd.DataFrame
    best: object
    best_row: dict
    best_predictions: dict
    classes: list[str]
    y: dict
    feature_names: list[str]
    predictions: dict = field(default_factory=dict)
    all_predictions: dict | None = None  # (feature set, classifier) -> {split: (predicted, scores)}, keep_all only


def compare(source: Source, *, feature_sets: Sequence[str] = FEATURE_SETS, classifiers: Sequence[str] = CLASSIFIERS,
            fast: bool = False, umap_components: int = 8, seed: int = 0, n_jobs: int = 1,
            verbose: int = 1, umap_factory: Callable | None = None, keep_all: bool = False) -> Comparison:
    """Fit every classifier on every feature set; rank by val top-1 (test is never used for any choice).

    With ``verbose`` a progress bar counts the fits (with an ETA) and one line per fit gives its scores.
    ``keep_all``: also keep every pipeline's predictions and class scores per split (cross-validation needs them).
    """
    from mame_transfer.core.progress import bar

    for c in classifiers:
        if c not in CLASSIFIERS:
            raise ConfigError(f"unknown classifier {c!r}. Choose from: {', '.join(CLASSIFIERS)}")
    if "val" not in source.splits:
        raise DataError(f"{source.description}: the comparison ranks pipelines on a 'val' split, which is missing")
    rows, best, predictions, kept = [], None, {}, {}
    umap_cache: dict = {}
    n_classes = len(source.classes)
    with bar(len(feature_sets) * len(classifiers), "classifier fits", unit="fit", verbose=verbose) as progress:
        for fs in feature_sets:
            progress.set_postfix_str(f"{fs}: building inputs")
            inputs = build_inputs(source, fs, umap_components=umap_components, seed=seed, umap_cache=umap_cache,
                                  umap_factory=umap_factory)
            for name in classifiers:
                progress.set_postfix_str(f"{fs} · {name}")
                model, row, preds = fit_one(name, inputs, n_classes, fast=fast, seed=seed, n_jobs=n_jobs)
                if keep_all:
                    kept[(fs, name)] = {split: (p, scores(model, inputs.X[split], n_classes))
                                        for split, p in preds.items()}
                row = {"feature_set": fs, "dim": inputs.X["train"].shape[1], **row}
                rows.append(row)
                predictions[(fs, name)] = preds
                progress.update()
                if verbose:
                    test = f" test {row['test_top1']:.4f}" if not np.isnan(row["test_top1"]) else ""
                    progress.write(f"[classify] {fs:<26} {name:<14} val top-1 {row['val_top1']:.4f}{test}  "
                                   f"fit {row['fit_s']:.1f}s", file=sys.stderr)
                if best is None or row["val_top1"] > best[1]["val_top1"]:
                    best = (model, row, preds, inputs.names, inputs.y)
    cols = ["feature_set", "classifier", "dim", "val_n", "val_top1", "val_top1_ci", "val_top5", "val_macro_f1",
            "val_macro_f1_ci", "test_n", "test_top1", "test_top1_ci", "test_top5", "test_macro_f1", "test_macro_f1_ci",
            "cv_top1", "fit_s", "predict_s", "params"]
    if n_classes <= 5:  # top-5 says nothing with 5 classes or fewer
        cols = [c for c in cols if not c.endswith("_top5")]
    table = pd.DataFrame(rows)[cols]
    model, row, preds, names, y = best
    return Comparison(table, model, row, preds, list(source.classes), y, names, predictions,
                      kept if keep_all else None)


def markdown_table(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown (scores with 4 decimals, seconds with 2; NaN shown as '–')."""
    from mame_transfer.core.fileio import markdown_table as to_markdown

    return to_markdown(table, column_formats={"_s": "{:.2f}"})


def accuracy_figure(table: pd.DataFrame, metric: str = "val_top1"):
    """Bar plot of one metric per (feature set, classifier), best first."""
    from mame_transfer.core import plots

    t = table.sort_values(metric, ascending=False)
    labels = [f"{r.feature_set} · {r.classifier}" for r in t.itertuples()]
    return plots.bar_figure(labels, t[metric].fillna(0).to_numpy(), xlabel=metric.replace("_", " "),
                            title=f"{metric.replace('_', ' ')} by feature set and classifier")


def heatmap_figure(table: pd.DataFrame, metric: str = "val_top1"):
    """Feature set x classifier grid of one metric, each cell labelled (rows and columns in table order)."""
    from mame_transfer.core.plots import PlainFigure

    grid = table.pivot_table(index="feature_set", columns="classifier", values=metric, aggfunc="first", sort=False)
    values = grid.to_numpy(dtype=float)
    fig = PlainFigure(figsize=(1.1 * grid.shape[1] + 3.2, 0.55 * grid.shape[0] + 1.8))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    im = ax.imshow(values, cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-9, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=metric.replace("_", " "))
    ax.set_xticks(range(grid.shape[1]), labels=list(grid.columns), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), labels=list(grid.index), fontsize=8)
    middle = (low + high) / 2
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="black" if values[i, j] > middle else "white")
    ax.set_xlabel("classifier")
    ax.set_ylabel("feature set")
    ax.set_title(f"{metric.replace('_', ' ')}: feature set x classifier")
    fig.tight_layout()
    return fig


KIND = "classifier-comparison"  # the owner kind of a classify output folder


def write_outputs(result: Comparison, out: str | Path, *, description: str = "", overwrite: bool = False) -> Path:
    """Write the comparison's files into ``out`` and return it.

    ``results.csv`` / ``results.md`` (the table), ``accuracy.png`` (bars), ``accuracy_heatmap.png`` (feature set x
    classifier), ``confusion_matrix_<split>.png`` of the best pipeline, ``best_model.skops`` and ``best_model.json``.
    ``out`` is written whole; it must be new, empty or an earlier comparison (replaced only with ``overwrite``).
    """
    target = Path(out)
    with claim_outputs(target, overwrite=overwrite) as existed, atomic_path(target, kind=KIND, replace=existed) as tmp:
        tmp.mkdir()
        _write_outputs(result, tmp, description)
    return target


def claim_outputs(out: str | Path, *, overwrite: bool = False):
    """Lock ``out`` and check it may take a comparison (a context manager yielding whether one is there).

    ``classify`` holds it from the start, so a second process on the same ``--out`` stops at once.
    """
    return output_folder(out, KIND, overwrite=overwrite, what="classifier comparison", command="classify",
                         legacy=lambda p: (p / "results.csv").is_file() and (p / "best_model.json").is_file())


def _write_outputs(result: Comparison, out: Path, description: str) -> None:
    from sklearn.metrics import confusion_matrix

    from mame_transfer.core import plots

    write_text(out / "results.csv", result.table.to_csv(index=False))
    head = f"# Classifier comparison\n\n{description}\n\n" if description else "# Classifier comparison\n\n"
    write_text(out / "results.md", head + markdown_table(result.table))
    plots.save(accuracy_figure(result.table), out / "accuracy.png")
    plots.save(heatmap_figure(result.table), out / "accuracy_heatmap.png")
    labels = np.arange(len(result.classes))
    for split, y_pred in result.best_predictions.items():
        cm = confusion_matrix(result.y[split], y_pred, labels=labels)
        title = f"{result.best_row['classifier']} on {result.best_row['feature_set']} ({split} top-1 " \
                f"{result.best_row[f'{split}_top1']:.3f})"
        plots.save(plots.confusion_matrix_figure(cm, result.classes, title=title), out / f"confusion_matrix_{split}.png")
    save_pipeline(result.best, out / "best_model.skops")
    write_json(out / "best_model.json", {
        "classifier": result.best_row["classifier"], "feature_set": result.best_row["feature_set"],
        "params": json.loads(result.best_row["params"]), "classes": result.classes,
        "feature_names": result.feature_names, "val_top1": result.best_row["val_top1"],
        "test_top1": result.best_row["test_top1"], "source": description,
        "note": "UMAP columns (if any) come from a UMAP fitted on the train split; it is not part of the pipeline"})


def feature_sets_for(with_: str | None) -> list[str]:
    """``--with metadata,umap`` -> the feature sets compared (embeddings alone always)."""
    extras = choices_list(with_, ("metadata", "umap"), "--with value")
    sets = ["embeddings"]
    if "metadata" in extras:
        sets.append("embeddings+metadata")
    if "umap" in extras:
        if "metadata" not in extras:
            raise ConfigError("--with umap adds UMAP to embeddings+metadata; pass --with metadata,umap")
        sets.append("embeddings+metadata+umap")
    if "metadata" in extras:
        sets.append("metadata")
    return sets

