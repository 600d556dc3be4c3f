"""training.evaluation: scoring a finished run again (plain and with TTA), refusing an unfinished one, and
ensembles of runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from file_checks import png_size, read_csv

from mame_transfer import ensemble, evaluate
from mame_transfer.core.errors import ConfigError
from mame_transfer.training.evaluation import average, check_same_classes


def test_evaluate_recomputes_saved_metrics(tiny_run, tmp_path):
    saved = json.loads((tiny_run / "metrics.json").read_text())["val"]
    assert evaluate.main([str(tiny_run), "--split", "val", "--out", str(tmp_path), "--verbose", "0"]) == 0
    again = json.loads((tmp_path / "metrics.json").read_text())["val"]
    assert again["top1"] == pytest.approx(saved["top1"])
    assert again["confusion_matrix"] == saved["confusion_matrix"]
    assert (tmp_path / "confusion_matrix_val.png").is_file() and (tmp_path / "predictions_val.csv").is_file()
    png_size(tmp_path / "confusion_matrix_val.png")
    preds = read_csv(tmp_path / "predictions_val.csv", ["image", "true", "predicted", "correct", "probability"], 60)
    assert preds["correct"].mean() == pytest.approx(saved["top1"])
    run_preds = pd.read_csv(tiny_run / "predictions_val.csv")
    assert preds["image"].tolist() == run_preds["image"].tolist() and preds["true"].tolist() == run_preds["true"].tolist()


def test_evaluate_rejects_incomplete_run(tmp_path):
    partial = tmp_path / "vgg16-1.partial"
    partial.mkdir()
    assert evaluate.main([str(partial)]) == 2


def test_evaluate_cli_tta_writes_beside_plain_scores(tiny_run, tmp_path, capsys):
    from mame_transfer import evaluate

    out = tmp_path / "eval"
    assert evaluate.main([str(tiny_run), "--split", "val", "--tta", "patches", "--patch-scales", "1.0,0.5",
                          "--patch-power", "2", "--out", str(out), "--verbose", "0"]) == 0
    assert "val_patches: n=60" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val_patches"} and (out / "predictions_val_patches.csv").is_file()
    patches = read_csv(out / "predictions_val_patches.csv", ["image", "true", "predicted", "probability"], 60)
    assert patches["probability"].between(0, 1).all()
    assert patches["correct"].mean() == pytest.approx(metrics["val_patches"]["top1"])
    assert evaluate.main([str(tiny_run), "--split", "val", "--tta", "flip", "--out", str(out), "--verbose", "0"]) == 0
    assert set(json.loads((out / "metrics.json").read_text())) == {"val_patches", "val_flip"}


def test_average_weights():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(average([a, b]), [[0.5, 0.5]])
    np.testing.assert_allclose(average([a, b], [3, 1]), [[0.75, 0.25]])
    with pytest.raises(ValueError, match="non-negative"):
        average([a, b], [1, -1])


def test_ensemble_cli_and_class_mismatch(tiny_run, tmp_path, capsys):
    out = tmp_path / "ens"
    assert ensemble.main([str(tiny_run), str(tiny_run), "--split", "val", "--weighted", "--out", str(out)]) == 0
    table = pd.read_csv(out / "ensemble_val.csv")
    assert list(table["model"]) == ["tiny", str(tiny_run), "ensemble"]
    member = json.loads((tiny_run / "metrics.json").read_text())["val"]["top1"]
    assert table["top1"].tolist() == pytest.approx([member] * 3, abs=1e-6)  # two copies = the member itself
    assert table["weight"].tolist()[:2] == pytest.approx([0.5, 0.5])
    assert (table["n"] == 60).all() and table["top1_ci"].str.match(r"\[0\.\d{4}, [01]\.\d{4}\]").all()
    assert table["macro_f1_ci"].notna().all()
    assert "| ensemble |" in (out / "ensemble_val.md").read_text()
    result = json.loads((out / "metrics.json").read_text())
    assert result["ensemble"]["top1"] == pytest.approx(member) and result["split"] == "val"
    assert "ensemble" in capsys.readouterr().out
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    index = json.loads((other / "class_index.json").read_text())
    index["Paint"] = index.pop(next(iter(index)))
    (other / "class_index.json").write_text(json.dumps(index))
    assert ensemble.main([str(tiny_run), str(other), "--out", str(tmp_path / "bad")]) == 2
    assert "must share classes" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"only in .*other: \['Paint'\]"):
        check_same_classes([tiny_run, other])
