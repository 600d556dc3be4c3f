"""training.crossval through finetune --folds: one run per fold (disjoint, stratified folds of train+val; test
untouched), the summary with intervals, out-of-fold predictions, the fold ensemble on test, --fold and resume,
the prefix cache shared by the folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mame_transfer import finetune
from mame_transfer.core.errors import ConfigError
from mame_transfer.datasets.layouts import load_dataset
from mame_transfer.training import runs
from mame_transfer.training.crossval import cross_validate

TINY = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16",
        "--batch-size", "16", "--lr", "3e-3", "--verbose", "0", "--epochs", "2", "--freeze-until", "block1",
        "--augment-copies", "2", "--prefix-cache", "disk", "--folds", "3"]


def test_folds_summary_ensemble_and_resume(tmp_path, demo_root):
    out = tmp_path / "cv"
    assert finetune.main(TINY + ["--out", str(out), "--fold", "2"]) == 0  # one fold only (e.g. one per machine)
    partial = out.with_name("cv.partial")
    assert not out.exists() and (partial / "fold-2" / runs.MODEL).is_file() and not (partial / "fold-1").exists()
    fold2_mtime = (partial / "fold-2" / runs.MODEL).stat().st_mtime
    assert finetune.main(TINY + ["--out", str(out)]) == 0  # trains folds 1 and 3, keeps 2, writes the summary
    assert (out / "fold-2" / runs.MODEL).stat().st_mtime == fold2_mtime and not partial.exists()
    assert not (out / runs.PREFIX_CACHE_DIR).exists()

    dataset = load_dataset(demo_root)
    pool = set(dataset.table["image"][dataset.table["subset"] != "test"])
    test = list(dataset.split("test")["image"])
    seen = set()
    for i in (1, 2, 3):
        fold = out / f"fold-{i}"
        val = set(pd.read_csv(fold / "predictions_val.csv")["image"])
        train_rows = runs.dataset_for(runs.read_config(fold)).split("train")
        assert not val & seen and not val & set(train_rows["image"])  # disjoint folds, val never trained on
        seen |= val
        assert list(pd.read_csv(fold / "predictions_test.csv")["image"]) == test  # test untouched
        metrics = runs.read_metrics(fold)
        assert {"holdout", "val", "test"} <= set(metrics)
        assert len(train_rows) + len(val) == len(pool)
        holdout = set(pd.read_csv(fold / "predictions_holdout.csv")["image"])  # the selection slice: from train
        assert metrics["holdout"]["n"] == len(holdout) == 18 and holdout <= set(train_rows["image"])
        assert "train holdout of" in (fold / runs.RUN_LOG).read_text()
    assert seen == pool
    logs = [(out / f"fold-{i}" / runs.RUN_LOG).read_text() for i in (1, 2, 3)]
    assert all("shared by every fold: 300 images" in log for log in logs)

    summary = json.loads((out / "cv_summary.json").read_text())
    per_fold = [f["val"]["top1"] for f in summary["per_fold"]]
    assert summary["over_folds"]["val"]["top1"]["mean"] == pytest.approx(np.mean(per_fold))
    low, high = summary["over_folds"]["val"]["top1"]["ci"]
    assert low <= np.mean(per_fold) <= high
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert sorted(oof["image"]) == sorted(pool) and summary["out_of_fold"]["val"]["n"] == len(pool)
    assert summary["out_of_fold"]["val"]["top1"] == pytest.approx((oof["label"] == oof["predicted"]).mean())
    ensemble = json.loads((out / "ensemble" / runs.METRICS).read_text())["test"]
    assert summary["ensemble_test"]["n"] == ensemble["n"] == len(test) and "top1_ci" in ensemble
    mean_proba = np.mean([np.load(out / f"fold-{i}" / "probabilities_test.npy") for i in (1, 2, 3)], axis=0)
    assert ensemble["top1"] == pytest.approx(
        (mean_proba.argmax(1) == dataset.split("test")["label_index"].to_numpy()).mean())
    md = (out / "cv_summary.md").read_text()
    assert "mean of 3" in md and "pooled out-of-fold" in md and "ensemble of 3 folds" in md


def test_another_configuration_in_the_same_folder_is_refused(tmp_path, demo_root):
    from mame_transfer.core import config as cfg
    from mame_transfer.core.config import TrainConfig

    args = finetune.build_parser().parse_args(TINY + ["--out", str(tmp_path / "cv"), "--fold", "1", "--epochs", "1"])
    config = cfg.resolve(TrainConfig, args)
    cross_validate(config)
    other = cfg.resolve(TrainConfig, finetune.build_parser().parse_args(
        TINY + ["--out", str(tmp_path / "cv"), "--fold", "1", "--epochs", "1", "--lr", "1e-2"]))
    with pytest.raises(ConfigError, match="another configuration"):
        cross_validate(other)
    with pytest.raises(ConfigError, match="folds must be 0"):
        cfg.resolve(TrainConfig, finetune.build_parser().parse_args(["--demo", "--folds", "1"])).validate()


def test_a_folder_that_is_not_a_cross_validation_is_never_removed(tmp_path, demo_root, capsys):
    """--folds --overwrite replaces only an earlier cross-validation (issue 12's rule for every output folder)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("my data")
    assert finetune.main(TINY + ["--out", str(mine), "--overwrite"]) == 2
    assert "holds files this command did not write (keep.txt)" in capsys.readouterr().err
    assert (mine / "keep.txt").read_text() == "my data" and not (tmp_path / "mine.partial").exists()
