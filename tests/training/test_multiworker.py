"""training.multiworker end to end: two worker processes on 127.0.0.1 (CPU) against a single-process ``fit`` run,
and a killed worker followed by the same two commands, which resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from file_checks import read_json

from mame_transfer import finetune
from mame_transfer.training.runs import STATE_DIR

REPO = Path(__file__).resolve().parents[2]
TINY = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16", "--lr", "3e-3",
        "--verbose", "0"]
# One full batch per epoch, no dropout or augmentation: every route computes the same gradient, so the two-worker
# run must reproduce the single-process one up to float rounding (class weights, smoothing, L2, two phases on).
SAME = ["--epochs", "3", "--warmup-epochs", "1", "--freeze-until", "none", "--batch-size", "240", "--no-augment",
        "--dropout", "0", "--early-stopping", "0", "--class-weight", "balanced", "--label-smoothing", "0.1"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(args: list[str], tmp_path: Path, tag: str) -> list[subprocess.Popen]:
    """Two ``finetune --strategy multiworker`` processes; each gets its own TMPDIR (worker folders land there)."""
    ports = _free_ports(2)
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker",
                                                                                       "index": index}}
        tmp = tmp_path / f"tmp{index}"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(tmp),
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        log = open(tmp_path / f"{tag}-worker{index}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "mame_transfer.finetune", *TINY, "--strategy",
                                       "multiworker", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, timeout: float = 300) -> list[int]:
    try:
        return [p.wait(timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_two_workers_match_a_single_process_run(tmp_path, demo_root):
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert finetune.main(TINY + SAME + ["--out", str(single)]) == 0
    codes = _wait(_start_workers(SAME + ["--out", str(multi)], tmp_path, "run"))
    logs = [(tmp_path / f"run-worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    assert logs[0].strip().splitlines()[-1] == str(multi)  # the chief prints the run directory
    assert str(multi) not in logs[1].strip().splitlines()

    a, b = pd.read_csv(single / "history.csv"), pd.read_csv(multi / "history.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 3
    pd.testing.assert_frame_equal(a, b, rtol=1e-4, atol=1e-5)
    ma, mb = read_json(single / "metrics.json", ["val", "test"]), read_json(multi / "metrics.json", ["val", "test"])
    for split in ("val", "test"):
        for key in ("top1", "top5", "macro_f1"):
            assert mb[split][key] == pytest.approx(ma[split][key], abs=1e-6), (split, key)
    run_log = (multi / "run.log").read_text()
    assert "worker 1/2" in run_log and "batch 120 per replica x 2 replicas" in run_log
    assert "prefix cache per worker, over this worker's 120 rows" in run_log  # phase 2 trains on cached tensors
    assert not list((tmp_path / "tmp1").glob("mame_transfer-worker*")), "the non-chief's folder must be removed"
    assert not multi.with_name("multi.partial").exists() and (multi / "model.keras").is_file()


def test_killed_worker_then_the_same_commands_resume(tmp_path, demo_root):
    out = tmp_path / "run"
    args = ["--epochs", "3", "--batch-size", "16", "--steps-per-epoch", "20", "--early-stopping", "0",
            "--out", str(out)]
    state = out.with_name("run.partial") / STATE_DIR / "state.json"
    procs = _start_workers(args, tmp_path, "killed")
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
                break
            if any(p.poll() is not None for p in procs):
                pytest.fail("a worker stopped before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("no resume state after 240 s")
        procs[1].send_signal(signal.SIGKILL)
        assert _wait(procs, 120)[0] == 2  # the chief notices at its next collective step
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    chief_log = (tmp_path / "killed-worker0.log").read_text()
    assert "the cluster stopped" in chief_log and "Start every worker again with the same command" in chief_log
    assert not out.exists() and state.is_file()
    saved = json.loads(state.read_text())["epoch"]

    assert _wait(_start_workers(args, tmp_path, "again")) == [0, 0]
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]  # every epoch once
    assert f"resuming after epoch {saved}" in (out / "run.log").read_text()
    left = list((tmp_path / "tmp1").glob("mame_transfer-worker*"))
    assert not left, f"the killed worker's folder must be removed by the next run: {left}"
