"""Linear CKA between layers of two networks, and the distance between their convolution kernels.

Following Gonthier, Gousseau & Ladjal ("An analysis of the transfer learning of CNNs for artistic images",
2020), each layer is represented by the global spatial average of its channels (``[n, channels]``) and compared
with linear CKA (Kornblith et al. 2019). Over a dataset the minibatch estimator of Nguyen, Raghu & Kornblith
(2021, "Do wide and deep networks learn the same things?") is used: the unbiased HSIC of Song et al. (2012) is
averaged over minibatches, so memory does not grow with the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mame_transfer.analysis.outputs import AnalysisResult, output_dir
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.plots import PlainFigure as Figure  # plain-text labels


def _center(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    return x


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Exact linear CKA of two representations of the same ``n`` examples (``[n, p]`` and ``[n, q]``).

    ``CKA = ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``.
    """
    x, y = _center(x), _center(y)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"CKA needs the same examples in both representations. Received: {x.shape} and {y.shape}")
    xy = np.linalg.norm(x.T @ y) ** 2
    xx = np.linalg.norm(x.T @ x)
    yy = np.linalg.norm(y.T @ y)
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else 0.0


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012) of two ``n x n`` Gram matrices (``n >= 4``)."""
    n = k.shape[0]
    if n < 4:
        raise ConfigError(f"the unbiased HSIC needs at least 4 examples per batch. Received: n={n}")
    k = k.copy()
    l = l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones_k = k.sum(axis=0)
    ones_l = l.sum(axis=0)
    trace = float(np.sum(k * l))
    middle = float(ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2)))
    last = float(2.0 / (n - 2) * ones_k @ ones_l)
    return (trace + middle - last) / (n * (n - 3))


class MinibatchCKA:
    """Accumulates minibatch linear CKA between layers of model A and layers of model B.

    ``update`` takes, per batch, the ``[n, channels]`` features of every A layer and every B layer; ``pairs``
    chooses what is accumulated: ``"matching"`` (A layer i with B layer i) or ``"all"`` (every A x B pair).
    Memory is ``O(layers^2)`` numbers, whatever the number of batches.

    Attributes:
        cross_: summed HSIC(K_a, L_b), ``[len_a, len_b]`` (only the diagonal for ``matching``).
        self_a_, self_b_: summed HSIC(K, K) of each layer.
        batches_: number of batches seen.
    """

    def __init__(self, n_a: int, n_b: int, pairs: str = "matching"):
        if pairs not in ("matching", "all"):
            raise ConfigError(f"pairs must be 'matching' or 'all'. Received: pairs={pairs!r}")
        if pairs == "matching" and n_a != n_b:
            raise ConfigError(f"matching pairs need as many layers on both sides. Received: {n_a} and {n_b}")
        self.n_a, self.n_b, self.pairs = n_a, n_b, pairs
        self.cross_ = np.zeros((n_a, n_b))
        self.self_a_ = np.zeros(n_a)
        self.self_b_ = np.zeros(n_b)
        self.batches_ = 0

    def update(self, feats_a: Sequence[np.ndarray], feats_b: Sequence[np.ndarray]) -> "MinibatchCKA":
        grams_a = [np.asarray(f, np.float64) @ np.asarray(f, np.float64).T for f in feats_a]
        grams_b = [np.asarray(f, np.float64) @ np.asarray(f, np.float64).T for f in feats_b]
        if grams_a and grams_a[0].shape[0] < 4:
            return self  # the unbiased estimator is undefined below 4 examples (a tiny last batch): skip it
        for i, k in enumerate(grams_a):
            self.self_a_[i] += unbiased_hsic(k, k)
        for j, l in enumerate(grams_b):
            self.self_b_[j] += unbiased_hsic(l, l)
        if self.pairs == "matching":
            for i in range(self.n_a):
                self.cross_[i, i] += unbiased_hsic(grams_a[i], grams_b[i])
        else:
            for i, k in enumerate(grams_a):
                for j, l in enumerate(grams_b):
                    self.cross_[i, j] += unbiased_hsic(k, l)
        self.batches_ += 1
        return self

    def matrix(self) -> np.ndarray:
        """CKA for every accumulated pair (``[len_a, len_b]``; NaN where not accumulated)."""
        if not self.batches_:
            raise ConfigError("no batch of at least 4 examples was accumulated")
        denom = np.sqrt(np.clip(np.outer(self.self_a_, self.self_b_), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(denom > 0, self.cross_ / denom, 0.0)
        if self.pairs == "matching":
            mask = np.eye(self.n_a, dtype=bool)
            out = np.where(mask, out, np.nan)
        return out

    def matching(self) -> np.ndarray:
        """CKA of layer i of A with layer i of B."""
        return np.diagonal(self.matrix()).copy()


def compare_models(source_a, source_b, layers_a: Sequence[str], layers_b: Sequence[str],
                   batches: Iterable[np.ndarray], *, pairs: str = "matching", total: int | None = None,
                   verbose: int = 0) -> MinibatchCKA:
    """Stream image batches (0..255) through both models and accumulate minibatch CKA.

    ``verbose`` shows a progress bar counting images (out of ``total``, for the ETA).
    """
    from mame_transfer.analysis.sources import pooled_features
    from mame_transfer.core.progress import bar

    acc = MinibatchCKA(len(layers_a), len(layers_b), pairs)
    cache_a, cache_b = {}, {}
    with bar(total, "CKA", unit="img", verbose=verbose) as progress:
        for images in batches:
            fa = pooled_features(source_a, layers_a, images, _cache=cache_a)
            fb = pooled_features(source_b, layers_b, images, _cache=cache_b)
            acc.update(fa, fb)
            progress.update(len(images))
    return acc


def kernel_distances(model_a, model_b) -> list[dict]:
    """Per convolution layer present in both models with equal shapes: mean over filters of ``||W_a - W_b||_2``.

    Gonthier et al. (Table 2) report the mean l2 norm of the difference of the convolution kernels. Each row also
    gives the mean filter norm of model A, so ``relative`` = distance / that norm is comparable across layers.
    Depthwise kernels (``[h, w, channels, multiplier]``) count one filter per channel.
    """
    from keras import layers as kl

    rows = []
    b_layers = {layer.name: layer for layer in model_b.layers}
    for layer in model_a.layers:
        if not isinstance(layer, (kl.Conv2D, kl.DepthwiseConv2D)) or layer.name not in b_layers:
            continue
        other = b_layers[layer.name]
        wa = np.asarray(layer.get_weights()[0], np.float64)
        wb = np.asarray(other.get_weights()[0], np.float64) if other.get_weights() else None
        if wb is None or wa.shape != wb.shape:
            continue
        if isinstance(layer, kl.DepthwiseConv2D):
            fa = wa.reshape(wa.shape[0] * wa.shape[1], -1)
            fb = wb.reshape(wb.shape[0] * wb.shape[1], -1)
        else:
            fa, fb = wa.reshape(-1, wa.shape[-1]), wb.reshape(-1, wb.shape[-1])
        dist = np.linalg.norm(fa - fb, axis=0)
        norm = np.linalg.norm(fa, axis=0)
        rows.append({"layer": layer.name, "filters": int(fa.shape[1]), "mean_l2": float(dist.mean()),
                     "mean_norm_a": float(norm.mean()),
                     "relative": float(dist.mean() / norm.mean()) if norm.mean() > 0 else float("nan")})
    return rows


def overall_distance(rows: Sequence[dict]) -> float:
    """Mean l2 distance over every filter of every layer (filters weighted equally)."""
    total = sum(r["filters"] for r in rows)
    return float(sum(r["mean_l2"] * r["filters"] for r in rows) / total) if total else float("nan")


# --------------------------------------------------------------------------------------------- figures


def cka_curve_figure(layers: Sequence[str], values: Sequence[float], *, label: str = "",
                     title: str = "Linear CKA per layer") -> Figure:
    """CKA of matching layers against depth (layer names on the x axis)."""
    fig = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(layers))
    ax.plot(x, values, "-o", ms=3, label=label or None)
    ax.set_xticks(x, labels=list(layers), rotation=70, ha="right", fontsize=7)
    ax.set_ylim(min(0.0, float(np.nanmin(values)) - 0.05) if len(values) else 0, 1.02)
    ax.set_ylabel("linear CKA")
    ax.set_xlabel("layer (input -> output)")
    ax.grid(alpha=0.3)
    if label:
        ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def cka_heatmap_figure(matrix: np.ndarray, layers_a: Sequence[str], layers_b: Sequence[str], *,
                       label_a: str = "A", label_b: str = "B", title: str = "Linear CKA") -> Figure:
    """Layer x layer CKA matrix (rows: model A layers, columns: model B layers)."""
    matrix = np.asarray(matrix, dtype=float)
    side = max(5.0, 0.22 * max(len(layers_a), len(layers_b)) + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="magma", vmin=0, vmax=1, origin="lower")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="CKA")
    fs = 6 if max(len(layers_a), len(layers_b)) > 20 else 8
    ax.set_yticks(range(len(layers_a)), labels=list(layers_a), fontsize=fs)
    ax.set_xticks(range(len(layers_b)), labels=list(layers_b), rotation=70, ha="right", fontsize=fs)
    ax.set_ylabel(label_a)
    ax.set_xlabel(label_b)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def kernel_distance_figure(rows: Sequence[dict], *, relative: bool = False,
                           title: str = "Kernel change per layer") -> Figure:
    """Mean l2 distance (or distance relative to the pretrained filter norm) of conv kernels over depth."""
    key = "relative" if relative else "mean_l2"
    fig = Figure(figsize=(max(6.0, 0.28 * len(rows) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x, [r[key] for r in rows], color="#cc6677")
    ax.set_xticks(x, labels=[r["layer"] for r in rows], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("relative l2 distance" if relative else "mean l2 distance of filters")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def run_cka(*, a, b, data: str | None = None, toy: bool = False, split: str = "train", per_class: int | None = 0,
            batch_size: int = 32, seed: int = 0, image_size: int | None = None, layers: Sequence[str] | None = None,
            layer_pattern: str | None = None, matrix: bool = False, out: str | Path | None = None,
            verbose: int = 0) -> AnalysisResult:
    """Linear CKA per layer and conv kernel distances between two models, written as figures, CSV and JSON.

    Files in ``out`` (default ``<run>/analysis/cka`` of ``b``, else of ``a``): ``cka.json`` (every number),
    ``cka.csv`` and ``cka_curve.png`` (matching layers), ``cka_matrix.png`` (with ``matrix``),
    ``kernel_distance.csv`` and ``kernel_distance.png`` (when the models share conv layers).

    Args:
        a, b: model specs (``imagenet:ARCH``, ``random:ARCH``, a run directory) or loaded ModelSources.
        data, toy, split: the images (default: the dataset of run ``b`` or ``a``).
        per_class: images sampled per class (0: all).
        batch_size: images per minibatch of the CKA estimator.
        seed: seed of the sample and of random initialisations.
        image_size: input side of bare backbones (default: the run's).
        layers, layer_pattern: layers compared (default: every non-linearity output both models have).
        matrix: compare every layer of ``a`` with every layer of ``b``, not only layers of the same name.
        out: the output folder.
        verbose: 1 shows a progress bar over the images.
    """
    import pandas as pd

    from mame_transfer.analysis.sources import (
        common_layers,
        image_batches,
        load_pair,
        sample_table,
        spatial_layers,
    )
    from mame_transfer.core import plots
    from mame_transfer.core.fileio import write_json, write_text

    if b is None:
        raise ConfigError("CKA compares two models: pass --b as well as --a")
    a, b = load_pair(a, b, image_size=image_size, seed=seed)
    table, _ = sample_table(a, b, data=data, split=split, toy=toy, per_class=per_class, seed=seed)
    out = output_dir("cka", out, b, a)
    if matrix:
        la = spatial_layers(a.model, layers, pattern=layer_pattern)
        lb = spatial_layers(b.model, layers, pattern=layer_pattern)
    else:
        la = lb = common_layers(a, b, layers, pattern=layer_pattern)
    acc = compare_models(a, b, la, lb, image_batches(table, a.image_size, batch_size=batch_size),
                         pairs="all" if matrix else "matching", total=len(table), verbose=verbose)
    summary = {"a": a.label, "b": b.label, "split": split, "images": int(len(table)), "batch_size": batch_size,
               "batches": acc.batches_,
               "estimator": "minibatch unbiased HSIC (Nguyen et al. 2021) on per-channel spatial means"}
    title = f"{a.label} vs {b.label}"
    result = AnalysisResult(out, summary=summary)
    if matrix:
        m = acc.matrix()
        summary.update({"layers_a": la, "layers_b": lb, "matrix": m.tolist()})
        fig = cka_heatmap_figure(m, la, lb, label_a=a.label, label_b=b.label, title=f"Linear CKA: {title}")
        result.figures.append(plots.save(fig, out / "cka_matrix.png"))
        common = [n for n in la if n in lb]
        values = [float(m[la.index(n), lb.index(n)]) for n in common]
    else:
        common, values = la, [float(v) for v in acc.matching()]
    summary["matching"] = dict(zip(common, values))
    result.table = pd.DataFrame({"layer": common, "cka": values})
    if common:
        fig = cka_curve_figure(common, values, label=title, title="Linear CKA of matching layers")
        result.figures.append(plots.save(fig, out / "cka_curve.png"))
        result.data.append(write_text(out / "cka.csv", result.table.to_csv(index=False)))
    rows = kernel_distances(a.model, b.model)
    summary["kernel_distance"] = {"overall_mean_l2": overall_distance(rows), "layers": rows}
    if rows:
        result.data.append(write_text(out / "kernel_distance.csv", pd.DataFrame(rows).to_csv(index=False)))
        fig = kernel_distance_figure(rows, title=f"Mean l2 distance of conv filters: {title}")
        result.figures.append(plots.save(fig, out / "kernel_distance.png"))
    result.data.append(write_json(out / "cka.json", summary))
    return result
