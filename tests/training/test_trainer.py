"""training.trainer, end to end through the finetune CLI: YAML + flags, two-phase schedule, resume after a crash or
``kill -9`` (atomic completion), real ImageNet weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from file_checks import read_json

from mame_transfer import finetune
from mame_transfer.training import trainer
from mame_transfer.training.runs import (
    STATE_DIR,
    load_run,
)
from mame_transfer.training.trainer import finish_run

REPO = Path(__file__).resolve().parents[2]
TINY = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16",
        "--batch-size", "16", "--lr", "3e-3", "--verbose", "0"]


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
    metrics = read_json(out / "metrics.json", ["val", "test"])
    assert metrics["val"]["n"] == 60 and metrics["test"]["n"] == 90 and 0 <= metrics["test"]["top1"] <= 1


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


def test_real_weights_mobilenet_trains_on_demo(keras_home, tmp_path, demo_root):
    """Real ImageNet MobileNet(0.25) features separate the demo media better than chance after 2 epochs."""
    out = tmp_path / "mn"
    assert finetune.main(["--demo", "--arch", "mobilenet", "--alpha", "0.25", "--weights", "imagenet",
                          "--image-size", "64", "--freeze-until", "all", "--head", "none", "--lr", "1e-2",
                          "--epochs", "2", "--batch-size", "32", "--out", str(out), "--verbose", "0",
                          "--no-augment"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["top1"] > 2 / 6  # chance is 1/6


def test_tensorboard_logs_and_missing_package(tmp_path, demo_root, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert finetune.main(TINY + ["--epochs", "2", "--tensorboard", "--out", str(out)]) == 0
    for split, expected in (("train", {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}),
                            ("validation", {"epoch_loss", "epoch_accuracy"})):
        acc = EventAccumulator(str(out / "tensorboard" / split))
        acc.Reload()
        assert expected <= set(acc.Tags()["tensors"]), acc.Tags()
        assert [e.step for e in acc.Tensors("epoch_loss")] == [0, 1]  # one point per epoch
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed: stop before training
    assert finetune.main(TINY + ["--epochs", "1", "--tensorboard", "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'mame_transfer[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()

def test_progressive_resizing_train_holdout_and_mixup(tmp_path, demo_root):
    """Epoch 1 at 16 px, then 32 px (same weights); best epoch picked on a train holdout, only at the final size;
    MixUp's soft labels train on the full network."""
    out = tmp_path / "prog"
    assert finetune.main(TINY + ["--epochs", "3", "--progressive", "16:1", "--select-on", "train-holdout",
                                 "--augmentations", "flip,mixup:0.2", "--early-stopping", "0", "--out", str(out)]) == 0
    log = (out / "run.log").read_text()
    assert "phase 1: epochs 1-1, freeze until block1, 16 px" in log and "phase 2: epochs 2-3, freeze until block1, 32 px" in log
    assert "mixes images and labels" in log and "train holdout of 24 images" in log
    best = int(log.split("restored best weights: epoch ")[1].split(",")[0])
    assert best >= 2  # epochs at 16 px are never selected
    model, config, _ = load_run(out)
    assert model.input_shape == (None, 32, 32, 3) and config.progressive == "16:1"
    metrics = read_json(out / "metrics.json", ["holdout", "val", "test"])
    assert metrics["holdout"]["n"] == 24 and metrics["val"]["n"] == 60
    assert len(pd.read_csv(out / "history.csv")) == 3
