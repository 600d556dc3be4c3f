"""notebooks/classifier_comparison.ipynb: stored with the outputs of a real run, and executed end to end on the demo
set (a copy in memory; the stored file is left as it is), so it cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from file_checks import png_size, read_json

from mame_transfer.classifiers.estimators import load_pipeline

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "classifier_comparison.ipynb"


def _kernel_home(tmp_path: Path) -> Path:
    """A kernelspec named ``python3`` that runs this very interpreter (the venv's), whatever else is installed."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (mame_transfer test)", "language": "python"}))
    return tmp_path / "jupyter"


def test_notebook_runs(tmp_path, monkeypatch, demo_root):
    import nbformat
    from nbclient import NotebookClient

    # JUPYTER_PATH is searched first, so "python3" resolves to sys.executable on any machine or CI clone.
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_home(tmp_path)))
    monkeypatch.setenv("MAME_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MAME_FEATURE_STORE", raising=False)
    # UMAP's numba JIT alone costs about a minute per process; test_classify covers the UMAP path.
    monkeypatch.setenv("MAME_NB_FEATURE_SETS", "embeddings,embeddings+metadata,metadata")
    monkeypatch.setenv("MAME_NB_CLASSIFIERS", "linear_svc,logreg,knn")
    monkeypatch.setenv("MAME_NB_BOOT", "200")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    results = tmp_path / "out" / "results"
    table = pd.read_csv(results / "results.csv")
    assert len(table) == 9 and set(table.classifier) == {"linear_svc", "logreg", "knn"}
    assert (results / "best_model.skops").is_file() and (results / "accuracy.png").is_file()
    assert (tmp_path / "out" / "demo_features" / "manifest.json").is_file()
    png_size(results / "accuracy.png")
    best = read_json(results / "best_model.json", ["classifier", "feature_set", "classes"])
    assert best["classifier"] in {"linear_svc", "logreg", "knn"} and len(best["classes"]) == 6
    assert hasattr(load_pipeline(results / "best_model.skops"), "predict")
    manifest = read_json(tmp_path / "out" / "demo_features" / "manifest.json", ["format", "arch", "splits", "classes"])
    assert manifest["classes"] == best["classes"] and set(manifest["splits"]) >= {"train", "val"}
    # the displayed outputs are there: tables (HTML), figures (PNG), the McNemar lines, no error
    _check_outputs(nb, classes=best["classes"])
    text = _stream_text(nb)
    assert "A = " in text and "p = " in text and "significant at the 5 % level" in text


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _stream_text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.get("output_type") == "stream")


def _check_outputs(nb, classes) -> None:
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(html) >= 4  # comparison table, pivot, per-class F1, intervals
    assert any("95% low" in h for h in html) and any(all(c in h for c in classes) for h in html)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # heatmap, per-class F1, intervals, confusion


def test_notebook_is_stored_with_the_outputs_of_a_real_run():
    """The showcase: outputs of the Louvre run (MobileNet features) are in the file, with no local paths."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell has been run"
    _check_outputs(nb, classes=["Genre", "Landscape", "Naturmort", "Portrait"])
    assert "'arch': 'mobilenet'" in json.dumps([o.get("data", {}) for o in _outputs(nb)])
    stored = json.dumps([c.get("outputs", []) for c in code])
    for local in ("/tmp/", "/work/", "/home/", "/root/", "site-packages"):
        assert local not in stored, local
