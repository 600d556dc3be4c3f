"""Tests of the KerasTuner search (mame_transfer.tune) and of --strategy mirrored."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mame_transfer import tune
from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.tuning.hypermodel import SearchData
from mame_transfer.tuning.search import run_search
from mame_transfer.tuning.space import declare, load_spec, spec_from_dict, trial_config

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def _tiny_folders(root: Path, n_train: int = 6, n_val: int = 4) -> Path:
    """Two separable classes, 24 px JPEGs, class-per-folder layout."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(("dark", "light")):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (24, 24, 3)) + (160 if c else 0)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.jpg")
    return root


def _spec_yaml(path: Path, *, algorithm="random", max_trials=2, extra_base="", objective="val_accuracy") -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: tiny
        base: {{arch: test_tiny, weights: none, image_size: 32, epochs: 1, early_stopping: 1, check_images: false,
                schedule: constant, verbose: 0{extra_base}}}
        tuner: {{algorithm: {algorithm}, objective: {objective}, max_trials: {max_trials}, seed: 0}}
        space:
          lr: {{min: 1.0e-5, max: 1.0e-2, sampling: log}}
          l2: {{min: 1.0e-5, max: 1.0, sampling: log}}
          dropout: {{min: 0.0, max: 0.6, step: 0.1}}
          head: {{values: ['512,256', '16']}}
        """))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return _tiny_folders(tmp_path_factory.mktemp("tiny"))


# --------------------------------------------------------------------------------------------- spaces


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "resnet50", "efficientnetb0", "efficientnetb3", "mobilenet"])
def test_space_defaults_are_the_untuned_finetune_defaults(name):
    import keras_tuner as kt

    spec = load_spec(REPO / "tuner_configs" / f"{name}.yaml")
    assert spec.base["arch"] == name
    hp = kt.HyperParameters()
    values = declare(hp, spec)  # a fresh hp returns each default
    defaults = TrainConfig()
    for key in ("lr", "l2", "dropout", "head", "optimizer", "batch_size"):
        if key in values:
            assert values[key] == getattr(defaults, key), key
    assert {"lr", "l2", "dropout"} <= set(values)
    if "freeze_until" in values:
        from mame_transfer.models import backbones

        assert values["freeze_until"] == backbones.get(name).default_freeze
    # Every trial config is a valid TrainConfig.
    trial_config(spec, values, data="x").validate()


def test_vgg16_space_covers_the_hand_tuned_values():
    import keras_tuner as kt

    spec = load_spec(REPO / "tuner_configs" / "vgg16.yaml")
    hp = kt.HyperParameters()
    declare(hp, spec)
    lr, l2, dropout = hp._hps["lr"][0], hp._hps["l2"][0], hp._hps["dropout"][0]
    assert lr.sampling == "log" and lr.min_value <= 2.5e-6 and lr.max_value >= 1e-4
    for value in (1e-4, 5e-5, 3e-6, 2.5e-6):
        assert lr.min_value <= value <= lr.max_value
    assert l2.min_value <= 0.1 and l2.max_value >= 0.5
    assert dropout.min_value <= 0.5 <= dropout.max_value
    assert any(abs(v - 0.5) < 1e-9 for v in np.arange(dropout.min_value, dropout.max_value + 1e-9, dropout.step))


def test_spec_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {arch: vgg16, lr: 0.1}\nspace: {lr: {min: 1e-6, max: 1e-3}, l2: {min: 0, max: 1}, "
                   "dropout: {min: 0, max: 0.6}}\n")
    with pytest.raises(ConfigError, match="lr is both fixed in base and searched"):
        load_spec(bad)
    bad.write_text("space: {lr: {min: 1e-6, max: 1e-3}}\n")
    with pytest.raises(ConfigError, match="missing l2, dropout"):
        load_spec(bad)
    bad.write_text("space: {lr: {min: 1e-3, max: 1e-2, sampling: log}, l2: {min: 0, max: 1}, "
                   "dropout: {min: 0, max: 0.6}}\n")
    import keras_tuner as kt

    with pytest.raises(ConfigError, match="must contain the untuned default 0.0001"):
        declare(kt.HyperParameters(), load_spec(bad))


# --------------------------------------------------------------------------------------------- in-process search


def test_search_without_tensorboard_resume_and_best_yaml(tiny_data, tmp_path, monkeypatch):
    """KerasTuner imports tensorboard in every trial; with it unimportable every trial must still train."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    spec_file = _spec_yaml(tmp_path / "s.yaml", max_trials=2, objective="val_macro_f1")
    out = tmp_path / "search"
    assert tune.main(["--config", str(spec_file), "--data", str(tiny_data), "--out", str(out), "--verbose", "0"]) == 0
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 2 and (table["status"] == "COMPLETED").all()
    assert table["score"].notna().all() and table["val_macro_f1"].between(0, 1).all()
    assert set(table["route"]) == {"full-network"} and (table["epochs"] == 1).all()
    assert {"lr", "l2", "dropout", "head", "seconds", "worker"} <= set(table.columns)
    # Disk bounded: only the best trial keeps its checkpoint.
    checkpoints = sorted((out / "kt").glob("trial_*/checkpoint*"))
    summary = yaml.safe_load((out / "search.json").read_text())
    assert [p.parent.name for p in checkpoints] == [f"trial_{summary['best_trial']}"]
    for name in ("trials.md", "score_per_trial.png", "score_vs_lr.png"):
        assert (out / name).stat().st_size > 0
    # best.yaml is a TrainConfig YAML (data included) that finetune accepts as is.
    best = cfg.from_dict(TrainConfig, cfg.load_yaml(out / "best.yaml"), source="best.yaml").validate()
    row = table[table["trial"].astype(str) == str(summary["best_trial"])].iloc[0]
    assert best.data == str(tiny_data) and best.lr == pytest.approx(row["lr"]) and best.head == str(row["head"])

    # Resume: the same folder with a larger budget runs only the missing trials.
    assert tune.main(["--config", str(spec_file), "--out", str(out), "--resume", "--max-trials", "3",
                      "--verbose", "0"]) == 0
    table2 = pd.read_csv(out / "trials.csv")
    assert len(table2) == 3 and (table2["status"] == "COMPLETED").all()
    pd.testing.assert_frame_equal(table2.iloc[:2].reset_index(drop=True)[["trial", "lr", "score"]],
                                  table[["trial", "lr", "score"]])
    assert len(list((out / "kt").glob("trial_*/checkpoint*"))) == 1


def test_failing_trials_abort_with_a_clear_message(tiny_data, tmp_path, monkeypatch, capsys):
    def boom(self, conf):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(SearchData, "pipelines", boom)
    spec_file = _spec_yaml(tmp_path / "s.yaml", max_trials=5)
    code = tune.main(["--config", str(spec_file), "--data", str(tiny_data), "--out", str(tmp_path / "o"),
                      "--verbose", "0"])
    assert code == 2
    assert not (tmp_path / "o" / "best.yaml").exists()
    err = capsys.readouterr().err
    assert "search aborted: Number of consecutive failures exceeded the limit of 3" in err
    assert "decoder exploded" in err


def test_cached_features_hyperband(tiny_data, tmp_path):
    spec = spec_from_dict(yaml.safe_load(_spec_yaml(tmp_path / "s.yaml", algorithm="hyperband").read_text()))
    spec.base.update(freeze_until="all", epochs=2)
    spec.tuner.factor = 2
    summary = run_search(spec, tmp_path / "hb", verbose=0, data=str(tiny_data))
    table = pd.read_csv(tmp_path / "hb" / "trials.csv")
    assert summary["route"] == "cached-features" and set(table["route"]) == {"cached-features"}
    assert (table["status"] == "COMPLETED").all() and "tuner/epochs" in table.columns
    # the backbone's outputs were computed once by the prefix cache (cut after global_pool), kept for --resume
    folder = tmp_path / "hb" / "prefix_cache"
    (train,), (val,) = folder.glob("global_pool-*-train.npy"), folder.glob("global_pool-*-val.npy")
    assert np.load(train, mmap_mode="r").shape[0] == 12 and np.load(val, mmap_mode="r").shape[0] == 8
    best = cfg.load_yaml(tmp_path / "hb" / "best.yaml")
    assert best["augment"] is False and best["freeze_until"] == "all"


# --------------------------------------------------------------------------------------------- subprocesses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def test_distributed_chief_and_two_workers(tiny_data, tmp_path):
    spec_file = _spec_yaml(tmp_path / "s.yaml", max_trials=4)
    out = tmp_path / "dist"
    port = str(_free_port())
    cmd = [PY, "-m", "mame_transfer.tune", "--config", str(spec_file), "--data", str(tiny_data), "--out", str(out),
           "--verbose", "0"]
    procs = []
    logs = {}
    try:
        for tid in ("chief", "tuner1", "tuner2"):
            env = {**ENV, "KERASTUNER_TUNER_ID": tid, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": port}
            logs[tid] = open(tmp_path / f"{tid}.log", "w")
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=logs[tid], stderr=subprocess.STDOUT))
        deadline = time.time() + 300  # generous: CI machines are shared; it takes ~60-90 s alone
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.5)
        codes = [p.poll() for p in procs]
    finally:
        _stop(procs)
        for fh in logs.values():
            fh.close()
    text = {t: (tmp_path / f"{t}.log").read_text()[-3000:] for t in logs}
    assert codes == [0, 0, 0], text
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and (table["status"] == "COMPLETED").all(), table
    counts = table["worker"].value_counts().to_dict()
    assert set(counts) == {"tuner1", "tuner2"}, counts  # both workers ran trials; the chief merged them
    assert "best trial" in text["chief"]


def test_mirrored_strategy_on_two_logical_cpus(tiny_data, tmp_path):
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
    res = subprocess.run([PY, str(tmp_path / "run.py"), "--data", str(tiny_data), "--arch", "test_tiny",
                          "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
                          "--strategy", "mirrored", "--check-images", "--out", str(out), "--verbose", "0"],
                         env=ENV, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "MirroredStrategy over 2 device(s)" in (out / "run.log").read_text()
    assert (out / "metrics.json").is_file()
    assert cfg.load_yaml(out / "config.yaml")["strategy"] == "mirrored"
