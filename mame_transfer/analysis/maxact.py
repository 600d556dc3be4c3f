"""Maximal-activation images per channel, their overlap between two models, and their class entropy.

Gonthier, Gousseau & Ladjal (2020) rank the images of a dataset by the global spatial average of a channel's
feature map, keep the top 100 per channel before and after fine-tuning, and report (i) the overlap ratio of the
two top-100 sets and (ii) the entropy of the class labels of each top-100 set, divided by its maximum
``log(num_classes)``. Images stream through the models; only a running top-k per channel is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mame_transfer.analysis.outputs import AnalysisResult, output_dir
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.plots import PlainFigure as Figure  # plain-text labels


class RunningTopK:
    """Running top-k (value, row index) per channel over a stream of ``[n, channels]`` batches.

    Memory is ``O(k x channels)`` whatever the stream length. Ties keep the earlier row.

    Attributes:
        values_: ``[k, channels]`` best values, descending.
        indices_: ``[k, channels]`` their global row indices (-1 while fewer than k rows were seen).
    """

    def __init__(self, k: int, channels: int):
        if k <= 0:
            raise ConfigError(f"top-k needs k >= 1. Received: k={k}")
        self.k, self.channels = int(k), int(channels)
        self.values_ = np.full((self.k, self.channels), -np.inf)
        self.indices_ = np.full((self.k, self.channels), -1, dtype=np.int64)
        self.seen_ = 0

    def update(self, batch: np.ndarray) -> "RunningTopK":
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim != 2 or batch.shape[1] != self.channels:
            raise ConfigError(f"expected a [n, {self.channels}] batch. Received shape {batch.shape}")
        n = batch.shape[0]
        rows = np.broadcast_to(np.arange(self.seen_, self.seen_ + n)[:, None], batch.shape)
        values = np.concatenate([self.values_, batch])
        indices = np.concatenate([self.indices_, rows])
        # Stable sort on (-value, index): descending values, earlier rows first among ties.
        order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), -values), axis=0)[: self.k]
        self.values_ = np.take_along_axis(values, order, axis=0)
        self.indices_ = np.take_along_axis(indices, order, axis=0)
        self.seen_ += n
        return self


def collect_topk(source, layers: Sequence[str], batches: Iterable[np.ndarray], k: int,
                 reduce: str = "mean", *, total: int | None = None, verbose: int = 0) -> dict[str, RunningTopK]:
    """Stream batches (0..255 images) through ``source`` and keep the top-k rows per channel of each layer.

    ``verbose`` shows a progress bar counting images (out of ``total``, for the ETA).
    """
    from mame_transfer.analysis.sources import pooled_features
    from mame_transfer.core.progress import bar

    tops: dict[str, RunningTopK] = {}
    cache: dict = {}
    with bar(total, f"top-{k} of {source.label}", unit="img", verbose=verbose) as progress:
        for images in batches:
            feats = pooled_features(source, layers, images, reduce=reduce, _cache=cache)
            for name, f in zip(layers, feats):
                if name not in tops:
                    tops[name] = RunningTopK(k, f.shape[1])
                tops[name].update(f)
            progress.update(len(images))
    return tops


def overlap_ratio(idx_a: np.ndarray, idx_b: np.ndarray) -> np.ndarray:
    """Per channel, the share of the top-k rows of A that are also in the top-k of B (``[k, c]`` inputs)."""
    idx_a, idx_b = np.asarray(idx_a), np.asarray(idx_b)
    if idx_a.shape != idx_b.shape:
        raise ConfigError(f"top-k index arrays differ in shape: {idx_a.shape} vs {idx_b.shape}")
    k = idx_a.shape[0]
    return np.array([len(np.intersect1d(idx_a[:, c], idx_b[:, c])) / k for c in range(idx_a.shape[1])])


def class_entropy(idx: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per channel, entropy of the class labels of its top-k rows divided by ``log(num_classes)`` (0..1)."""
    if num_classes < 2:
        raise ConfigError(f"class entropy needs at least 2 classes. Received: {num_classes}")
    labels = np.asarray(labels)
    out = np.empty(idx.shape[1])
    for c in range(idx.shape[1]):
        counts = np.bincount(labels[idx[:, c][idx[:, c] >= 0]], minlength=num_classes).astype(float)
        p = counts[counts > 0] / counts.sum()
        out[c] = float(-(p * np.log(p)).sum() / np.log(num_classes))
    return out


# --------------------------------------------------------------------------------------------- figures


def topk_grid_figure(thumbs: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], *,
                     captions: Sequence[Sequence[str]] | None = None, title: str = "") -> Figure:
    """Rows of thumbnails (one row per channel and model), each row labelled on the left."""
    rows = len(thumbs)
    cols = max((len(r) for r in thumbs), default=1) or 1
    fig = Figure(figsize=(1.25 * cols + 1.6, 1.35 * rows + 0.5))
    for r, row in enumerate(thumbs):
        for c in range(cols):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(row):
                ax.imshow(row[c])
                if captions is not None and c < len(captions[r]):
                    ax.set_title(captions[r][c], fontsize=6)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def depth_boxplot_figure(per_layer: dict[str, Sequence[Sequence[float]]], layers: Sequence[str], *,
                         ylabel: str, title: str = "") -> Figure:
    """Box plots over depth: one box per layer for each series (``{series: [values of layer i]}``)."""
    fig = Figure(figsize=(max(6.0, 0.45 * len(layers) * max(1, len(per_layer)) + 2), 4))
    ax = fig.add_subplot()
    n = max(1, len(per_layer))
    width = 0.8 / n
    colors = ["#4477aa", "#ee6677", "#228833", "#ccbb44"]
    handles = []
    for s, (name, series) in enumerate(per_layer.items()):
        pos = np.arange(len(layers)) + (s - (n - 1) / 2) * width
        bp = ax.boxplot([np.asarray(v, float) for v in series], positions=pos, widths=width * 0.9,
                        patch_artist=True, showfliers=False)
        for patch in bp["boxes"]:
            patch.set_facecolor(colors[s % len(colors)])
            patch.set_alpha(0.7)
        handles.append(bp["boxes"][0] if bp["boxes"] else None)
    ax.set_xticks(np.arange(len(layers)), labels=list(layers), rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, axis="y")
    if len(per_layer) > 1:
        ax.legend([h for h in handles if h is not None], list(per_layer), fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def run_maxact(*, a, b=None, data: str | None = None, toy: bool = False, split: str = "train",
               per_class: int | None = 0, batch_size: int = 32, seed: int = 0, image_size: int | None = None,
               layers: Sequence[str] | None = None, layer_pattern: str | None = None, top: int = 100,
               reduce: str = "mean", channels: Sequence[int] | None = None, grid_channels: int = 4, show: int = 8,
               out: str | Path | None = None, verbose: int = 0) -> AnalysisResult:
    """Top-``top`` images per channel of every layer: class entropy, overlap between ``a`` and ``b``, grids.

    Files in ``out`` (default ``<run>/analysis/maxact`` of ``b``, else of ``a``): ``maxact.json`` and
    ``maxact.csv`` (per layer: entropy and overlap mean/median, channels), ``maxact_<layer>.png`` (grids),
    ``maxact_entropy.png`` and, with ``b``, ``maxact_overlap.png``.

    Args:
        a, b: model specs (``imagenet:ARCH``, ``random:ARCH``, a run directory) or loaded ModelSources; ``b``
            is optional.
        data, toy, split, per_class, batch_size, seed, image_size, layers, layer_pattern: as for ``run_cka``.
        top: images kept per channel.
        reduce: spatial reduction of a channel (``mean`` or ``max``).
        channels: channels shown in the grids (default: the first ``grid_channels``).
        show: images per channel in the grids.
        out: the output folder.
        verbose: 1 shows a progress bar over the images of each model.
    """
    import pandas as pd

    from mame_transfer.analysis.sources import (
        common_layers,
        image_batches,
        load_pair,
        sample_table,
        thumbnail,
    )
    from mame_transfer.core import plots
    from mame_transfer.core.fileio import write_json, write_text

    a, b = load_pair(a, b, image_size=image_size, seed=seed)
    table, classes = sample_table(a, b, data=data, split=split, toy=toy, per_class=per_class, seed=seed)
    if len(table) < top:
        raise ConfigError(f"--top {top} needs at least that many images; the {split} split "
                          f"(after --per-class) has {len(table)}")
    layers = common_layers(a, b, layers, pattern=layer_pattern)
    out = output_dir("maxact", out, b, a)
    tops = {}
    for src in (a, b) if b is not None else (a,):
        tops[src.label] = collect_topk(src, layers, image_batches(table, a.image_size, batch_size=batch_size), top,
                                       reduce=reduce, total=len(table), verbose=verbose)
    labels = table["label_index"].to_numpy()
    summary = {"a": a.label, "b": b.label if b else None, "split": split, "images": int(len(table)), "top": top,
               "reduce": reduce, "layers": {}}
    result = AnalysisResult(out, summary=summary)
    entropy = {name: [] for name in tops}
    overlap = []
    for layer in layers:
        info = {}
        for name, t in tops.items():
            e = class_entropy(t[layer].indices_, labels, len(classes))
            entropy[name].append(e)
            info[f"entropy_{name}"] = {"mean": float(e.mean()), "median": float(np.median(e))}
        if b is not None:
            o = overlap_ratio(tops[a.label][layer].indices_, tops[b.label][layer].indices_)
            overlap.append(o)
            info["overlap"] = {"mean": float(o.mean()), "median": float(np.median(o))}
        info["channels"] = int(tops[a.label][layer].channels)
        summary["layers"][layer] = info
        # Grids: the first ``show`` images of a few channels, A row above B row.
        chans = channels or list(range(min(grid_channels, tops[a.label][layer].channels)))
        thumbs, row_labels, captions = [], [], []
        for c in chans:
            for name, t in tops.items():
                idx = t[layer].indices_[:show, c]
                thumbs.append([thumbnail(table["path"].iloc[i], 96) for i in idx if i >= 0])
                captions.append([str(table["label"].iloc[i])[:14] for i in idx if i >= 0])
                row_labels.append(f"ch {c}\n{name[:22]}")
        fig = topk_grid_figure(thumbs, row_labels, captions=captions,
                               title=f"{layer}: top-{show} of top-{top} images per channel")
        result.figures.append(plots.save(fig, out / f"maxact_{layer}.png"))
    fig = depth_boxplot_figure(entropy, layers, ylabel="class entropy / log(classes)",
                               title=f"Class entropy of the top-{top} images per channel")
    result.figures.append(plots.save(fig, out / "maxact_entropy.png"))
    if overlap:
        fig = depth_boxplot_figure({"overlap": overlap}, layers, ylabel="overlap ratio",
                                   title=f"Overlap of the top-{top} images, {a.label} vs {b.label}")
        result.figures.append(plots.save(fig, out / "maxact_overlap.png"))
    rows = [{"layer": layer, **{f"{k}_{kk}": vv for k, v in info.items() if isinstance(v, dict)
                                for kk, vv in v.items()}, "channels": info["channels"]}
            for layer, info in summary["layers"].items()]
    result.table = pd.DataFrame(rows)
    result.data.append(write_text(out / "maxact.csv", result.table.to_csv(index=False)))
    result.data.append(write_json(out / "maxact.json", summary))
    return result
