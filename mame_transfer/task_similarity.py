"""How close is the target task to ImageNet? ``python -m mame_transfer.task_similarity STORE``.

Two views, both from the 1000 ImageNet probabilities of a pretrained backbone with its ImageNet head (a feature
store exported with ``--imagenet-probs``):

* per target class, the ImageNet labels most often ranked first, with their mean probability over the class's
  images (e.g. ``Ceramic -> pitcher 0.73``);
* a task-similarity score: the val (and test) accuracy a classifier reaches on the 1000-d ImageNet output, beside
  the same classifier on the store's embeddings. The closer the two, the more the ImageNet label space already
  separates the target classes.

Example::

    python -m mame_transfer.features --arch mobilenet --alpha 0.75 --data DATA --imagenet-probs --out STORE
    python -m mame_transfer.task_similarity STORE --out results/similarity
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.classifiers.estimators import CLASSIFIERS
from mame_transfer.core import cli


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("task_similarity", __doc__.splitlines()[0])
    p.add_argument("store", help="feature store exported with --imagenet-probs")
    p.add_argument("--split", default="val", help="split for the label table")
    p.add_argument("--top", type=cli.positive_int, default=3, help="ImageNet labels per class")
    p.add_argument("--classifier", default="logreg", choices=CLASSIFIERS,
                   help="classifier of the similarity score (as in classify)")
    p.add_argument("--full-grid", action="store_true", help="full hyperparameter grid (default: the fast one)")
    p.add_argument("--out", help="folder for imagenet_labels.csv, similarity.csv, task_similarity.md")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results at --out")
    cli.add_jobs(p, help="parallel cross-validation fits (default: 1)")
    cli.add_verbose(p)
    return p


def _task_similarity(args) -> None:
    from mame_transfer.classifiers.similarity import analyse, arrow_lines

    labels_table, scores = analyse(args.store, args.out, split=args.split, top=args.top,
                                   classifier=args.classifier, fast=not args.full_grid, n_jobs=args.jobs or 1,
                                   verbose=args.verbose, overwrite=args.overwrite)
    print("\n".join(arrow_lines(labels_table)))
    print(scores.to_string(index=False))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _task_similarity, argv)


if __name__ == "__main__":
    sys.exit(main())
