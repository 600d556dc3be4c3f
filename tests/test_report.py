"""Run report: a self-contained page checked in headless Chromium; Grad-CAM CLI on a saved run."""

from __future__ import annotations

import pandas as pd
import pytest

from mame_transfer import report


def test_worst_mistakes_orders_by_confidence():
    df = pd.DataFrame({"image": list("abcd"), "true": ["x"] * 4, "predicted": ["y", "x", "y", "y"],
                       "correct": [False, True, False, False], "probability": [0.6, 0.99, 0.9, 0.3]})
    assert report.worst_mistakes(df, 2)["image"].tolist() == ["c", "a"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mame_transfer import finetune

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert finetune.main(["--demo", "--arch", "test_tiny", "--image-size", "32", "--epochs", "1", "--weights", "none",
                          "--head", "16", "--verbose", "0", "--out", str(out)]) == 0
    return out


def test_report_renders_in_chromium(tiny_run, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from browser import open_page, require_chromium

    from mame_transfer import analyze

    require_chromium()
    assert analyze.main(["gradcam", str(tiny_run), "--split", "val", "--n", "6", "--target", "true"]) == 0
    assert list((tiny_run / "analysis" / "gradcam").glob("gradcam_val_*.png"))
    assert report.main([str(tiny_run), "--gradcam", "4", "--mistakes", "5"]) == 0
    page_file = tiny_run / "report.html"
    text = page_file.read_text()
    for needle in ("Metrics", "Per-class report", "Confusion matrices", "Training curves", "Grad-CAM samples",
                   "Most confident mistakes", "analysis/gradcam/gradcam_val_"):
        assert needle in text, needle
    assert "http://" not in text and "https://" not in text
    with open_page(page_file) as view:
        info = view.page.evaluate(
            "() => Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        view.screenshot(tmp_path / "report.png")
        view.assert_clean()
    # confusion matrix (val, test), curves, Grad-CAM grid, 5 mistake thumbnails, analysis PNG preview
    assert len(info) >= 9
    assert all(done and width > 0 for _, done, width in info), info


def test_report_rejects_unfinished_dir(tmp_path):
    assert report.main([str(tmp_path)]) == 2
