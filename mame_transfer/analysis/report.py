"""One self-contained HTML page per run: resolved config, metrics, per-class report, pictures, mistakes.

The page embeds every picture as base64, so it can be mailed or archived alone: confusion matrices, training
curves, Grad-CAM samples (computed here), the most confident mistakes with thumbnails, and links to (and small
previews of) the analysis outputs under ``<run>/analysis``. The page skeleton and its style are the assets
``assets/report/report.html`` and ``report.css``; every value taken from the run is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from mame_transfer.analysis.outputs import ANALYSIS_DIR
from mame_transfer.core.errors import MameTransferError
from mame_transfer.core.fileio import write_text
from mame_transfer.inference.metrics import CONFUSION, PREDICTIONS, split_file
from mame_transfer.training import runs

REPORT_FILE = "report.html"


def _esc(x) -> str:
    return html.escape(str(x))


def _asset_text(name: str) -> str:
    return resources.files("mame_transfer").joinpath("assets", "report", name).read_text(encoding="utf-8")


def data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI of some bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_uri(fig) -> str:
    """A Figure as an embedded PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return data_uri(buf.getvalue(), "image/png")


def thumb_uri(path: str | Path, size: int = 150) -> str | None:
    """A JPEG thumbnail of an image file as a data URI (None when the file cannot be read)."""
    from PIL import Image

    from mame_transfer.datasets.images import to_rgb8

    try:
        with Image.open(path) as im:
            im = to_rgb8(im)
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return data_uri(buf.getvalue(), "image/jpeg")


def _img(uri: str, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{_esc(alt)}">'


def _file_img(path: Path, alt: str) -> str:
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return _img(data_uri(path.read_bytes(), mime), alt)


def _metrics_table(metrics: dict) -> str:
    keys = [("n", "images"), ("top1", "top-1"), ("top3", "top-3"), ("top5", "top-5"), ("macro_f1", "macro F1"),
            ("weighted_f1", "weighted F1"), ("balanced_accuracy", "balanced acc.")]
    # top-3 / top-5 only where reported (more classes than k); older runs hold them for every class count
    keys = [(k, label) for k, label in keys if any(k in m for m in metrics.values())
            and not (k in ("top3", "top5") and all(len(m.get("per_class", {})) <= int(k[3:])
                                                   for m in metrics.values()))]
    head = "".join(f"<th>{label}</th>" for _, label in keys)
    rows = []
    for split, m in metrics.items():
        cells = "".join(f"<td>{m[k]:.4f}{_interval(m.get(k + '_ci'))}</td>" if isinstance(m.get(k), float)
                        else f"<td>{_esc(m.get(k, ''))}</td>" for k, _ in keys)
        rows.append(f'<tr><td class="l">{_esc(split)}</td>{cells}</tr>')
    return f'<table><tr><th class="l">split</th>{head}</tr>{"".join(rows)}</table>'


def _interval(ci) -> str:
    """`` [low, high]`` under a score that has a 95 % interval (top-1, macro F1)."""
    return f'<br><span class="muted">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci else ""


def _per_class_table(m: dict) -> str:
    rows = "".join(
        f'<tr><td class="l">{_esc(c)}</td><td>{v["precision"]:.3f}</td><td>{v["recall"]:.3f}</td>'
        f'<td>{v["f1"]:.3f}</td><td>{v["support"]}</td></tr>' for c, v in m.get("per_class", {}).items())
    return ('<table><tr><th class="l">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>'
            f"{rows}</table>")


def _config_table(config: dict) -> str:
    rows = "".join(f'<tr><td class="l">{_esc(k)}</td><td class="l"><code>{_esc(v)}</code></td></tr>'
                   for k, v in config.items())
    return f"<details open><summary>resolved {runs.CONFIG}</summary><table>{rows}</table></details>"


def _image_paths(config) -> dict[str, str]:
    """``image`` column value -> absolute path, from the run's dataset (empty when it cannot be read)."""
    try:
        dataset = runs.dataset_for(config, require=(), check_images=False)
    except (MameTransferError, OSError):
        return {}  # the data set moved or is gone: the page shows what the run directory alone holds
    return dict(zip(dataset.table["image"].astype(str), dataset.table["path"].astype(str)))


def worst_mistakes(predictions: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The ``n`` wrong predictions with the highest predicted probability."""
    wrong = predictions[~predictions["correct"].astype(bool)]
    return wrong.sort_values("probability", ascending=False, kind="stable").head(n)


def _gradcam_section(run_dir: Path, n: int, paths: dict[str, str], split: str | None) -> str:
    """Grad-CAM of ``n`` images of the final split (computed here), as one embedded grid."""
    from mame_transfer.analysis import gradcam as gc
    from mame_transfer.analysis.sources import (
        last_spatial_layer,
        load_images,
        load_source,
    )

    preds_file = run_dir / split_file(PREDICTIONS, split)
    if n <= 0 or not preds_file.is_file() or not paths:
        return '<p class="muted">no Grad-CAM samples (images or predictions not available)</p>'
    preds = pd.read_csv(preds_file)
    preds = preds[preds["image"].astype(str).isin(paths)]
    if preds.empty:
        return f'<p class="muted">no Grad-CAM samples (the images of {_esc(preds_file.name)} were not found)</p>'
    pick = preds.iloc[np.linspace(0, len(preds) - 1, min(n, len(preds))).round().astype(int)]
    src = load_source(run_dir)
    images = load_images([paths[str(i)] for i in pick["image"]], src.image_size)
    cams, proba = gc.gradcam(src.model, images, preprocess=src.preprocess)
    layer = last_spatial_layer(src.model)
    pred = proba.argmax(1)
    overlays = [gc.overlay(images[k], cams[k]) for k in range(len(images))]
    titles = [gc.caption(t, src.classes[p], float(proba[k, p])) for k, (t, p) in enumerate(zip(pick["true"], pred))]
    fig = gc.gradcam_grid_figure(overlays, titles, cols=4, title=f"Grad-CAM at {layer} (target: predicted class)")
    return _img(figure_uri(fig), "Grad-CAM samples")


def _mistakes_section(run_dir: Path, n: int, paths: dict[str, str], split: str | None) -> str:
    """Cards of the ``n`` most confident wrong predictions of the final split, with thumbnails."""
    preds_file = run_dir / split_file(PREDICTIONS, split)
    if not preds_file.is_file():
        return ""
    cards = []
    for _, r in worst_mistakes(pd.read_csv(preds_file), n).iterrows():
        uri = thumb_uri(paths[str(r["image"])]) if str(r["image"]) in paths else None
        pic = _img(uri, str(r["image"]), "") if uri else '<div class="muted">(image not found)</div>'
        cards.append(f'<div class="card">{pic}<div>{_esc(r["image"])}</div><div>true: <b>{_esc(r["true"])}</b>'
                     f'</div><div>predicted: <b>{_esc(r["predicted"])}</b> ({float(r["probability"]):.3f})</div></div>')
    return f'<div class="grid">{"".join(cards)}</div>' if cards else "<p>no mistakes</p>"


def _analysis_section(run_dir: Path, out_dir: Path, embed_limit: int = 1_000_000, budget: int = 6_000_000) -> str:
    """Links to every file under ``<run>/analysis``, with the PNGs embedded while they fit ``budget`` bytes."""
    root = run_dir / ANALYSIS_DIR
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if not files:
        return ('<p class="muted">none yet: run <code>mame-analyze gradcam|cka|maxact|featvis'
                '</code> on this run</p>')
    items, pictures = [], []
    for p in files:
        rel = os.path.relpath(p, out_dir)
        items.append(f'<li><a href="{_esc(Path(rel).as_posix())}">{_esc(p.relative_to(run_dir).as_posix())}</a></li>')
        size = p.stat().st_size
        if p.suffix.lower() == ".png" and size <= embed_limit and size <= budget:
            budget -= size  # keeps the page small enough to open quickly; larger pictures stay linked
            pictures.append(f"<details><summary>{_esc(p.relative_to(run_dir).as_posix())}</summary>"
                            f"{_file_img(p, p.name)}</details>")
    return f"<ul>{''.join(items)}</ul>{''.join(pictures)}"


def render_page(**sections: str) -> str:
    """Fill the page template (``assets/report/report.html``) with HTML fragments, in one pass.

    ``string.Template`` scans the template once, so text inside a fragment (a class or file name holding
    ``${...}``) is never filled in turn; the fragments must already be escaped.

    Raises:
        KeyError: a placeholder of the template has no fragment (the template and this module disagree).
    """
    return Template(_asset_text("report.html")).substitute(css=_asset_text("report.css"), **sections)


def build_report(run_dir: str | Path, *, out: str | Path | None = None, gradcam: int = 8, mistakes: int = 12) -> Path:
    """Write the run's HTML report and return its path.

    Args:
        run_dir: a finished run directory (with ``config.yaml`` and ``metrics.json``).
        out: the HTML file (default ``<run>/report.html``).
        gradcam: Grad-CAM samples to compute and embed (0 = none).
        mistakes: most confident wrong predictions to show.
    """
    run_dir = runs.check_finished(run_dir, (runs.CONFIG, runs.METRICS))
    out_path = Path(out) if out else run_dir / REPORT_FILE
    config = runs.read_config(run_dir)
    metrics = runs.read_metrics(run_dir)
    final = list(metrics)[-1] if metrics else None
    paths = _image_paths(config)
    confusion = [run_dir / split_file(CONFUSION, split) for split in metrics]
    curves = run_dir / runs.TRAINING_CURVES
    page = render_page(
        name=_esc(run_dir.name),
        summary=f"{_esc(config.arch)} (alpha {_esc(config.alpha)}), weights {_esc(config.weights)}, "
                f"{_esc(config.image_size)} px, freeze until {_esc(config.freeze_until)}, "
                f"data {_esc(config.data or 'demo')}",
        metrics=_metrics_table(metrics) if metrics else "<p>no metrics</p>",
        per_class="".join(f"<h2>Per-class report ({_esc(split)})</h2>{_per_class_table(m)}"
                          for split, m in metrics.items()),
        confusion="".join(_file_img(p, f"confusion matrix {split}") for split, p in zip(metrics, confusion)
                          if p.is_file()),
        curves=(_file_img(curves, "training curves") if curves.is_file()
                else f'<p class="muted">no {_esc(runs.TRAINING_CURVES)}</p>'),
        gradcam=_gradcam_section(run_dir, gradcam, paths, final),
        final_split=_esc(final),
        mistakes=_mistakes_section(run_dir, mistakes, paths, final),
        analysis=_analysis_section(run_dir, out_path.parent),
        config=_config_table(config.to_dict()),
    )
    return write_text(out_path, page)
