"""The README as a user reads it: the Quick start runs as written, the user part holds no development paths."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def quick_start_commands() -> list[list[str]]:
    """The commands of the Quick start's code block, continuation lines joined, split like a shell would."""
    block = re.search(r"```bash\n(.*?)```", _section("Quick start"), re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_quick_start_is_a_few_installed_commands():
    commands = quick_start_commands()
    assert 3 <= len(commands) <= 4, commands
    scripts = re.findall(r"^\s+(mame-[\w-]+) = ", (REPO / "setup.cfg").read_text(), re.M)
    for argv in commands:
        assert argv[0].startswith("mame-"), argv
        if argv[0] not in scripts:  # announced by the README, provided by a command still to come
            assert argv[0] == "mame-predict", f"{argv[0]} is not a console script of setup.cfg"


def test_user_part_has_no_development_paths():
    user_part = README[:README.index("\n## Development")]
    for path in ("../shared", "/work/", "/tmp/", "shared/keras_home"):
        assert path not in user_part, path
    assert "python -m mame_transfer" not in _section("Quick start")  # the installed commands, not module paths


def test_quick_start_runs_as_written(tmp_path, monkeypatch, keras_home, capsys):
    """Each Quick start command, run in-process as written, on a tiny flat folder (one sub-folder per class)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "light")):  # two separable classes, split by finetune (0.15 / 0.15)
        folder = tmp_path / "my_collection" / name
        folder.mkdir(parents=True)
        for i in range(20):
            img = rng.integers(0, 60, (24, 24, 3)) + (160 if c else 0)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.jpg")
    new_images = tmp_path / "new_images"
    new_images.mkdir()
    for i, image in enumerate(sorted((tmp_path / "my_collection").rglob("1*.jpg"))[:3]):
        shutil.copy(image, new_images / f"scan_{i}.jpg")  # names that carry no label
    monkeypatch.chdir(tmp_path)
    for argv in quick_start_commands():
        command = importlib.import_module(f"mame_transfer.{argv[0][len('mame-'):].replace('-', '_')}")
        monkeypatch.setattr(sys, "argv", argv)
        assert command.main(argv[1:]) == 0, (argv, capsys.readouterr().err[-3000:])
    run = tmp_path / "runs" / "first"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["n"] == 6 and metrics["val"]["top1"] >= 0.75  # two separable classes
    assert (run / "report.html").is_file() and (run / "training_curves.png").is_file()
    assert len(pd.read_csv(run / "splits.csv")) == 40  # the split finetune made, recorded
    config = (run / "config.yaml").read_text()
    assert "arch: mobilenet" in config and "alpha: 0.75" in config and "image_size: 160" in config
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert len(labels) == 3 and set(labels["prediction"]) <= {"dark", "light"}
