"""tuning.search (+ results): the KerasTuner search through ``python -m mame_transfer.tune``: trials, best.yaml,
resume, failing trials, distributed chief and workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from file_checks import png_size, read_json
from tiny_sets import search_yaml

from mame_transfer import tune
from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.tuning.hypermodel import SearchData

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


# --------------------------------------------------------------------------------------------- in-process search


def test_search_without_tensorboard_resume_and_best_yaml(two_class_set, tmp_path, monkeypatch):
    """KerasTuner imports tensorboard in every trial; with it unimportable every trial must still train."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    spec_file = search_yaml(tmp_path / "s.yaml", max_trials=2, objective="val_macro_f1")
    out = tmp_path / "search"
    assert tune.main(["--config", str(spec_file), "--data", str(two_class_set), "--out", str(out), "--verbose", "0"]) == 0
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
    png_size(out / "score_per_trial.png")
    png_size(out / "score_vs_lr.png")
    md = (out / "trials.md").read_text().splitlines()
    assert "| trial |" in md[0] and sum(line.startswith("| ") for line in md) == len(table) + 1
    read_json(out / "search.json", ["objective", "route", "trials", "completed", "best_score", "best_values"])
    assert (summary["objective"], summary["trials"], summary["completed"]) == ("val_macro_f1", 2, 2)
    assert summary["best_score"] == pytest.approx(table["score"].max())
    # best.yaml is a TrainConfig YAML (data included) that finetune accepts as is.
    best = cfg.from_dict(TrainConfig, cfg.load_yaml(out / "best.yaml"), source="best.yaml").validate()
    row = table[table["trial"].astype(str) == str(summary["best_trial"])].iloc[0]
    assert best.data == str(two_class_set) and best.lr == pytest.approx(row["lr"]) and best.head == str(row["head"])

    # Resume: the same folder with a larger budget runs only the missing trials.
    assert tune.main(["--config", str(spec_file), "--out", str(out), "--resume", "--max-trials", "3",
                      "--verbose", "0"]) == 0
    table2 = pd.read_csv(out / "trials.csv")
    assert len(table2) == 3 and (table2["status"] == "COMPLETED").all()
    pd.testing.assert_frame_equal(table2.iloc[:2].reset_index(drop=True)[["trial", "lr", "score"]],
                                  table[["trial", "lr", "score"]])
    assert len(list((out / "kt").glob("trial_*/checkpoint*"))) == 1


def _tensorboard_tags(folder: Path) -> dict[str, set[str]]:
    """``{event folder relative to folder: summary tags}`` of every TensorBoard event file under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for events in folder.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        found = acc.Tags()
        tags[events.parent.relative_to(folder).as_posix()] = set(found["tensors"]) | set(found["scalars"])
    return tags


def test_tensorboard_logs_with_hparams(two_class_set, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    spec_file = search_yaml(tmp_path / "s.yaml", max_trials=1)
    out = tmp_path / "search"
    assert tune.main(["--config", str(spec_file), "--data", str(two_class_set), "--out", str(out), "--verbose", "0",
                      "--tensorboard"]) == 0
    trial = pd.read_csv(out / "trials.csv")["trial"].astype(str).iloc[0]
    tags = _tensorboard_tags(out / "tensorboard")
    assert {"epoch_loss", "epoch_accuracy"} <= tags[f"{trial}/execution0/train"]
    assert {"epoch_loss", "epoch_accuracy"} <= tags[f"{trial}/execution0/validation"]
    # KerasTuner's HParams record of the trial: TensorBoard's HParams tab lists lr, l2, dropout, head
    hparams = next(t for folder, t in tags.items() if any(tag.startswith("_hparams_") for tag in t))
    assert "_hparams_/session_start_info" in hparams
    # without the package: a clear error before any trial, naming the extra to install
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert tune.main(["--config", str(spec_file), "--data", str(two_class_set), "--out", str(tmp_path / "x"),
                      "--tensorboard"]) == 2
    assert "pip install 'mame_transfer[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_failing_trials_abort_with_a_clear_message(two_class_set, tmp_path, monkeypatch, capsys):
    def boom(self, conf):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(SearchData, "pipelines", boom)
    spec_file = search_yaml(tmp_path / "s.yaml", max_trials=5)
    code = tune.main(["--config", str(spec_file), "--data", str(two_class_set), "--out", str(tmp_path / "o"),
                      "--verbose", "0"])
    assert code == 2
    assert not (tmp_path / "o" / "best.yaml").exists()
    err = capsys.readouterr().err
    assert "search aborted: Number of consecutive failures exceeded the limit of 3" in err
    assert "decoder exploded" in err


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


def test_distributed_chief_and_two_workers(two_class_set, tmp_path):
    spec_file = search_yaml(tmp_path / "s.yaml", max_trials=4)
    out = tmp_path / "dist"
    port = str(_free_port())
    cmd = [PY, "-m", "mame_transfer.tune", "--config", str(spec_file), "--data", str(two_class_set), "--out", str(out),
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


