"""Plot functions: they take data and return a ``matplotlib.figure.Figure``; callers decide where to save.

Figures are built with the object API (no ``pyplot``), so nothing needs a display and nothing leaks between calls.
Every figure of the package is a :class:`PlainFigure`: its texts (class names, file names, layer names) are drawn
as written, never parsed as mathtext, so a class called ``Tempera $\foo$`` cannot break a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text


class PlainFigure(Figure):
    """A Figure whose texts are plain text: ``$...$`` in a label is shown as is, not read as mathtext.

    matplotlib reads ``text.parse_math`` when a text is created, and creates tick labels only when it lays out or
    draws; both are covered here, scoped to this figure (the user's own figures keep their settings).
    """

    def _plain(self) -> None:
        for text in self.findobj(Text):
            text.set_parse_math(False)

    def draw(self, renderer):
        with matplotlib.rc_context({"text.parse_math": False}):
            self._plain()
            return super().draw(renderer)

    def savefig(self, *args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            self._plain()
            return super().savefig(*args, **kwargs)

    def tight_layout(self, *args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            self._plain()
            return super().tight_layout(*args, **kwargs)


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure atomically (PNG, SVG or PDF by extension)."""
    from mame_transfer.core.fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def confusion_matrix_figure(
    cm: np.ndarray, classes: Sequence[str], *, normalize: bool = True, title: str = "Confusion matrix"
) -> Figure:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), sized for the class names."""
    cm = np.asarray(cm, dtype=float)
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    side = max(4.0, 0.38 * n + 2.5)
    fig = PlainFigure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(classes), rotation=60, ha="right", fontsize=8 if n > 12 else 9)
    ax.set_yticks(range(n), labels=list(classes), fontsize=8 if n > 12 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                value = cm[i, j]
                if value >= 0.005:
                    text = f"{value:.2f}" if normalize else f"{int(value)}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6 if n > 12 else 8,
                            color="white" if value > (0.5 if normalize else cm.max() / 2) else "black")
    return fig


def label_axes(ax, xlabel: str, ylabel: str, *, title: str = "", grid: bool = True, legend: bool = False) -> None:
    """The finishing touches every line or scatter plot of the package shares: labels, light grid, legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if grid:
        ax.grid(alpha=0.3)
    if legend:
        ax.legend()


def training_curves_figure(history, *, warmup_epochs: int = 0, best_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch, train vs val, from a DataFrame or dict of lists (Keras history keys).

    Epochs are counted from 1 and ticked at whole numbers only; the best epoch (by default the first with the
    highest val accuracy, the one a run keeps) is marked on both panels.
    """
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    df = pd.DataFrame(history)
    epochs = (df["epoch"] + 1 if "epoch" in df else pd.Series(np.arange(1, len(df) + 1))).to_numpy()
    if best_epoch is None and "val_accuracy" in df and df["val_accuracy"].notna().any():
        best_epoch = int(epochs[int(np.nanargmax(df["val_accuracy"].to_numpy(dtype=float)))])
    fig = PlainFigure(figsize=(10, 4))
    for k, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "top-1 accuracy")), start=1):
        ax = fig.add_subplot(1, 2, k)
        for prefix, style in (("", "-o"), ("val_", "-s")):
            key = prefix + metric
            if key in df:
                ax.plot(epochs, df[key], style, ms=3, label="val" if prefix else "train")
        if warmup_epochs:
            ax.axvline(warmup_epochs + 0.5, color="grey", ls="--", lw=1, label="unfreeze")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#228833", ls=":", lw=1.5, label=f"best epoch ({best_epoch})")
            at = np.flatnonzero(epochs == best_epoch)
            if metric == "accuracy" and "val_accuracy" in df and len(at):
                ax.plot([best_epoch], [df["val_accuracy"].to_numpy()[at[0]]], "*", color="#228833", ms=12)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        label_axes(ax, "epoch", label, legend=bool(ax.get_legend_handles_labels()[0]))
    fig.tight_layout()
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[float], *, xlabel: str = "", title: str = "") -> Figure:
    """Horizontal bars, sorted as given (used for comparison tables)."""
    fig = PlainFigure(figsize=(7, max(2.5, 0.3 * len(labels) + 1)))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    ax.barh(y, values, color="#4477aa")
    ax.set_yticks(y, labels=list(labels), fontsize=8)
    ax.invert_yaxis()
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig
