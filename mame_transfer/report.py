"""One self-contained HTML page per run: ``python -m mame_transfer.report RUN``.

The page (``<run>/report.html`` by default) embeds every picture as base64, so it can be mailed or archived
alone: resolved config, metrics per split, per-class report, confusion matrices, training curves, Grad-CAM
samples, the most confident mistakes with thumbnails, and links to the analysis outputs under ``<run>/analysis``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, MameTransferError
from mame_transfer.core.fileio import write_text

_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;max-width:1180px;margin:20px auto;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img.fig{max-width:100%;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{width:150px;font-size:11px}.card img{width:150px;height:150px;
object-fit:contain;background:#f6f6f6}.muted{color:#777}details{margin:6px 0}code{background:#f4f4f4;padding:1px 3px}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_uri(fig) -> str:
    """A Figure as an embedded PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return data_uri(buf.getvalue(), "image/png")


def thumb_uri(path: str | Path, size: int = 150) -> str | None:
    """A JPEG thumbnail of an image file as a data URI (None when the file cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
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
    head = "".join(f"<th>{label}</th>" for _, label in keys)
    rows = []
    for split, m in metrics.items():
        cells = "".join(f"<td>{m[k]:.4f}</td>" if isinstance(m.get(k), float) else f"<td>{_esc(m.get(k, ''))}</td>"
                        for k, _ in keys)
        rows.append(f'<tr><td class="l">{_esc(split)}</td>{cells}</tr>')
    return f'<table><tr><th class="l">split</th>{head}</tr>{"".join(rows)}</table>'


def _per_class_table(m: dict) -> str:
    rows = "".join(
        f'<tr><td class="l">{_esc(c)}</td><td>{v["precision"]:.3f}</td><td>{v["recall"]:.3f}</td>'
        f'<td>{v["f1"]:.3f}</td><td>{v["support"]}</td></tr>' for c, v in m.get("per_class", {}).items())
    return ('<table><tr><th class="l">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>'
            f"{rows}</table>")


def _config_table(config: dict) -> str:
    rows = "".join(f'<tr><td class="l">{_esc(k)}</td><td class="l"><code>{_esc(v)}</code></td></tr>'
                   for k, v in config.items())
    return f"<details open><summary>resolved config.yaml</summary><table>{rows}</table></details>"


def _image_paths(run_dir: Path, config) -> dict[str, str]:
    """``image`` column value -> absolute path, from the run's dataset (empty when it cannot be read)."""
    from mame_transfer.training.runs import dataset_for

    try:
        config.check_images = False
        dataset = dataset_for(config, require=())
    except (MameTransferError, OSError):
        return {}
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

    preds_file = run_dir / (f"predictions_{split}.csv" if split else "predictions.csv")
    if n <= 0 or not preds_file.is_file() or not paths:
        return '<p class="muted">no Grad-CAM samples (images or predictions not available)</p>'
    preds = pd.read_csv(preds_file)
    preds = preds[preds["image"].astype(str).isin(paths)]
    if preds.empty:
        return '<p class="muted">no Grad-CAM samples (the images of predictions.csv were not found)</p>'
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


def _analysis_section(run_dir: Path, out_dir: Path, embed_limit: int = 1_000_000, budget: int = 6_000_000) -> str:
    root = run_dir / "analysis"
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if not files:
        return ('<p class="muted">none yet: run <code>python -m mame_transfer.analyze gradcam|cka|maxact|featvis'
                '</code> on this run</p>')
    import os

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


def build_report(run_dir: str | Path, *, out: str | Path | None = None, gradcam: int = 8, mistakes: int = 12) -> Path:
    """Write the run's HTML report and return its path.

    Args:
        run_dir: a finished run directory.
        out: the HTML file (default ``<run>/report.html``).
        gradcam: Grad-CAM samples to compute and embed (0 = none).
        mistakes: most confident wrong predictions to show.
    """
    from mame_transfer.core import config as cfg

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "metrics.json").is_file():
        raise ConfigError(f"{run_dir} is not a finished run directory (config.yaml or metrics.json is missing)")
    out_path = Path(out) if out else run_dir / "report.html"
    raw_config = cfg.load_yaml(run_dir / "config.yaml")
    config = cfg.from_dict(cfg.TrainConfig, raw_config, source=str(run_dir / "config.yaml"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final = list(metrics)[-1] if metrics else None
    paths = _image_paths(run_dir, config)
    parts = [f"<h1>Run report: {_esc(run_dir.name)}</h1>",
             f'<p class="muted">{_esc(config.arch)} (alpha {config.alpha}), weights {_esc(config.weights)}, '
             f"{config.image_size} px, freeze until {_esc(config.freeze_until)}, data {_esc(config.data or 'demo')}</p>",
             "<h2>Metrics</h2>", _metrics_table(metrics) if metrics else "<p>no metrics</p>"]
    for split, m in metrics.items():
        parts.append(f"<h2>Per-class report ({_esc(split)})</h2>{_per_class_table(m)}")
    parts.append("<h2>Confusion matrices</h2>")
    for split in metrics:
        cm = run_dir / f"confusion_matrix_{split}.png"
        if cm.is_file():
            parts.append(_file_img(cm, f"confusion matrix {split}"))
    parts.append("<h2>Training curves</h2>")
    tc = run_dir / "training_curves.png"
    parts.append(_file_img(tc, "training curves") if tc.is_file() else '<p class="muted">no training_curves.png</p>')
    parts.append("<h2>Grad-CAM samples</h2>")
    parts.append(_gradcam_section(run_dir, gradcam, paths, final))
    parts.append(f"<h2>Most confident mistakes ({_esc(final)})</h2>")
    preds_file = run_dir / (f"predictions_{final}.csv" if final else "predictions.csv")
    if preds_file.is_file():
        worst = worst_mistakes(pd.read_csv(preds_file), mistakes)
        cards = []
        for _, r in worst.iterrows():
            uri = thumb_uri(paths[str(r["image"])]) if str(r["image"]) in paths else None
            pic = _img(uri, str(r["image"]), "") if uri else '<div class="muted">(image not found)</div>'
            cards.append(f'<div class="card">{pic}<div>{_esc(r["image"])}</div><div>true: <b>{_esc(r["true"])}</b>'
                         f'</div><div>predicted: <b>{_esc(r["predicted"])}</b> ({float(r["probability"]):.3f})</div></div>')
        parts.append(f'<div class="grid">{"".join(cards)}</div>' if cards else "<p>no mistakes</p>")
    parts.append("<h2>Analysis outputs</h2>")
    parts.append(_analysis_section(run_dir, out_path.parent))
    parts.append("<h2>Config</h2>")
    parts.append(_config_table(raw_config))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(run_dir.name)} report</title>'
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    return write_text(out_path, page)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mame_transfer.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory")
    parser.add_argument("--out", help="HTML file (default <run>/report.html)")
    parser.add_argument("--gradcam", type=int, default=8, help="Grad-CAM samples to embed (0 = none)")
    parser.add_argument("--mistakes", type=int, default=12, help="most confident mistakes to show")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.run, out=args.out, gradcam=args.gradcam, mistakes=args.mistakes)
    except MameTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
