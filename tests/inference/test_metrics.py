"""inference.metrics: top-k reported only with more classes than k; the report and score lines follow."""

from __future__ import annotations

import numpy as np
import pytest

from mame_transfer.inference.metrics import classification_report_text, compute_metrics, score_line, top_k_keys


@pytest.mark.parametrize("n_classes, keys", [(2, []), (3, []), (4, ["top3"]), (5, ["top3"]), (6, ["top3", "top5"]),
                                             (29, ["top3", "top5"])])
def test_top_k_only_above_k_classes(n_classes, keys):
    assert top_k_keys(n_classes) == keys
    rng = np.random.default_rng(0)
    y = np.arange(40) % n_classes
    proba = rng.dirichlet(np.ones(n_classes), size=40)
    m = compute_metrics(y, proba, [f"c{i}" for i in range(n_classes)])
    assert [k for k in ("top3", "top5") if k in m] == keys
    order = np.argsort(-proba, axis=1)
    for key in keys:  # checked against a direct count
        k = int(key[3:])
        assert m[key] == pytest.approx(np.mean([y[i] in order[i, :k] for i in range(40)]))
    line = score_line(m)
    assert ("top-5" in line) == ("top5" in keys) and ("top-3" in line) == ("top3" in keys)
    assert line.startswith("n=40  top-1 ") and "macro F1" in line
    assert score_line(m) in classification_report_text(m, "val")
