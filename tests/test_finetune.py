"""End to end: the finetune CLI in-process, run directory contents, resume, atomic completion, evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mame_transfer import evaluate, finetune
from mame_transfer.core.config import TrainConfig
from mame_transfer.models import backbones
from mame_transfer.training import trainer
from mame_transfer.training.compile import class_weights
from mame_transfer.training.runs import (
    STATE_DIR,
    find_work_dir,
    load_run,
    resolved_config,
)
from mame_transfer.training.trainer import finish_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16",
        "--batch-size", "16", "--lr", "3e-3", "--verbose", "0"]
ARTEFACTS = ["model.keras", "config.yaml", "class_index.json", "history.csv", "metrics.json",
             "classification_report.txt", "confusion_matrix.png", "training_curves.png", "predictions.csv", "run.log"]


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
    # The resolved config reproduces the run: auto values are filled in.
    config = load_run(tiny_run)[1]
    assert config.freeze_until == backbones.get("test_tiny").default_freeze and config.image_size == 32


def test_evaluate_recomputes_saved_metrics(tiny_run, tmp_path):
    saved = json.loads((tiny_run / "metrics.json").read_text())["val"]
    assert evaluate.main([str(tiny_run), "--split", "val", "--out", str(tmp_path), "--verbose", "0"]) == 0
    again = json.loads((tmp_path / "metrics.json").read_text())["val"]
    assert again["top1"] == pytest.approx(saved["top1"])
    assert again["confusion_matrix"] == saved["confusion_matrix"]
    assert (tmp_path / "confusion_matrix_val.png").is_file() and (tmp_path / "predictions_val.csv").is_file()


def test_evaluate_rejects_incomplete_run(tmp_path):
    partial = tmp_path / "vgg16-1.partial"
    partial.mkdir()
    assert evaluate.main([str(partial)]) == 2


def test_yaml_config_with_flag_override_and_two_phase_schedule(tmp_path, demo_root):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("arch: test_tiny\nweights: none\nimage_size: 32\nhead: '16'\nbatch_size: 16\nepochs: 3\n"
                   "warmup_epochs: 1\nschedule: cosine\noptimizer: adamw\nclass_weight: balanced\nlr: 1.0e-2\n")
    out = tmp_path / "run"
    assert finetune.main(["--config", str(cfg), "--demo", "--lr", "2e-3", "--out", str(out), "--verbose", "0",
                          "--freeze-until", "none"]) == 0
    config = load_run(out)[1]
    assert config.lr == 2e-3 and config.optimizer == "adamw" and config.warmup_epochs == 1
    log = (out / "run.log").read_text()
    assert "phase 1: epochs 1-1, freeze until all" in log and "phase 2: epochs 2-3, freeze until none" in log
    assert len(pd.read_csv(out / "history.csv")) == 3


def test_existing_out_needs_overwrite(tiny_run, capsys):
    assert finetune.main(TINY + ["--epochs", "1", "--out", str(tiny_run)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_crash_leaves_partial_and_rerun_resumes(tmp_path, monkeypatch, demo_root):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = finish_run

    def crash(*args, **kwargs):
        calls["n"] += 1
        raise RuntimeError("disk full")

    monkeypatch.setattr(trainer, "finish_run", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        finetune.main(TINY + ["--epochs", "2", "--out", str(out)])
    assert not out.exists(), "a crashed run must not look complete"
    partial = out.with_name("run.partial")
    state = json.loads((partial / STATE_DIR / "state.json").read_text())
    assert state["epoch"] == 2
    monkeypatch.setattr(trainer, "finish_run", real)
    assert finetune.main(TINY + ["--epochs", "2", "--out", str(out)]) == 0
    assert "resuming after epoch 2" in (out / "run.log").read_text()
    assert len(pd.read_csv(out / "history.csv")) == 2  # no epoch trained twice
    assert (out / "metrics.json").is_file() and not partial.exists()


def test_kill_minus_nine_then_same_command_resumes(tmp_path, demo_root):
    """A real SIGKILL during epoch 3 of 4; the same command continues at epoch 3 with the optimizer state."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mame_transfer.finetune"] + TINY + ["--epochs", "4", "--out", str(out),
                                                                     "--early-stopping", "0", "--steps-per-epoch", "60"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    state_file = out.with_name("run.partial") / STATE_DIR / "state.json"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if state_file.is_file() and json.loads(state_file.read_text())["epoch"] >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("training finished before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("no resume state after 240 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    killed_at = json.loads(state_file.read_text())["epoch"]
    assert killed_at in (2, 3)
    assert finetune.main(TINY + ["--epochs", "4", "--out", str(out), "--early-stopping", "0",
                                 "--steps-per-epoch", "60"]) == 0
    log = (out / "run.log").read_text()
    assert f"resuming after epoch {killed_at}" in log
    assert "optimizer state could not be restored" not in log
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3]
    model = load_run(out)[0]
    assert model.output_shape == (None, 6)


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


def test_class_weights_balanced():
    w = class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert w == pytest.approx({0: 4 / 9, 1: 4 / 3, 2: 1.0})
    assert class_weights(np.array([0, 1]), 2, "none") is None


def test_offline_demo_stops_fast_naming_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "keras_models_dirs", lambda: [tmp_path / "models"])
    monkeypatch.setattr(backbones, "_host_reachable", lambda url, timeout=4.0: False)
    start = time.time()
    code = finetune.main(["--demo", "--arch", "mobilenet", "--alpha", "0.25", "--image-size", "64", "--epochs", "1",
                          "--out", str(tmp_path / "run"), "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 2 and time.time() - start < 30
    assert "mobilenet_2_5_224_tf_no_top.h5" in err
    assert "KERAS_HOME" in err and "--weights none" in err


def test_real_weights_mobilenet_trains_on_demo(keras_home, tmp_path, demo_root):
    """Real ImageNet MobileNet(0.25) features separate the demo media better than chance after 2 epochs."""
    out = tmp_path / "mn"
    assert finetune.main(["--demo", "--arch", "mobilenet", "--alpha", "0.25", "--weights", "imagenet",
                          "--image-size", "64", "--freeze-until", "all", "--head", "none", "--lr", "1e-2",
                          "--epochs", "2", "--batch-size", "32", "--out", str(out), "--verbose", "0",
                          "--no-augment"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["top1"] > 2 / 6  # chance is 1/6
