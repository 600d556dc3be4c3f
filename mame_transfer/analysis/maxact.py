"""Maximal-activation images per channel, their overlap between two models, and their class entropy.

Gonthier, Gousseau & Ladjal (2020) rank the images of a dataset by the global spatial average of a channel's
feature map, keep the top 100 per channel before and after fine-tuning, and report (i) the overlap ratio of the
two top-100 sets and (ii) the entropy of the class labels of each top-100 set, divided by its maximum
``log(num_classes)``. Images stream through the models; only a running top-k per channel is kept.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from mame_transfer.core.errors import ConfigError


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
                 reduce: str = "mean") -> dict[str, RunningTopK]:
    """Stream batches (0..255 images) through ``source`` and keep the top-k rows per channel of each layer."""
    from mame_transfer.analysis.sources import pooled_features

    tops: dict[str, RunningTopK] = {}
    cache: dict = {}
    for images in batches:
        feats = pooled_features(source, layers, images, reduce=reduce, _cache=cache)
        for name, f in zip(layers, feats):
            if name not in tops:
                tops[name] = RunningTopK(k, f.shape[1])
            tops[name].update(f)
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
