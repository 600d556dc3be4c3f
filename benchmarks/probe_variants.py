"""Variants of the ``best-cpu`` linear probe measured by 5-fold cross-validation, on features computed once.

The ``best-cpu`` recipe fits a logistic regression on MobileNet alpha 0.75 features pooled at several input sizes
(``--head-solver logreg``). This script asks what else the same frozen network offers the probe, without a
training run per variant: each image (and its mirror image) goes through the backbone once per scale, and several
poolings are kept side by side:

``avg``     global average of the last layer (what the recipe uses)
``max``     global maximum of the last layer
``gem``     generalised mean, p = 3, of the last layer
``mid``     global average of ``conv_pw_11_relu`` (two blocks below the top)

and, with ``--alphas 0.75,0.25``, the same for a second MobileNet width. A variant names the features it
concatenates (``avg`` = avg at every scale) and how mirrors are used: ``plain``; ``flipavg`` (features averaged
over the image and its mirror); ``flipaug`` (mirrors as extra training rows, probabilities averaged at scoring);
``tta`` (trained plain, probabilities averaged with the mirror's). Every variant is scored on the same folds as
``finetune --folds 5`` (:func:`mame_transfer.datasets.folds.assign_folds`, seed 0) with the probe's own fitting
(:func:`mame_transfer.training.probe.fit_logreg`: standardised features, C by 3-fold CV on the training folds).

    KERAS_HOME=../shared/keras_home python benchmarks/probe_variants.py --data /tmp/l14/louvre_mame --work /tmp/pv

The features are cached in ``<work>/features-<alpha>.npz``; a rerun only re-scores. Needs the MobileNet ImageNet
weights of each width (``../shared/keras_home``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

POOLINGS = ("avg", "max", "gem", "mid")
MID_LAYER = "conv_pw_11_relu"
DEFAULT_VARIANTS = ("avg:plain", "avg:flipavg", "avg:flipaug", "avg:tta", "gem:plain", "avg+max:plain",
                    "avg+mid:plain")


def extract(paths, *, alpha: float, image_size: int, scales, batch_size: int = 32) -> dict[str, np.ndarray]:
    """``{"<pooling><scale>[f]": rows x channels}`` for every image (``f``: its mirror image)."""
    import keras
    import tensorflow as tf

    base = keras.applications.MobileNet(alpha=alpha, include_top=False, weights="imagenet", input_shape=(None, None, 3))
    trunk = keras.Model(base.inputs, [base.get_layer(MID_LAYER).output, base.output])

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), antialias=True)

    out: dict[str, list] = {}
    for batch in tf.data.Dataset.from_tensor_slices(list(paths)).map(load).batch(batch_size):
        for mirror in ("", "f"):
            images = tf.image.flip_left_right(batch) if mirror else batch
            for side in scales:
                x = images if side == image_size else tf.image.resize(images, (side, side), antialias=True)
                mid, top = trunk(keras.applications.mobilenet.preprocess_input(x), training=False)
                pooled = {"avg": tf.reduce_mean(top, (1, 2)), "max": tf.reduce_max(top, (1, 2)),
                          "gem": tf.reduce_mean(tf.maximum(top, 1e-6) ** 3.0, (1, 2)) ** (1 / 3.0),
                          "mid": tf.reduce_mean(mid, (1, 2))}
                for name, value in pooled.items():
                    out.setdefault(f"{name}{side}{mirror}", []).append(value.numpy())
    return {key: np.concatenate(parts) for key, parts in out.items()}


def features(feats: dict[str, dict], spec: str, scales, mirror: bool = False) -> np.ndarray:
    """The concatenated columns of ``spec`` (``avg+mid``, ``avg@0.25``...) at every scale."""
    blocks = []
    for part in spec.split("+"):
        name, _, alpha = part.partition("@")
        table = feats[alpha or next(iter(feats))]
        blocks += [table[f"{name}{side}{'f' if mirror else ''}"] for side in scales]
    return np.concatenate(blocks, axis=1)


def score(feats, spec: str, mode: str, y: np.ndarray, fold: np.ndarray, scales) -> dict:
    from mame_transfer.training.probe import fit_logreg

    x, xf = features(feats, spec, scales), features(feats, spec, scales, mirror=True)
    pred, accs = np.zeros(len(y), np.int64), []
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        if mode == "flipavg":
            x_fit, y_fit, views = (x[tr] + xf[tr]) / 2, y[tr], [(x[te] + xf[te]) / 2]
        elif mode == "flipaug":
            x_fit, y_fit, views = np.concatenate([x[tr], xf[tr]]), np.concatenate([y[tr], y[tr]]), [x[te], xf[te]]
        elif mode in ("plain", "tta"):
            x_fit, y_fit, views = x[tr], y[tr], [x[te]] + ([xf[te]] if mode == "tta" else [])
        else:
            raise SystemExit(f"unknown mode {mode!r}: plain, flipavg, flipaug or tta")
        mean, std, clf, *_ = fit_logreg(x_fit, y_fit, seed=0)
        proba = np.mean([clf.predict_proba((v - mean) / std) for v in views], axis=0)
        pred[te] = clf.classes_[proba.argmax(1)]
        accs.append(float((pred[te] == y[te]).mean()))
    return dict(folds=accs, pooled=float((pred == y).mean()), dim=int(x.shape[1]), pred=pred)


def main(argv=None) -> int:
    from mame_transfer.datasets.folds import CV_SUBSETS, assign_folds
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.inference.metrics import bootstrap_ci, format_ci, mean_ci

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="image set in any layout the package reads (train+val are used)")
    p.add_argument("--work", required=True, help="folder for the cached features")
    p.add_argument("--alphas", default="0.75", help="MobileNet widths, comma separated (the first is the default)")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--scales", default="224,320,448")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS), help="SPEC:MODE, e.g. avg+mid:plain")
    args = p.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]
    dataset = load_dataset(args.data)
    table = dataset.table[dataset.table["subset"].isin(CV_SUBSETS)].reset_index(drop=True)
    y = table["label_index"].to_numpy(np.int64)
    fold = assign_folds(table, args.folds, seed=0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    feats = {}
    for alpha in args.alphas.split(","):
        cache = work / f"features-{alpha}-{args.image_size}-{'-'.join(map(str, scales))}.npz"
        if not cache.exists():
            t0 = time.perf_counter()
            arrays = extract(table["path"], alpha=float(alpha), image_size=args.image_size, scales=scales)
            np.savez(cache.with_suffix(".part.npz"), images=table["image"].to_numpy(str), **arrays)
            cache.with_suffix(".part.npz").rename(cache)
            print(f"features alpha {alpha}: {len(table)} images x {len(scales)} scales x 2 views in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        with np.load(cache) as saved:
            if list(saved["images"]) != list(table["image"].astype(str)):
                raise SystemExit(f"{cache} was computed for other images; delete it")
            feats[alpha] = {k: saved[k] for k in saved.files if k != "images"}
    print(f"{args.folds}-fold CV on {len(table)} train+val images of {args.data}; MobileNet alpha {args.alphas}, "
          f"{args.image_size} px input, scales {args.scales}\n")
    print("| variant | features | 5-fold mean top-1 [95% CI] | pooled top-1 [95% CI] | per fold |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        spec, _, mode = variant.partition(":")
        r = score(feats, spec, mode or "plain", y, fold, scales)
        m = mean_ci(r["folds"])
        boot = bootstrap_ci(y, r["pred"], dataset.num_classes)["top1"]
        print(f"| {spec}:{mode or 'plain'} | {r['dim']} | {format_ci(m['mean'], m['ci'])} | "
              f"{format_ci(r['pooled'], boot)} | {', '.join(f'{a:.3f}' for a in r['folds'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
