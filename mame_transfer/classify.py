"""Compare scikit-learn classifiers on a feature store: ``python -m mame_transfer.classify STORE``.

Every classifier is a ``Pipeline(StandardScaler, estimator)`` whose hyperparameters are chosen by
``GridSearchCV`` (stratified 3-fold) on the training split only; val and test are only scored. Feature sets:

* ``embeddings``: the store's vectors (Razavian et al. 2014, "CNN features off-the-shelf");
* ``embeddings+metadata``: plus width, height, product size (log), aspect ratio and museum one-hot
  (:func:`mame_transfer.classifiers.inputs.metadata_features`);
* ``embeddings+metadata+umap``: plus ``--umap-components`` UMAP coordinates of the embeddings, UMAP fitted on
  train and applied to val/test;
* ``metadata``: the metadata columns alone.

Outputs in ``--out``: ``results.csv`` / ``results.md`` (val and test top-1, top-5 with more than 5 classes, macro
F1, fit and predict seconds, CV score, chosen parameters), ``accuracy.png`` and ``accuracy_heatmap.png`` (feature
set x classifier), ``confusion_matrix_<split>.png`` of the best pipeline by val top-1, ``best_model.skops`` (load
with :func:`load_pipeline`) and ``best_model.json``.

Examples::

    python -m mame_transfer.classify features/vgg16-ft --with metadata,umap --out results/vgg16-ft
    python -m mame_transfer.classify --metadata-only --data /path/to/MAMe --no-check --out results/metadata
    python -m mame_transfer.classify features/louvre-448 --with '' --folds 5 --out results/louvre-448-cv

With ``--folds K`` the comparison is cross-validated over train+val (the same folds as ``finetune --folds K`` with
the same ``--seed``): per fold outputs in ``fold-<i>/``, and ``cv_results.csv`` / ``.md`` with the mean and 95 %
interval over folds, the pooled out-of-fold scores, and the fold pipelines' ensemble on test
(:mod:`mame_transfer.classifiers.crossval`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mame_transfer.classifiers.comparison import FEATURE_SETS
from mame_transfer.classifiers.estimators import CLASSIFIERS
from mame_transfer.core import cli
from mame_transfer.core.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("classify", __doc__.splitlines()[0])
    p.add_argument("store", nargs="?", help="feature store folder (written by mame-features)")
    p.add_argument("--with", dest="with_", default="metadata,umap", metavar="EXTRAS",
                   help="extra columns beside the embeddings, comma-separated: '' (embeddings only), 'metadata', "
                        "or 'metadata,umap'")
    p.add_argument("--feature-sets", help=f"explicit comma-separated list instead of --with, among: "
                                          f"{', '.join(FEATURE_SETS)}")
    p.add_argument("--feature-set-name", default="embeddings", help="store array to use (e.g. imagenet_probs)")
    p.add_argument("--classifiers", help=f"comma-separated, among: {', '.join(CLASSIFIERS)} (default: all)")
    p.add_argument("--umap-components", type=cli.positive_int, default=8, help="UMAP columns added by --with ...,umap")
    p.add_argument("--fast", action="store_true", help="tiny grids (tests, quick looks)")
    p.add_argument("--metadata-only", action="store_true", help="no store: metadata features of --data")
    p.add_argument("--data", help="dataset for --metadata-only (MAMe CSV folder or class-per-folder set)")
    p.add_argument("--toy", action="store_true", help="MAMe layout: read the toy CSV")
    p.add_argument("--no-check", action="store_true", help="do not require the image files (metadata only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the estimators, UMAP and the folds")
    p.add_argument("--folds", type=cli.non_negative_int, default=0,
                   help="K-fold cross-validation over train+val (0 = rank on the val split); test only scored")
    p.add_argument("--out", required=True, help="output folder (results.csv, figures, best_model.skops)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier comparison at --out")
    cli.add_jobs(p, help="parallel cross-validation fits (default: 1)")
    cli.add_verbose(p)
    return p


def _classify(a) -> None:
    from mame_transfer.classifiers.comparison import claim_outputs

    classifiers = cli.choices_list(a.classifiers, CLASSIFIERS, "classifier") if a.classifiers else list(CLASSIFIERS)
    with claim_outputs(a.out, overwrite=a.overwrite) as existed:  # checked and locked before minutes of fitting
        _compare(a, classifiers, existed)


def _compare(a, classifiers, existed: bool) -> None:
    from mame_transfer.classifiers.comparison import (
        compare,
        feature_sets_for,
        markdown_table,
        source_from_dataset,
        source_from_store,
        write_outputs,
    )

    if a.metadata_only:
        from mame_transfer.datasets.layouts import load_dataset

        if not a.data:
            raise ConfigError("--metadata-only needs --data PATH")
        source = source_from_dataset(load_dataset(a.data, toy=a.toy, check_files=not a.no_check,
                                                  require=("train", "val")))
        sets = ["metadata"]
    else:
        if not a.store:
            raise ConfigError("pass a feature store folder (or --metadata-only --data PATH)")
        source = source_from_store(a.store, a.feature_set_name)
        sets = cli.choices_list(a.feature_sets, FEATURE_SETS, "feature set") if a.feature_sets \
            else feature_sets_for(a.with_)
    if a.folds:
        from mame_transfer.classifiers.comparison import KIND
        from mame_transfer.classifiers.crossval import cross_validate
        from mame_transfer.core.fileio import atomic_path

        with atomic_path(a.out, kind=KIND, replace=existed) as tmp:  # written whole, as one comparison folder
            tmp.mkdir()
            cv = cross_validate(source, folds=a.folds, out=tmp, seed=a.seed, feature_sets=sets,
                                classifiers=classifiers, fast=a.fast, umap_components=a.umap_components,
                                n_jobs=a.jobs or 1, verbose=a.verbose)
        print((Path(a.out) / "cv_results.md").read_text())
        print(f"best by mean val top-1 over {a.folds} folds: {cv.iloc[0]['classifier']} on {cv.iloc[0]['feature_set']}"
              f" -> {a.out}")
        return
    result = compare(source, feature_sets=sets, classifiers=classifiers, fast=a.fast,
                     umap_components=a.umap_components, seed=a.seed, n_jobs=a.jobs or 1, verbose=a.verbose)
    write_outputs(result, a.out, description=source.description, overwrite=a.overwrite)
    shown = ["feature_set", "classifier", "val_n", "val_top1", "val_top1_ci", "val_top5", "val_macro_f1", "test_top1",
             "test_top1_ci", "fit_s"]
    print(markdown_table(result.table[[c for c in shown if c in result.table]]))
    print(f"best by val top-1: {result.best_row['classifier']} on {result.best_row['feature_set']} -> {a.out}")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _classify, argv)


if __name__ == "__main__":
    sys.exit(main())
