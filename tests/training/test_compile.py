"""training.compile: class weights and the distribution strategy (MirroredStrategy over two logical CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from file_checks import read_json

from mame_transfer.core import config as cfg
from mame_transfer.training.compile import class_weights

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def test_class_weights_balanced():
    w = class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert w == pytest.approx({0: 4 / 9, 1: 4 / 3, 2: 1.0})
    assert class_weights(np.array([0, 1]), 2, "none") is None


def test_mirrored_strategy_on_two_logical_cpus(two_class_set, tmp_path):
    script = textwrap.dedent("""
        import sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from mame_transfer import finetune
        sys.exit(finetune.main(sys.argv[1:]))
    """)
    (tmp_path / "run.py").write_text(script)
    out = tmp_path / "run"
    res = subprocess.run([PY, str(tmp_path / "run.py"), "--data", str(two_class_set), "--arch", "test_tiny",
                          "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
                          "--strategy", "mirrored", "--check-images", "--out", str(out), "--verbose", "0"],
                         env=ENV, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "MirroredStrategy over 2 device(s)" in (out / "run.log").read_text()
    assert (out / "metrics.json").is_file()
    metrics = read_json(out / "metrics.json", ["val"])
    assert metrics["val"]["n"] == 8 and 0 <= metrics["val"]["top1"] <= 1  # 2 classes x 4 val images
    assert cfg.load_yaml(out / "config.yaml")["strategy"] == "mirrored"
