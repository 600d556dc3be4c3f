"""How close is the target task to ImageNet (``python -m mame_transfer.task_similarity``).

Two views, both from the 1000 ImageNet probabilities of a pretrained backbone with its ImageNet head (a feature
store exported with ``--imagenet-probs``): per target class, the ImageNet labels most often ranked first with their
mean probability; and the accuracy a classifier reaches on the 1000-d ImageNet output beside the same classifier
on the store's embeddings (the closer, the more the ImageNet label space already separates the target classes).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import DataError, WeightsError
from mame_transfer.core.fileio import atomic_path, output_folder, write_text

CLASS_INDEX_FILE = "imagenet_class_index.json"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, read from ``imagenet_class_index.json`` in the Keras cache.

    Looked up where Keras looks (``$KERAS_HOME/models``, then ``~/.keras/models``); never downloaded.

    Raises:
        WeightsError: the file is in none of those folders.
    """
    from mame_transfer.models.backbones import keras_models_dirs

    dirs = keras_models_dirs()
    for d in dirs:
        path = d / CLASS_INDEX_FILE
        if path.is_file():
            try:
                index = json.loads(path.read_text())
                return [index[str(i)][1] for i in range(1000)]
            except (ValueError, KeyError, IndexError) as exc:
                raise WeightsError(f"{path} is not a Keras ImageNet class index (1000 entries): {exc}") from exc
    raise WeightsError(f"{CLASS_INDEX_FILE} was not found in {', '.join(str(d) for d in dirs)}. Copy it into "
                       f"<dir>/models/ and set KERAS_HOME=<dir> (Keras downloads it with decode_predictions).")


def top_imagenet_labels(probs: np.ndarray, labels: Sequence[str], classes: Sequence[str],
                        imagenet_names: Sequence[str], top: int = 3) -> pd.DataFrame:
    """Most frequent ImageNet top-1 labels per target class.

    Returns:
        One row per (class, rank): ``class``, ``rank``, ``imagenet_label``, ``share`` (fraction of the class's
        images whose ImageNet top-1 is that label), ``mean_prob`` (mean probability of that label over the
        class's images), ``n`` (images of the class).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != len(imagenet_names):
        raise DataError(f"ImageNet probabilities of shape {probs.shape}; expected (n, {len(imagenet_names)})")
    if len(probs) != len(labels):
        raise DataError(f"{len(probs)} probability rows for {len(labels)} labels")
    rows = []
    for cls in classes:
        mask = labels == cls
        n = int(mask.sum())
        if not n:
            continue
        p = probs[mask]
        counts = np.bincount(p.argmax(axis=1), minlength=probs.shape[1])
        order = np.argsort(-counts, kind="stable")[:top]
        for rank, k in enumerate(order, start=1):
            if counts[k] == 0:
                break
            rows.append({"class": cls, "rank": rank, "imagenet_label": imagenet_names[k],
                         "share": counts[k] / n, "mean_prob": float(p[:, k].mean()), "n": n})
    return pd.DataFrame(rows, columns=["class", "rank", "imagenet_label", "share", "mean_prob", "n"])


def similarity_scores(store, *, classifier: str = "logreg", fast: bool = True, seed: int = 0, n_jobs: int = 1,
                      verbose: int = 0) -> pd.DataFrame:
    """Accuracy of one classifier (grid-searched on train) on the ImageNet output vs on the embeddings.

    ``verbose`` shows a progress bar over the two fits; ``n_jobs`` runs the CV fits in parallel.
    """
    from mame_transfer.classifiers.comparison import (
        build_inputs,
        fit_one,
        source_from_store,
    )
    from mame_transfer.core.progress import track

    rows = []
    fits = (("imagenet_probs", "log"), ("embeddings", None))
    for feature_set, transform in track(fits, desc=f"{classifier} fits", unit="fit", verbose=verbose):
        source = source_from_store(store, feature_set)
        if transform == "log":
            # log-probabilities: softmax outputs are heavy-tailed; the log makes them usable by linear models
            source.embeddings = {s: np.log(np.clip(e, 1e-7, 1.0)) for s, e in source.embeddings.items()}
        inputs = build_inputs(source, "embeddings")
        _, row, _ = fit_one(classifier, inputs, len(source.classes), fast=fast, seed=seed, n_jobs=n_jobs)
        rows.append({"features": feature_set, "dim": inputs.X["train"].shape[1], "classifier": classifier,
                     "val_top1": row["val_top1"], "test_top1": row["test_top1"], "cv_top1": row["cv_top1"]})
    out = pd.DataFrame(rows)
    emb = out.loc[out.features == "embeddings", "val_top1"].iloc[0]
    out["relative_to_embeddings"] = out["val_top1"] / emb if emb else np.nan
    return out


KIND = "task-similarity"  # the owner kind of a task_similarity output folder


def analyse(store_path: str | os.PathLike, out: str | os.PathLike | None = None, *, split: str = "val",
            top: int = 3, classifier: str = "logreg", fast: bool = True, n_jobs: int = 1, verbose: int = 0,
            overwrite: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both views for a store with ``imagenet_probs``; writes CSV + Markdown to ``out`` when given.

    ``out`` is written whole; it must be new, empty or earlier task-similarity results (replaced only with
    ``overwrite``).
    """
    from mame_transfer.classifiers.comparison import markdown_table
    from mame_transfer.store.store import IMAGENET_PROBS, MANIFEST, load_store

    store = load_store(store_path)
    if IMAGENET_PROBS not in store.feature_sets:
        raise DataError(f"{store.path / MANIFEST}: no 'imagenet_probs' feature set; re-export with "
                        f"mame-features ... --imagenet-probs")
    if out is None:
        return _tables(store, split, top, classifier, fast, n_jobs, verbose)
    with output_folder(out, KIND, overwrite=overwrite, what="task similarity result", command="task_similarity",
                       legacy=lambda p: (p / "similarity.csv").is_file()) as existed, \
            atomic_path(out, kind=KIND, replace=existed) as tmp:
        labels_table, scores = _tables(store, split, top, classifier, fast, n_jobs, verbose)
        tmp.mkdir()
        write_text(tmp / "imagenet_labels.csv", labels_table.to_csv(index=False))
        write_text(tmp / "similarity.csv", scores.to_csv(index=False))
        man = store.manifest
        write_text(tmp / "task_similarity.md",
                   f"# Task similarity: {man.get('arch')} (alpha {man.get('alpha')}) on {split}\n\n"
                   f"## Most frequent ImageNet top-1 labels per class\n\n{markdown_table(labels_table)}\n"
                   f"## Accuracy on the ImageNet output vs the embeddings\n\n{markdown_table(scores)}")
    return labels_table, scores


def _tables(store, split: str, top: int, classifier: str, fast: bool, n_jobs: int = 1,
            verbose: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    from mame_transfer.store.store import IMAGENET_PROBS

    names = imagenet_class_names()
    probs = np.asarray(store.embeddings(split, IMAGENET_PROBS))
    labels_table = top_imagenet_labels(probs, store.metadata(split)["label"].astype(str), store.classes, names, top)
    return labels_table, similarity_scores(store, classifier=classifier, fast=fast, n_jobs=n_jobs, verbose=verbose)


def arrow_lines(table: pd.DataFrame) -> list[str]:
    """``Ceramic -> pitcher 0.73 (41%)`` for the first-ranked label of each class."""
    first = table[table["rank"] == 1]
    return [f"{r['class']} -> {r.imagenet_label} {r.mean_prob:.2f} ({r.share:.0%})" for _, r in first.iterrows()]

