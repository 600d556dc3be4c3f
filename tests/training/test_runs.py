"""training.runs: the run directory (its files, --out and --overwrite, finding an interrupted run) and the
resume state saved after every epoch."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from file_checks import png_size
from tiny_sets import tiny_model

from mame_transfer import finetune
from mame_transfer.core.config import TrainConfig
from mame_transfer.models import backbones
from mame_transfer.training import methods, trainer
from mame_transfer.training.runs import (
    STATE_DIR,
    find_work_dir,
    load_run,
    resolved_config,
)

TINY = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16",
        "--batch-size", "16", "--lr", "3e-3", "--verbose", "0"]


ARTEFACTS = ["model.keras", "config.yaml", "class_index.json", "history.csv", "metrics.json",
             "classification_report.txt", "confusion_matrix.png", "training_curves.png", "predictions.csv", "run.log",
             "splits.csv"]


def test_run_directory_is_complete_and_self_describing(tiny_run):
    for name in ARTEFACTS:
        assert (tiny_run / name).is_file(), f"{name} missing"
        assert (tiny_run / name).stat().st_size > 0
    assert not tiny_run.with_name(tiny_run.name + ".partial").exists()
    assert not (tiny_run / STATE_DIR).exists()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    for split in ("val", "test"):
        m = metrics[split]
        assert {"top1", "top5", "macro_f1", "per_class", "confusion_matrix"} <= set(m)
        assert 0 <= m["top1"] <= m["top5"] <= 1
        assert len(m["per_class"]) == 6 and all("support" in v for v in m["per_class"].values())
    # The demo test split has 15 images per class.
    assert metrics["test"]["n"] == 90 and metrics["val"]["n"] == 60
    preds = pd.read_csv(tiny_run / "predictions.csv")
    assert len(preds) == 90 and {"image", "true", "predicted", "top5", "top5_prob"} <= set(preds.columns)
    history = pd.read_csv(tiny_run / "history.csv")
    assert list(history["epoch"]) == [0, 1] and {"loss", "val_accuracy", "accuracy"} <= set(history.columns)
    classes = json.loads((tiny_run / "class_index.json").read_text())
    assert "Woven fabric" in classes  # trailing space of the MAMe CSV stripped
    # Every file holds what its name promises: readable pictures, the final (test) split's report and predictions.
    png_size(tiny_run / "confusion_matrix.png")
    png_size(tiny_run / "training_curves.png")
    report = (tiny_run / "classification_report.txt").read_text()
    assert "precision" in report and "split test: n=90" in report and all(c in report for c in classes)
    assert preds["true"].isin(list(classes)).all() and preds["predicted"].isin(list(classes)).all()
    pd.testing.assert_frame_equal(preds, pd.read_csv(tiny_run / "predictions_test.csv"))
    log = (tiny_run / "run.log").read_text()
    assert "phase 1: epochs 1-" in log and "val: n=60  top-1" in log and "test: n=90  top-1" in log
    # The resolved config reproduces the run: auto values are filled in.
    config = load_run(tiny_run)[1]
    assert config.freeze_until == backbones.get("test_tiny").default_freeze and config.image_size == 32
    # Every image the run saw, with its split.
    splits = pd.read_csv(tiny_run / "splits.csv")
    assert list(splits.columns) == ["file", "label", "subset"] and len(splits) == 390
    assert splits["subset"].value_counts().to_dict() == {"train": 240, "test": 90, "val": 60}


def test_existing_out_needs_overwrite(tiny_run, capsys):
    assert finetune.main(TINY + ["--epochs", "1", "--out", str(tiny_run)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resume_without_out_finds_the_interrupted_run(tmp_path, monkeypatch, demo_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer, "finish_run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert finetune.main(TINY + ["--epochs", "1"]) == 130
    partials = list((tmp_path / "saved_models").glob("test_tiny-*.partial"))
    assert len(partials) == 1
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert finetune.main(TINY + ["--epochs", "1"]) == 0
    runs = [p for p in (tmp_path / "saved_models").iterdir()]
    assert [p.name for p in runs] == [partials[0].name[: -len(".partial")]]
    # A different config does not pick up someone else's partial run.
    assert find_work_dir(resolved_config(TrainConfig(arch="test_tiny", demo=True, lr=1.0)))[2] is False


def test_block_lr_optimizer_state_survives_resume(tmp_path):
    """The per-epoch resume state saves and restores every inner optimizer's variables."""
    from mame_transfer.training.compile import compile_model
    from mame_transfer.training.runs import ResumeState

    config = TrainConfig(demo=True, arch="test_tiny", optimizer="adam", lr=1e-2, block_lr="block1:1e-3,head:1e-1")
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    net = compile_model(tiny_model(), config, 3)
    net.fit(x, y, epochs=1, verbose=0)
    resume = ResumeState(tmp_path)
    resume.save(net, 1, 0, {}, {})
    again = compile_model(tiny_model(), config, 3)
    assert resume.restore_optimizer(again, resume.load())
    for a, b in zip(net.optimizer.variables, again.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(methods.group_learning_rates(again.optimizer)) == pytest.approx([1e-3, 1e-2, 1e-1])


def test_flat_folder_run_records_and_reuses_its_split(tmp_path, monkeypatch):
    """finetune --data <root>/<class>/*: the split is recorded, evaluate reads it from anywhere, even after the folder
    has grown, and --data <run>/splits.csv trains on the very same split."""
    from tiny_sets import jpeg_bytes, make_flat

    from mame_transfer import evaluate
    from mame_transfer.datasets.layouts import load_dataset

    flat = make_flat(tmp_path / "collection", classes=("etching", "oil", "woodcut"), per_class=12)
    monkeypatch.chdir(tmp_path)
    args = ["--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "8", "--epochs", "1",
            "--batch-size", "8", "--verbose", "0"]
    assert finetune.main(["--data", "collection", "--val-fraction", "0.25", "--split-seed", "5", "--out", "runs/a",
                          *args]) == 0
    run = tmp_path / "runs" / "a"
    config = load_run(run)[1]
    assert config.data == str(flat) and (config.val_fraction, config.test_fraction, config.split_seed) == (0.25, 0.15, 5)
    recorded = pd.read_csv(run / "splits.csv")
    expected = load_dataset(flat, val_fraction=0.25, split_seed=5).table
    assert recorded["file"].tolist() == expected["path"].tolist()
    assert recorded["subset"].tolist() == expected["subset"].tolist()
    assert recorded["subset"].value_counts().to_dict() == {"train": 21, "val": 9, "test": 6}  # 7 / 3 / 2 per class

    # new images in the folder would change a fresh split; evaluate keeps the run's own test images
    for cls in ("etching", "oil", "woodcut"):
        for i in range(5):
            (flat / cls / f"new_{i}.jpg").write_bytes(jpeg_bytes(30, 30, seed=100 + i))
    monkeypatch.chdir(tmp_path / "runs")  # any folder: the data path in config.yaml is absolute
    before = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluate.main([str(run), "--split", "test", "--out", str(tmp_path / "again"), "--verbose", "0"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["test"]
    assert again["n"] == before["n"] == 6 and again["top1"] == pytest.approx(before["top1"])

    assert finetune.main(["--data", str(run / "splits.csv"), "--out", str(tmp_path / "runs" / "b"), *args]) == 0
    reused = pd.read_csv(tmp_path / "runs" / "b" / "splits.csv")
    pd.testing.assert_frame_equal(reused, recorded)
