"""Careless or concurrent use of output folders (issue 12, cases 2, 3, 4 and 9): no folder a command did not write is
ever removed or overwritten, no run or search is silently continued with other data or settings, and one process at a
time writes an output folder."""

from __future__ import annotations

import contextlib
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
from PIL import Image
from tiny_sets import make_folders, search_yaml

from mame_transfer import analyze as analyze_cmd
from mame_transfer import classify, data, ensemble, evaluate, explore, features, finetune, prepare, tune
from mame_transfer import task_similarity as similarity_cmd
from mame_transfer.core.fileio import atomic_path
from mame_transfer.datasets import demo
from mame_transfer.store.store import load_store, write_store
from mame_transfer.training import trainer
from mame_transfer.training.runs import STATE_DIR

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _env() -> dict:
    """The environment of a child process (read when called: the session moves the demo cache)."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}

TINY = ["--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16", "--batch-size", "16",
        "--lr", "3e-3", "--verbose", "0"]


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small store with train and val, embeddings clustered by class, and a 1000-d imagenet_probs set."""
    rng = np.random.default_rng(0)
    splits, probs = {}, {}
    for split, n in (("train", 30), ("val", 12)):
        labels = np.arange(n) % 3
        emb = (4 * np.eye(3, 8)[labels] + rng.normal(size=(n, 8))).astype(np.float32)
        meta = pd.DataFrame({"image": [f"{split}{i}.jpg" for i in range(n)], "path": "", "label":
                             [("a", "b", "c")[k] for k in labels], "label_index": labels, "subset": split,
                             "museum": "Met", "width": 50, "height": 40, "product_size": 2000, "aspect_ratio": 1.25})
        splits[split] = (emb, meta)
        p = rng.dirichlet(np.ones(1000), size=n).astype(np.float32)
        probs[split] = {"imagenet_probs": p}
    path = tmp_path_factory.mktemp("hostile_store") / "store"
    write_store(path, manifest={"arch": "synthetic", "layer": "x", "classes": ["a", "b", "c"]}, splits=splits,
                extra_sets=probs)
    return path


@pytest.fixture(scope="module")
def small_mame(tmp_path_factory):
    return demo.ensure_demo(tmp_path_factory.mktemp("hostile_prep"), sizes=(1, 1, 1))


def _commands(store, tiny_run, two_class_set, small_mame, tmp_path):
    """Every command that writes a folder, as (module, argv with OUT standing for the folder)."""
    spec = search_yaml(tmp_path / "s.yaml", max_trials=1)
    return {
        "finetune": (finetune, ["--demo", *TINY, "--epochs", "1", "--out", "OUT"]),
        "features": (features, ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32",
                                "--verbose", "0", "--out", "OUT"]),
        "features projector": (features, ["projector", str(store), "--out", "OUT"]),
        "explore": (explore, [str(store), "--no-thumbs", "--k", "3", "--out", "OUT"]),
        "classify": (classify, [str(store), "--with", "", "--classifiers", "logreg", "--fast", "--out", "OUT"]),
        "task_similarity": (similarity_cmd, [str(store), "--out", "OUT"]),
        "tune": (tune, ["--config", str(spec), "--data", str(two_class_set), "--verbose", "0", "--out", "OUT"]),
        "prepare": (prepare, ["--data", str(small_mame), "--size", "16", "--workers", "1", "--quiet", "--out", "OUT"]),
        "data import": (data, ["import", str(two_class_set), "--out", "OUT"]),
        "analyze project": (analyze_cmd, ["project", str(store), "--method", "pca", "--out", "OUT"]),
        "evaluate": (evaluate, [str(tiny_run), "--split", "val", "--verbose", "0", "--out", "OUT"]),
        "ensemble": (ensemble, [str(tiny_run), str(tiny_run), "--out", "OUT"]),
    }


COMMANDS = ["finetune", "features", "features projector", "explore", "classify", "task_similarity", "tune",
            "prepare", "data import", "analyze project", "evaluate", "ensemble"]


def _run(module, argv, out: Path) -> int:
    return module.main([str(out) if a == "OUT" else a for a in argv])


# --------------------------------------------------------------------------------------------- case 2


def test_explore_and_projector_out_on_a_store_or_a_data_folder_change_nothing(store, tmp_path, capsys):
    """Issue 12, case 2: ``explore --out X`` / ``features projector --out X`` deleted X (a store, a data set)."""
    images = make_folders(tmp_path / "data")
    before_store, before_images = _listing(store), _listing(images)
    for argv in ([str(store), "--no-thumbs", "--k", "3", "--out", str(store)],
                 [str(store), "--no-thumbs", "--k", "3", "--out", str(images), "--overwrite"]):
        assert explore.main(argv) == 2
    for out in (store, images):
        assert features.main(["projector", str(store), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "not an explorer site" in err and "not a set of projector files" in err and "Traceback" not in err
    assert _listing(store) == before_store and _listing(images) == before_images
    load_store(store)
    # Its own output is replaced only with --overwrite.
    site = tmp_path / "site"
    assert explore.main([str(store), "--no-thumbs", "--k", "3", "--out", str(site)]) == 0
    assert explore.main([str(store), "--no-thumbs", "--k", "3", "--out", str(site)]) == 2
    assert "already holds an explorer site; pass --overwrite" in capsys.readouterr().err
    assert explore.main([str(store), "--no-thumbs", "--k", "4", "--out", str(site), "--overwrite"]) == 0
    assert json.loads((site / "build.json").read_text())["k"] == 4


@pytest.mark.parametrize("name", COMMANDS)
def test_no_command_writes_into_a_folder_it_does_not_own(name, store, tiny_run, two_class_set, small_mame, tmp_path,
                                                          capsys):
    """Every folder-writing command refuses a folder holding someone else's files, even with --overwrite."""
    module, argv = _commands(store, tiny_run, two_class_set, small_mame, tmp_path)[name]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "metrics.json").write_text('{"mine": true}')  # a name several commands write
    before = _listing(mine)
    assert _run(module, argv + ["--overwrite"] if name not in ("evaluate", "analyze project") else argv, mine) == 2
    err = capsys.readouterr().err
    assert "holds files this command did not write" in err and "Traceback" not in err, err
    assert _listing(mine) == before


def test_atomic_path_never_removes_a_folder_it_was_not_told_it_owns(tmp_path):
    from mame_transfer.core.errors import OutputError
    from mame_transfer.core.fileio import OWNER_FILE

    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "keep.txt").write_text("k")
    with pytest.raises(OutputError, match="was not checked to be this command's own"):
        with atomic_path(folder) as tmp:
            tmp.mkdir()
    assert (folder / "keep.txt").read_text() == "k"
    with atomic_path(folder, kind="test", replace=True) as tmp:  # a caller that checked replaces it
        tmp.mkdir()
        (tmp / "new.txt").write_text("n")
    assert sorted(p.name for p in folder.iterdir()) == [OWNER_FILE, "new.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # a folder made ready by hand holds nothing to lose
    with atomic_path(empty, kind="test") as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
    assert (empty / "a.txt").is_file()


# --------------------------------------------------------------------------------------------- case 4: locks

HOLD = ("import sys, time\ntry:\n    from mame_transfer.core.fileio import locked\nexcept ImportError:  # before locks\n"
        "    import contextlib\n    locked = lambda *a: contextlib.nullcontext()\n"
        "with locked(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n    time.sleep(300)\n")


@contextlib.contextmanager
def held_by_another_process(path: Path, command: str = "finetune"):
    proc = subprocess.Popen([PY, "-c", HOLD, str(path), command], stdout=subprocess.PIPE, env=_env(), cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == b"held"
        yield proc
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("name", COMMANDS)
def test_a_second_writer_stops_at_once_naming_the_holder(name, store, tiny_run, two_class_set, small_mame, tmp_path,
                                                         capsys):
    module, argv = _commands(store, tiny_run, two_class_set, small_mame, tmp_path)[name]
    out = tmp_path / "out"
    with held_by_another_process(out, "holder-cmd") as holder:
        t0 = time.time()
        assert _run(module, argv, out) == 2
        assert time.time() - t0 < 60
    err = capsys.readouterr().err
    assert f"being written by another process (pid {holder.pid} on" in err and "holder-cmd" in err, err
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".mame_transfer.json"]


def test_stale_lock_of_a_killed_process_is_taken_over_with_a_message(tmp_path, caplog):
    from mame_transfer.core.fileio import lock_file, locked

    out = tmp_path / "out"
    with held_by_another_process(out) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        assert lock_file(out).is_file()  # kill -9 left it behind
        with caplog.at_level("WARNING", logger="mame_transfer"), locked(out, "test"):
            assert json.loads(lock_file(out).read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert not lock_file(out).exists()


def test_two_finetunes_on_one_out(tmp_path, demo_root, capsys, caplog):
    """Issue 12, case 4: the second ``finetune`` on a busy ``--out`` stops at once; after ``kill -9`` of the first,
    the same command takes the stale lock over and resumes."""
    out = tmp_path / "run"
    argv = ["--demo", *TINY, "--steps-per-epoch", "60", "--early-stopping", "0", "--out", str(out)]
    first = subprocess.Popen([PY, "-m", "mame_transfer.finetune", *argv, "--epochs", "30"], cwd=REPO, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out.with_name("run.partial") / STATE_DIR / "state.json"
    try:
        deadline = time.time() + 240
        while not state.is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert state.is_file(), "the first finetune saved no epoch"
        t0 = time.time()
        assert finetune.main(argv + ["--epochs", "30"]) == 2
        assert time.time() - t0 < 30
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "finetune" in err and "Traceback" not in err
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    done = json.loads(state.read_text())["epoch"]
    with caplog.at_level("WARNING", logger="mame_transfer"):
        assert finetune.main(argv + ["--epochs", str(done + 1)]) == 0
    assert f"taking over the lock left by pid {first.pid}" in caplog.text
    log = (out / "run.log").read_text()
    assert f"resuming after epoch {done}" in log
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == list(range(done + 1))  # no interleaved or doubled rows


# --------------------------------------------------------------------------------------------- case 3


def _interrupted_run(out: Path, data_path: Path, monkeypatch, extra=()):
    """A run on ``data_path`` interrupted after its 2 epochs, before it was written (left ``.partial``)."""
    real = trainer.finish_run
    monkeypatch.setattr(trainer, "finish_run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert finetune.main(["--data", str(data_path), *TINY, "--epochs", "2", "--out", str(out), *extra]) == 130
    monkeypatch.setattr(trainer, "finish_run", real)
    return out.with_name(out.name + ".partial")


def test_finetune_does_not_resume_a_run_started_on_other_data_or_settings(two_class_set, tmp_path, monkeypatch,
                                                                          capsys):
    """Issue 12, case 3: ``finetune --out R`` resumed whatever was in ``R.partial`` (other data, lr, classes)."""
    data_b = make_folders(tmp_path / "pets")
    out = tmp_path / "run"
    partial = _interrupted_run(out, two_class_set, monkeypatch)
    classes_a = json.loads((partial / "class_index.json").read_text())
    capsys.readouterr()
    assert finetune.main(["--data", str(data_b), *TINY, "--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another configuration or other data" in err and "data classes ['dark', 'light'] -> ['cats', 'dogs']" in err
    assert "--overwrite" in err and "another --out" in err and "Traceback" not in err
    assert json.loads((partial / "class_index.json").read_text()) == classes_a  # nothing of B was written
    assert finetune.main(["--data", str(two_class_set), *TINY, "--epochs", "3", "--lr", "1e-2", "--out",
                          str(out)]) == 2
    assert "lr: 0.003 -> 0.01" in capsys.readouterr().err
    # --epochs and verbosity do not change the run: it resumes
    assert finetune.main(["--data", str(two_class_set), *TINY[:-1], "2", "--epochs", "3", "--out", str(out)]) == 0
    assert "resuming after epoch 2" in (out / "run.log").read_text()
    assert len(pd.read_csv(out / "history.csv")) == 3


def test_finetune_refuses_changed_image_files_and_overwrite_starts_over(two_class_set, tmp_path, monkeypatch,
                                                                        capsys):
    import shutil

    data_a = tmp_path / "a"
    shutil.copytree(two_class_set, data_a)
    out = tmp_path / "run"
    _interrupted_run(out, data_a, monkeypatch)
    victim = next((data_a / "train" / "dark").glob("*.jpg"))
    Image.new("RGB", (24, 24), (200, 10, 10)).save(victim)
    os.utime(victim, (time.time() + 5, time.time() + 5))
    capsys.readouterr()
    assert finetune.main(["--data", str(data_a), *TINY, "--epochs", "2", "--out", str(out)]) == 2
    assert "data files (an image was added, removed, relabelled or modified)" in capsys.readouterr().err
    data_b = make_folders(tmp_path / "pets")
    assert finetune.main(["--data", str(data_b), *TINY, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "class_index.json").read_text()) == {"cats": 0, "dogs": 1}
    assert len(pd.read_csv(out / "history.csv")) == 1
    assert "resuming" not in (out / "run.log").read_text().split("discarding")[-1]


def test_tune_refuses_to_merge_trials_of_another_search(two_class_set, tmp_path, capsys):
    spec = search_yaml(tmp_path / "s.yaml", max_trials=1)
    out = tmp_path / "search"
    assert tune.main(["--config", str(spec), "--data", str(two_class_set), "--out", str(out), "--verbose", "0"]) == 0
    capsys.readouterr()
    other = make_folders(tmp_path / "pets")
    assert tune.main(["--config", str(spec), "--data", str(other), "--out", str(out), "--resume",
                      "--max-trials", "2", "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert "another space, other settings or other data" in err and "data classes" in err and "--overwrite" in err
    wider = search_yaml(tmp_path / "wider.yaml", max_trials=1)
    wider.write_text(wider.read_text().replace("max: 1.0e-2", "max: 1.0e-1"))
    assert tune.main(["--config", str(wider), "--out", str(out), "--resume", "--verbose", "0"]) == 2
    assert "space.lr.max: 0.01 -> 0.1" in capsys.readouterr().err
    assert tune.main(["--config", str(spec), "--data", str(two_class_set), "--out", str(out), "--verbose", "0"]) == 2
    assert "pass --resume to continue it, --overwrite to start over" in capsys.readouterr().err
    assert len(pd.read_csv(out / "trials.csv")) == 1  # nothing was merged


def test_prepare_with_another_size_on_the_same_out_is_refused_or_redone(small_mame, tmp_path, capsys):
    out = tmp_path / "p"
    base = ["--data", str(small_mame), "--workers", "1", "--quiet", "--out", str(out)]
    assert prepare.main(base + ["--size", "32"]) == 0
    for extra in (["--size", "48"], ["--size", "32", "--keep-aspect"]):
        assert prepare.main(base + extra) == 2
    err = capsys.readouterr().err
    assert "size 32 (now 48)" in err and "keep_aspect False (now True)" in err and "--overwrite" in err
    assert prepare.main(base + ["--size", "48", "--overwrite"]) == 0
    sizes = {Image.open(p).size for p in (out / "data").iterdir()}
    assert sizes == {(48, 48)}
    assert prepare.main(base + ["--size", "48"]) == 0  # the same settings: a no-op resume
    assert '"skipped": 18' in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- case 9


def _tied_set(root: Path) -> Path:
    """Two classes whose val images are all one grey picture: every model scores exactly 0.5, so trials tie."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c, name in enumerate(("dark", "light")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (24, 24, 3)) + 160 * c if split == "train" else np.full((24, 24, 3), 128)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg")
    return root


def test_tune_resume_with_tied_scores_keeps_the_earlier_best_and_its_weights(tmp_path, monkeypatch):
    """Issue 12, case 9: on ``--resume`` the trial files are listed in file-system order; with tied scores the best
    switched to a trial whose weights had been pruned, and search.json pointed at a missing file."""
    from keras_tuner.src.backend import io as kt_io

    spec = search_yaml(tmp_path / "s.yaml", max_trials=2)
    out = tmp_path / "search"
    data_dir = _tied_set(tmp_path / "tied")
    assert tune.main(["--config", str(spec), "--data", str(data_dir), "--out", str(out), "--verbose", "0"]) == 0
    first = json.loads((out / "search.json").read_text())
    assert first["best_trial"] == "0" and Path(first["best_weights"]).is_file()
    real_glob = kt_io.glob
    monkeypatch.setattr(kt_io, "glob", lambda pattern: sorted(real_glob(pattern), reverse=True))  # another FS order
    assert tune.main(["--config", str(spec), "--out", str(out), "--resume", "--max-trials", "3", "--verbose",
                      "0"]) == 0
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 3 and (table["score"] == 0.5).all()  # a three-way tie
    summary = json.loads((out / "search.json").read_text())
    assert summary["best_trial"] == "0" and summary["best_weights"] == first["best_weights"]
    assert Path(summary["best_weights"]).is_file()
    assert "best trial 0 " in (out / "best.yaml").read_text()


# --------------------------------------------------------------------------------------------- prepare and kill -9


def test_prepare_leaves_no_worker_processes_after_kill_minus_nine(demo_root, tmp_path):
    import psutil

    cmd = [PY, "-m", "mame_transfer.prepare", "--data", str(demo_root), "--size", "300", "--no-draft", "--workers",
           "2", "--quiet", "--out", str(tmp_path / "out")]
    parent = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and parent.poll() is None and len(workers) < 2:
            workers = psutil.Process(parent.pid).children(recursive=True)
            time.sleep(0.05)
        assert len(workers) >= 2, "the pool never started"
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"orphan workers still running: {[p.pid for p in alive]}"
    finally:  # never leave a process behind, whatever failed
        if parent.poll() is None:
            parent.kill()
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                worker.kill()
