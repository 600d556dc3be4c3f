"""Run report: a self-contained page checked in headless Chromium and for its content; Grad-CAM CLI on a saved run."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from file_checks import png_size, read_csv

from mame_transfer import report
from mame_transfer.analysis.report import build_report, render_page, worst_mistakes


def test_worst_mistakes_orders_by_confidence():
    df = pd.DataFrame({"image": list("abcd"), "true": ["x"] * 4, "predicted": ["y", "x", "y", "y"],
                       "correct": [False, True, False, False], "probability": [0.6, 0.99, 0.9, 0.3]})
    assert worst_mistakes(df, 2)["image"].tolist() == ["c", "a"]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the shared run: the report and the analyses write into the run directory."""
    return shutil.copytree(tiny_run, tmp_path / "tiny")


def test_report_renders_in_chromium(run_copy, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from browser import open_page, require_chromium

    from mame_transfer import analyze

    require_chromium()
    assert analyze.main(["gradcam", str(run_copy), "--split", "val", "--n", "6", "--target", "true"]) == 0
    grids = list((run_copy / "analysis" / "gradcam").glob("gradcam_val_*.png"))
    assert len(grids) == 1 and capsys.readouterr().out.strip() == str(grids[0])
    width, height = png_size(grids[0])
    assert width > 200 and height > 200  # 2 rows of 4 columns of captioned 32 px overlays
    read_csv(grids[0].with_suffix(".csv"), ["path", "image", "label", "predicted", "probability"], rows=6)

    assert report.main([str(run_copy), "--gradcam", "4", "--mistakes", "5"]) == 0
    page_file = run_copy / "report.html"
    assert capsys.readouterr().out.strip() == str(page_file)
    text = page_file.read_text()
    for needle in ("Metrics", "Per-class report (val)", "Per-class report (test)", "Confusion matrices",
                   "Training curves", "Grad-CAM samples", "Most confident mistakes (test)",
                   "analysis/gradcam/gradcam_val_", f"<title>{run_copy.name} report</title>",
                   "resolved config.yaml", "<td class=\"l\"><code>test_tiny</code></td>"):
        assert needle in text, needle
    metrics = json.loads((run_copy / "metrics.json").read_text())
    for split, m in metrics.items():
        assert f'<tr><td class="l">{split}</td><td>{m["n"]}</td><td>{m["top1"]:.4f}<br>' in text, split  # + interval
        low, high = m["top1_ci"]
        assert f'<span class="muted">[{low:.3f}, {high:.3f}]</span></td>' in text, split
        for name, row in m["per_class"].items():
            assert f'<tr><td class="l">{name}</td><td>{row["precision"]:.3f}</td>' in text, name
    classes = json.loads((run_copy / "class_index.json").read_text())
    assert all(name in text for name in classes)
    assert "http://" not in text and "https://" not in text and "${" not in text
    with open_page(page_file) as view:
        info = view.page.evaluate(
            "() => Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        view.screenshot(tmp_path / "report.png")
        view.assert_clean()
    # confusion matrix (val, test), curves, Grad-CAM grid, 5 mistake thumbnails, analysis PNG preview
    alts = [alt for alt, _, _ in info]
    assert {"confusion matrix val", "confusion matrix test", "training curves", "Grad-CAM samples",
            grids[0].name} <= set(alts)
    assert len(info) >= 9
    assert all(done and width > 0 for _, done, width in info), info


def test_report_escapes_run_values_and_fills_the_template_once(run_copy, tmp_path):
    """A run name holding markup and a template placeholder shows as text; no fragment is filled twice."""
    odd = run_copy.rename(tmp_path / "odd ${metrics} <img src=x onerror=alert(1)> & co")
    path = build_report(odd, out=tmp_path / "page.html", gradcam=0, mistakes=3)
    text = path.read_text()
    assert "<img src=x" not in text
    assert text.count("odd ${metrics} &lt;img src=x onerror=alert(1)&gt; &amp; co") == 2  # title and heading
    assert text.count('<th class="l">split</th>') == 1  # the metrics table was inserted once
    assert "no Grad-CAM samples" in text and text.count('class="card"') == 3
    # Fragments that look like placeholders stay as they are (12: "name" is used twice), the CSS goes in once.
    page = render_page(**dict.fromkeys(("name", "summary", "metrics", "per_class", "confusion", "curves", "gradcam",
                                        "final_split", "mistakes", "analysis", "config"), "$css"))
    assert page.count("$css") == 12 and page.count("body{") == 1


def test_report_rejects_unfinished_dir(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "config.yaml is missing" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("arch: test_tiny\n")
    assert report.main([str(tmp_path)]) == 2
    assert "metrics.json is missing" in capsys.readouterr().err


def test_long_file_names_wrap_in_the_page(run_copy, tmp_path):
    """A 200-character file name (no spaces) in the mistakes and the analysis list must not widen the page."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from browser import open_page, require_chromium

    require_chromium()
    long_name = "Portrait_of_a_lady_" + "x" * 180 + ".jpg"
    for file in run_copy.glob("predictions*.csv"):  # the most visible place: a mistake card of the final split
        preds = pd.read_csv(file)
        wrong = ~preds["correct"].astype(bool)
        assert wrong.any()
        preds.loc[wrong.idxmax(), "image"] = long_name
        preds.to_csv(file, index=False)
    (run_copy / "analysis" / "cka").mkdir(parents=True)
    (run_copy / "analysis" / "cka" / f"cka_{'y' * 180}.csv").write_text("layer,cka\n")
    page = build_report(run_copy, gradcam=0, mistakes=1000)  # every mistake: the long name among them
    assert long_name in page.read_text()
    with open_page(page) as view:
        widths = view.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        view.assert_clean()
    assert widths[0] <= widths[1], widths  # nothing sticks out: no horizontal scroll bar
