"""core.plots: figures built from data; training curves tick whole epochs and mark the best one."""

from __future__ import annotations

import numpy as np
import pandas as pd
from file_checks import png_size

from mame_transfer.core import plots


def test_training_curves_whole_epochs_and_best_epoch(tmp_path):
    history = pd.DataFrame({"epoch": range(7), "loss": np.linspace(2, 1, 7), "val_loss": np.linspace(2, 1.5, 7),
                            "accuracy": np.linspace(0.3, 0.9, 7),
                            "val_accuracy": [0.3, 0.5, 0.62, 0.7, 0.7, 0.66, 0.68]})
    fig = plots.training_curves_figure(history, warmup_epochs=2)
    loss_ax, acc_ax = fig.axes
    fig.canvas.draw()
    for ax in (loss_ax, acc_ax):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no "2.5" epochs
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "best epoch (4)" in labels and "unfreeze" in labels  # epoch 4: the first with the top val accuracy
        assert any(list(line.get_xdata()) == [4, 4] for line in ax.get_lines())
    star = [line for line in acc_ax.get_lines() if line.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_ydata()) == [0.7]
    png_size(plots.save(fig, tmp_path / "curves.png"))
    no_val = plots.training_curves_figure({"loss": [1.0, 0.5]})  # no validation: nothing to mark
    legends = [ax.get_legend() for ax in no_val.axes]
    assert legends[1] is None  # no accuracy at all: no empty legend either
    assert [t.get_text() for t in legends[0].get_texts()] == ["train"]
