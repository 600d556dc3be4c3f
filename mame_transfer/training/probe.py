"""Linear probe: the softmax layer of a frozen network fitted by logistic regression (``--head-solver logreg``).

With the whole backbone frozen (``--freeze-until all``) and a linear head (``--head none``), the model's only
weights to learn are those of its softmax layer, and the pooled features are cached once per image (prefix cache).
Instead of epochs of SGD with early stopping on a small selection slice, the layer can be fitted as what it is, a
multinomial logistic regression: features standardised on the training rows, L2 strength ``C`` chosen by stratified
3-fold cross-validation on the training rows only, then refitted on all of them. The standardisation is folded into
the layer's kernel and bias, so the run's ``model.keras`` is an ordinary Keras model (predict, export, evaluate work as
for any run) whose softmax equals the regression's probabilities. Val (and test) are only scored at the end.

LP-FT (Kumar et al. 2022, "Fine-tuning can distort pretrained features"): with ``--freeze-until BLOCK`` and
``--warmup-epochs N``, the warm-up phase (backbone frozen whole) is this probe instead of N epochs of SGD, and the
blocks after ``BLOCK`` are then fine-tuned from it as usual (epochs N+1 ... ``--epochs``, best epoch and early
stopping as for any fine-tune). The probe fits un-augmented features even when ``--augment`` is on; the
augmentation applies to the fine-tuning epochs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import write_json

log = logging.getLogger("mame_transfer")

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
PROBE_JSON = "probe.json"
LAYER = "predictions"


def is_probe_only(config: TrainConfig) -> bool:
    """The whole run is the probe (no epochs): ``--head-solver logreg --freeze-until all``."""
    return config.head_solver == "logreg" and config.freeze_until == "all"


def check_probe_config(config: TrainConfig) -> None:
    """Refuse what the probe would otherwise ignore."""
    from mame_transfer.models.build import HeadSpec

    only = is_probe_only(config)
    wrong = [flag for flag, bad in (
        ("--freeze-until all (or --warmup-epochs N: the probe, then fine-tuning from it)",
         not only and not config.warmup_epochs),
        ("--head none", bool(HeadSpec.parse(config.head).widths)),
        ("--no-augment (the probe fits un-augmented features once)", only and config.augment),
        ("no --progressive", config.progressive), ("no --warmup-epochs", only and config.warmup_epochs),
        ("--shape fixed", config.shape != "fixed"), ("--prefix-cache auto, memory or disk", config.prefix_cache == "off"),
        ("no --steps-per-epoch", config.steps_per_epoch), ("--strategy default", config.strategy != "default"),
    ) if bad]
    if wrong:
        raise ConfigError(f"--head-solver logreg fits the softmax layer of a frozen network on cached features; it "
                          f"needs {', '.join(wrong)}")


def _features(dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in dataset:  # one pass over the cached rows (order does not matter)
        xs.append(np.asarray(x, dtype=np.float32))
        y = np.asarray(y)
        ys.append(y.argmax(-1) if y.ndim == 2 else y)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def fit_logreg(x: np.ndarray, y: np.ndarray, *, seed: int = 0, class_weight: str | None = None):
    """Standardise ``x``, pick ``C`` from ``C_GRID`` by stratified 3-fold CV on these rows, refit on all of them.

    Returns ``(mean, std, classifier, C, {C: CV accuracy}, CV folds)``; the classifier expects ``(x - mean) / std``.
    Ties go to the stronger regularisation; with fewer than 2 rows in some class there is no CV and ``C`` is 0.1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    mean, std = x.mean(0), x.std(0)
    std[std < 1e-6] = 1.0  # constant features (e.g. dead ReLUs) carry no information
    z = (x - mean) / std
    present = np.unique(y)
    weights = "balanced" if class_weight == "balanced" else None
    folds = min(3, int(np.bincount(y)[present].min()))
    scores = {}
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for c in C_GRID:
            scores[c] = round(float(cross_val_score(LogisticRegression(C=c, max_iter=5000, class_weight=weights), z, y,
                                              cv=cv).mean()), 9)  # equal scores compare equal
        best = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    else:
        best = 0.1
    clf = LogisticRegression(C=best, max_iter=5000, class_weight=weights).fit(z, y)
    return mean, std, clf, best, scores, folds


def fit_probe(suffix, train_ds, num_classes: int, *, seed: int, class_weight: str, work: Path) -> dict:
    """Fit ``suffix``'s softmax layer (the model on cached pooled features) by logistic regression, in place."""
    weighted = [layer.name for layer in suffix.layers if layer.weights and layer.name != LAYER]
    if weighted:
        raise ConfigError(f"--head-solver logreg: layers with weights after the cached features ({', '.join(weighted)})"
                          " would stay untrained; use --freeze-until all --head none")
    x, y = _features(train_ds)
    mean, std, clf, best, scores, folds = fit_logreg(x, y, seed=seed, class_weight=class_weight)
    present = np.unique(y)
    coef, intercept = clf.coef_, clf.intercept_
    if len(present) == 2 and coef.shape[0] == 1:  # binary: p(1) = sigmoid(w.x + b) = softmax([0, w.x + b])
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    kernel = np.zeros((x.shape[1], num_classes), np.float32)
    bias = np.full(num_classes, -30.0, np.float32)  # a class without training rows is never predicted
    kernel[:, present] = (coef / std).T
    bias[present] = intercept - (coef / std) @ mean
    layer = suffix.get_layer(LAYER)
    layer.set_weights([kernel.astype(layer.weights[0].dtype), bias.astype(layer.weights[1].dtype)])
    train_acc = float(clf.score((x - mean) / std, y))
    info = dict(solver="logistic regression (multinomial, lbfgs, L2)", n=int(len(y)), features=int(x.shape[1]),
                classes_trained=[int(c) for c in present], c_grid=list(C_GRID),
                cv_folds=folds, cv_accuracy={str(c): s for c, s in scores.items()}, c=best, train_accuracy=train_acc)
    write_json(work / PROBE_JSON, info)
    log.info("linear probe: %d training rows x %d features; C=%s (%s); train accuracy %.4f", len(y), x.shape[1], best,
             ", ".join(f"C={c}: {s:.4f}" for c, s in scores.items()) + f" by {folds}-fold CV on train"
             if scores else "too few rows per class for CV", train_acc)
    return info
