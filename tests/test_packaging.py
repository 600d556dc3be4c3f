"""What ``pip install`` gets: declared dependencies (one TensorFlow, nothing unused), extras, licence, citation."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path

import yaml

from mame_transfer.core import __version__

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mame_transfer"
# Distributions that install a top-level ``tensorflow`` package: at most one of them in any install.
TENSORFLOW_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
                            "tf-nightly", "tf-nightly-cpu", "intel-tensorflow"}
# import name -> distribution, where they differ
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow", "keras_tuner": "keras-tuner",
                   "umap": "umap-learn", "skops": "skops", "faiss": "faiss-cpu"}
# imported but installed by a declared dependency (grpc by keras-tuner) or optional with a clear error
INDIRECT = {"grpc": "keras-tuner", "tensorboard": "the [tensorboard] extra"}


def _setup() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    return parser


def _names(block: str) -> list[str]:
    """Distribution names of a requirements block (comments, versions, extras and markers dropped)."""
    names = []
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.append(re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-"))
    return names


def _requirements() -> tuple[list[str], dict[str, list[str]]]:
    setup = _setup()
    extras = {k: _names(v) for k, v in setup["options.extras_require"].items()}
    return _names(setup["options"]["install_requires"]), extras


def test_exactly_one_tensorflow_whatever_the_extras():
    base, extras = _requirements()
    assert [n for n in base if n in TENSORFLOW_DISTRIBUTIONS] == ["tensorflow"]
    for name, reqs in extras.items():
        assert not set(reqs) & (TENSORFLOW_DISTRIBUTIONS - {"tensorflow"}), name
    gpu = _setup()["options.extras_require"]["gpu"]
    assert "tensorflow[and-cuda]" in gpu  # the same distribution, with its CUDA libraries


def test_every_import_is_declared_and_every_dependency_used():
    base, extras = _requirements()
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "mame_transfer"}
    needed = {DISTRIBUTION_OF.get(m, m).lower() for m in third_party if m not in INDIRECT}
    assert needed <= set(base), f"imported but not declared: {sorted(needed - set(base))}"
    assert set(base) <= needed, f"declared but never imported: {sorted(set(base) - needed)}"
    assert "pyarrow" not in base
    assert "tensorboard" in extras["tensorboard"] and "keras-tuner" in base


def test_licence_and_citation():
    assert _setup()["metadata"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and str(cff["version"]) == __version__
    titles = " ".join(r["title"].lower() for r in cff["references"])
    for paper in ("mame image classification dataset", "cnn features off-the-shelf", "mid-level image representations",
                  "illustration classification", "transfer learning of convolutional neural networks for artistic",
                  "similarity of neural network representations", "grad-cam", "feature visualization", "umap"):
        assert paper in titles, paper


def test_make_demo_installs_without_test_extras():
    makefile = (REPO / "Makefile").read_text()
    installs = dict(re.findall(r"^\$\(VENV\)/(\.installed[\w-]*):.*\n\t.*pip install --quiet (.+)$", makefile, re.M))
    assert installs[".installed"] == "-e ." and "test" in installs[".installed-test"]
    assert re.search(r"^demo: setup$", makefile, re.M) and re.search(r"^test: setup-test$", makefile, re.M)
