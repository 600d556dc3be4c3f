"""Shared fixtures: seeds, the shared data folder, tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAME_SHARED", REPO.parent / "shared")).resolve()
MAME_METADATA = SHARED / "data" / "mame_metadata"
LOUVRE = SHARED / "data" / "louvre_genre"
KERAS_HOME = SHARED / "keras_home"


def require(path: Path, what: str) -> Path:
    """Skip the calling test with a clear reason when a shared resource is absent."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set MAME_SHARED to the shared/ folder)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def mame_metadata() -> Path:
    return require(MAME_METADATA / "MAMe_dataset.csv", "the real MAMe metadata").parent


@pytest.fixture
def louvre() -> Path:
    return require(LOUVRE, "the Louvre painting set")


@pytest.fixture
def keras_home(monkeypatch) -> Path:
    """Point Keras's download cache at the shared folder holding real MobileNet ImageNet weights."""
    home = require(KERAS_HOME / "models" / "mobilenet_2_5_224_tf_no_top.h5", "offline MobileNet weights").parents[1]
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture(scope="session", autouse=True)
def _demo_cache(tmp_path_factory):
    """Keep the demo set (``--demo``) inside the test session's temporary folder."""
    cache = tmp_path_factory.mktemp("mame_cache")
    old = os.environ.get("MAME_TRANSFER_CACHE")
    os.environ["MAME_TRANSFER_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("MAME_TRANSFER_CACHE", None)
    else:
        os.environ["MAME_TRANSFER_CACHE"] = old


@pytest.fixture(scope="session")
def demo_root(_demo_cache) -> Path:
    """The built-in demo set (MAMe layout), generated once per test session."""
    from mame_transfer.datasets import demo

    return demo.ensure_demo()


@pytest.fixture(scope="session")
def tiny_run(demo_root, tmp_path_factory) -> Path:
    """A finished 2-epoch run of the ``test_tiny`` backbone on the demo set (32 px), shared by read-only tests."""
    from mame_transfer import finetune

    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = finetune.main(["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16",
                          "--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--out", str(out), "--verbose", "0"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def two_class_set(tmp_path_factory) -> Path:
    """Two separable classes ('dark', 'light'), 6 train + 4 val 24 px JPEGs each, class-per-folder (read-only)."""
    from tiny_sets import two_class_folders

    return two_class_folders(tmp_path_factory.mktemp("two_class"))
